"""Runtime settings of netspace_fast, all read here (environment variables, read at each use so a
test or a script can change them while running):

=========================  =======================  ===============================================
variable                   values (default first)   effect
=========================  =======================  ===============================================
``NETSPACE_BACKEND``       auto, cpp, cuda,         preferred backend of every op; an op without a
                           triton, torch            kernel for it (or for the tensors' device) falls
                                                    back to its automatic choice. The ``backend=``
                                                    argument of an op is a demand instead: it fails
                                                    clearly when that kernel cannot run.
``NETSPACE_CONV_LAYOUT``   auto, grouped, split,    the batched engine's layout of convolutions
                           rule, tune               (netspace_fast.engine.layout): auto = timed per
                                                    layer shape on this device (CPU or GPU), both
                                                    layouts interleaved, and the verdict cached on
                                                    disk: a clear winner on a quiet machine is kept;
                                                    a close call, noisy rounds or a timing under
                                                    load take the static rule (the last two are
                                                    timed again by later runs); ``netspace layout
                                                    show|clear|retune``; tune = the same (kept as a
                                                    name); rule = the static threshold rule (no
                                                    timing); grouped / split force one layout.
``NETSPACE_CACHE_DIR``     (unset), a folder        where measured choices are cached (the layout
                                                    tuner's files); unset: ``$XDG_CACHE_HOME/
                                                    netspace_fast`` or ``~/.cache/netspace_fast``.
``NETSPACE_TF32``          (unset), 1, 0            TF32 products in the Triton kernels on CUDA
                                                    (0: IEEE float32). Unset: torch's float32
                                                    matmul setting (``torch.backends.cuda.matmul.
                                                    allow_tf32``; torch's default: full float32,
                                                    which SIREN/SDF work needs: sin(30x)
                                                    multiplies rounding errors by 30).
``NETSPACE_TUNE_MALLOC``   1, 0                     whether the training commands of the ``netspace``
                                                    CLI call :func:`tune_malloc` (below).
``NETSPACE_GPU_REHEARSAL`` 0, 1                     1: CPU tensors take the GPU program (the CUDA
                                                    code path: fused epilogues, the linear layers'
                                                    Triton kernels, CUDA-graph bookkeeping), its
                                                    Triton kernels interpreted: needs
                                                    ``TRITON_INTERPRET=1`` (netspace_fast.engine.gpu).
``NETSPACE_CUDA_GRAPHS``   1, 0                     the GPU program replays fixed-shape calls from
                                                    CUDA graphs (netspace_fast.engine.graphs);
                                                    0: every call runs eagerly.
=========================  =======================  ===============================================

Malloc tuning:
Opt-in tuning of glibc malloc for CPU training with large activations.

glibc serves every allocation above 32 MiB with a fresh mmap and returns it to the kernel when
freed, so a training step whose activations are tens of MB each pays first-touch page faults for
all of them on every step. Measured on the 2-core development machines (forward + backward, shared
input, batched_forward on CPU): B=8 ResNet8 0.73-1.29 s -> 0.51 s, B=64 LeNetLike 114-144 ms ->
85 ms. ``tune_malloc()`` makes malloc keep such memory for reuse (no mmap, no trimming), the same
effect as starting Python with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>`` or preloading
jemalloc/tcmalloc, as CPU PyTorch training guides recommend. It changes the whole process (freed
memory stays with the process), so it is never applied implicitly: call it in training scripts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

# torch is imported inside the functions that need it: the command line reads its settings (--device)
# while parsing arguments, before any library module is loaded

BACKENDS = ("auto", "cpp", "cuda", "triton", "torch")
CONV_LAYOUTS = ("auto", "grouped", "split", "nchw", "rule", "tune")


def _choice(name: str, allowed: tuple[str, ...]) -> str:
    value = os.environ.get(name, allowed[0])
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")
    return value


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value not in ("0", "1"):
        raise ValueError(f"{name}: expected 0 or 1, got {value!r}")
    return value == "1"


def backend() -> str:
    """NETSPACE_BACKEND: the preferred backend ('auto' unless set)."""
    return _choice("NETSPACE_BACKEND", BACKENDS)


def conv_layout() -> str:
    """NETSPACE_CONV_LAYOUT: 'auto' (unless set), 'grouped', 'split', 'nchw' (grouped, in NCHW), 'rule' or
    'tune'."""
    return _choice("NETSPACE_CONV_LAYOUT", CONV_LAYOUTS)


def cache_dir() -> Path:
    """The folder of netspace_fast's caches: ``NETSPACE_CACHE_DIR`` when set (and not empty), else
    ``$XDG_CACHE_HOME/netspace_fast`` (an absolute XDG_CACHE_HOME only, as the XDG specification
    says), else ``~/.cache/netspace_fast``. Not created here."""
    value = os.environ.get("NETSPACE_CACHE_DIR")
    if value:
        return Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "netspace_fast"


def tf32() -> bool:
    """TF32 products in the Triton kernels on CUDA: ``NETSPACE_TF32`` (1 or 0) when set, else what torch
    uses for float32 matmuls (``torch.backends.cuda.matmul.allow_tf32 = True`` or
    ``torch.set_float32_matmul_precision("high")`` turn it on; torch's default is full float32)."""
    # the legacy getter reads every API's setting (torch.get_float32_matmul_precision raises once the
    # legacy and the new API were both used)
    import torch

    return _flag("NETSPACE_TF32", bool(torch.backends.cuda.matmul.allow_tf32))


def gpu_rehearsal() -> bool:
    """NETSPACE_GPU_REHEARSAL: CPU tensors take the GPU program (default off). Its Triton kernels run
    on CPU tensors only under the interpreter, so the rehearsal without ``TRITON_INTERPRET=1`` is a
    ValueError naming both variables (raised where the engine first needs it)."""
    on = _flag("NETSPACE_GPU_REHEARSAL", False)
    if on and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError("NETSPACE_GPU_REHEARSAL=1: the GPU program runs its Triton kernels on CPU tensors only "
                         "under the interpreter; expected TRITON_INTERPRET=1 set before triton is imported, got "
                         f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '')!r}")
    return on


def cuda_graphs() -> bool:
    """NETSPACE_CUDA_GRAPHS: whether the GPU program replays fixed-shape calls from CUDA graphs
    (default on)."""
    return _flag("NETSPACE_CUDA_GRAPHS", True)


CUDNN_BENCHMARK = ("1", "0", "keep")


def cudnn_benchmark() -> bool | None:
    """The one rule for cuDNN's autotuner (``torch.backends.cudnn.benchmark``) in the GPU program, the
    CLI and the GPU benchmarks alike: on, unless ``NETSPACE_CUDNN_BENCHMARK=0`` (off) or ``keep``
    (torch's flag as the caller set it: None here), and off while torch's deterministic algorithms
    are on (``torch.use_deterministic_algorithms(True)``: the autotuner may pick another algorithm
    in every process). On by default: every call of the GPU program has a fixed shape per signature
    (CUDA graphs capture after eager warm-ups, the layout tuner times after an untimed warm-up), so
    the autotuning happens once per shape, never inside a timing or a capture."""
    value = os.environ.get("NETSPACE_CUDNN_BENCHMARK") or "1"
    if value not in CUDNN_BENCHMARK:
        raise ValueError(f"NETSPACE_CUDNN_BENCHMARK: expected one of {CUDNN_BENCHMARK}, got {value!r}")
    if value == "keep":
        return None
    import torch

    return value == "1" and not torch.are_deterministic_algorithms_enabled()


def apply_cudnn_benchmark() -> bool:
    """Sets ``torch.backends.cudnn.benchmark`` by :func:`cudnn_benchmark` (nothing under ``keep``) and
    returns the flag now in force. Called where CUDA work starts: the GPU program's every call
    (:meth:`netspace_fast.engine.graphs.GraphCache.call`), the CLI's ``--device cuda``, the GPU
    benchmarks (for ours and the peers alike)."""
    import torch

    want = cudnn_benchmark()
    if want is not None and torch.backends.cudnn.benchmark != want:
        torch.backends.cudnn.benchmark = want
    return bool(torch.backends.cudnn.benchmark)


def tune_malloc_in_cli() -> bool:
    """NETSPACE_TUNE_MALLOC: the CLI's training commands apply :func:`tune_malloc` (default on)."""
    return _flag("NETSPACE_TUNE_MALLOC", True)


def check_device(device) -> str:
    """``device`` as a string if this machine can use it, else a ValueError of one line naming it: the
    one check of every command and training entry point (a CUDA device asked for where there is none,
    or an index past the last GPU, is refused before any work, not met as torch's "Found no NVIDIA
    driver" halfway through)."""
    name = str(device)
    if name == "cpu":
        return name
    if not (name == "cuda" or name.startswith("cuda:")):
        raise ValueError(f"device: expected 'cpu' or 'cuda' (or 'cuda:N'), got {name!r}")
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} was asked for, but this machine has no usable CUDA device "
                         f"(use --device cpu)")
    index = name.partition(":")[2]
    if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
        raise ValueError(f"device: {name!r} was asked for, but this machine has CUDA devices 0 to "
                         f"{torch.cuda.device_count() - 1}")
    return name


_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def tune_malloc(trim_threshold: int = 1 << 34) -> bool:
    """Keep freed heap memory for reuse (glibc only). Returns whether glibc accepted the settings."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    trim = min(int(trim_threshold), 2**31 - 1)
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))


__all__ = ["BACKENDS", "CONV_LAYOUTS", "CUDNN_BENCHMARK", "apply_cudnn_benchmark", "backend", "check_device", "cache_dir", "conv_layout", "cuda_graphs", "cudnn_benchmark", "gpu_rehearsal", "tf32",
           "tune_malloc", "tune_malloc_in_cli"]
