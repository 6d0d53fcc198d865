"""Build of netspace_fast's native extension (`netspace_fast._C`).

The C++ CPU kernels are always built. The CUDA kernels are built when a CUDA toolkit is found,
unless NETSPACE_SKIP_CUDA_BUILD=1. Knobs (environment variables):
  NETSPACE_SKIP_CUDA_BUILD=1   build the CPU kernels only
  NETSPACE_FORCE_CUDA_BUILD=1  fail if the CUDA kernels cannot be built (default: build when found)
  NETSPACE_CUDA_ARCHS          e.g. "9.0" or "8.0;9.0" (default 9.0 plus PTX of the newest)
  CUDA_HOME                    the toolkit root; found from the real nvcc otherwise
  MAX_JOBS                     parallel compile jobs (ninja)
"""

import glob
import os
import re
import shutil
import sys

from setuptools import setup


def _real_nvcc_root():
    """The toolkit root behind `nvcc` on PATH, following wrapper scripts (`exec /x/bin/nvcc "$@"`)."""
    nvcc = shutil.which("nvcc")
    seen = set()
    while nvcc and nvcc not in seen:
        seen.add(nvcc)
        nvcc = os.path.realpath(nvcc)
        with open(nvcc, "rb") as f:
            head = f.read(4096)
        if not head.startswith(b"#!"):  # a binary: the real compiler
            return os.path.dirname(os.path.dirname(nvcc))
        m = re.search(rb"(/[^\s\"']+/bin/nvcc)\b", head)
        nvcc = m.group(1).decode() if m else None
    for root in ("/usr/local/cuda",):
        if os.path.isfile(os.path.join(root, "bin", "nvcc")):
            return root
    return None


def _cuda_home():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
        return home
    return _real_nvcc_root()


skip_cuda = os.environ.get("NETSPACE_SKIP_CUDA_BUILD", "0") == "1"
force_cuda = os.environ.get("NETSPACE_FORCE_CUDA_BUILD", "0") == "1"
cuda_home = None if skip_cuda else _cuda_home()
if cuda_home:
    # torch.utils.cpp_extension reads CUDA_HOME at import: set it first
    os.environ["CUDA_HOME"] = cuda_home
if force_cuda and not cuda_home:
    sys.exit("NETSPACE_FORCE_CUDA_BUILD=1 but no CUDA toolkit was found (set CUDA_HOME to the toolkit root)")

archs = os.environ.get("NETSPACE_CUDA_ARCHS", "9.0")
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", ";".join(a.strip() for a in archs.split(";") if a.strip()) + "+PTX")

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

here = os.path.dirname(os.path.abspath(__file__))
cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
cu_sources = sorted(glob.glob(os.path.join("csrc", "*.cu")))
# OpenMP pragmas of at::parallel_for; the runtime is torch's own libgomp (not linked again here).
# -fno-trapping-math lets the compiler vectorize the epilogues' selects (we never trap on FP).
cxx_flags = ["-O3", "-std=c++20", "-fopenmp", "-fno-trapping-math"]

if cuda_home:
    ext = CUDAExtension(
        "netspace_fast._C",
        cpp_sources + cu_sources,
        extra_compile_args={"cxx": cxx_flags + ["-DNETSPACE_WITH_CUDA"],
                            "nvcc": ["-O3", "-std=c++20", "-DNETSPACE_WITH_CUDA", "--expt-relaxed-constexpr"]},
    )
else:
    ext = CppExtension("netspace_fast._C", cpp_sources, extra_compile_args={"cxx": cxx_flags})

setup(
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
)
