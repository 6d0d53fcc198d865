#!/usr/bin/env bash
# Configure, build and run the native C++ tests (CMakeLists.txt: the CPU kernels + test_pack_preps,
# test_gather_grouped, test_batched_layers).
#
#   bash scripts/cmake_test.sh            # Release build in build/cmake
#   bash scripts/cmake_test.sh sanitize   # Debug build with ASan + UBSan in build/sanitize
#
# Environment:
#   PYTHON     the Python whose torch to build against (default: .venv/bin/python, else python3)
#   CUDA_HOME  the real CUDA toolkit root (default: found by following the `nvcc` on PATH through
#              wrapper scripts; none found: the CUDA arguments are left out and CMakeLists.txt
#              uses its MANUAL libtorch mode)
#   JOBS       parallel build jobs (default 2)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

mode="${1:-release}"
case "$mode" in
  release|"") build_dir=build/cmake; cmake_args=(-DCMAKE_BUILD_TYPE=Release -DNETSPACE_SANITIZE=OFF) ;;
  sanitize) build_dir=build/sanitize; cmake_args=(-DCMAKE_BUILD_TYPE=Debug -DNETSPACE_SANITIZE=ON) ;;
  *) echo "usage: $0 [sanitize]" >&2; exit 2 ;;
esac

# ---- python / torch ----
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$here/.venv/bin/python" ]]; then python="$here/.venv/bin/python"; else python="$(command -v python3)"; fi
fi
prefix="$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)')"

# ---- CUDA toolkit root (torch's CMake config of a CUDA build looks for it) ----
# The real root, not the wrapper's: follow `nvcc` through scripts that `exec /x/bin/nvcc "$@"`
# (the one on PATH here is such a wrapper; its own folder would give the wrong root /usr/local).
real_nvcc_root() {
  local nvcc seen="" next
  nvcc="$(command -v nvcc 2>/dev/null)" || return 1
  while [[ -n "$nvcc" && " $seen " != *" $nvcc "* ]]; do
    seen="$seen $nvcc"
    nvcc="$(readlink -f "$nvcc")"
    if [[ "$(head -c 2 "$nvcc")" != "#!" ]]; then  # a binary: the real compiler
      dirname "$(dirname "$nvcc")"
      return 0
    fi
    next="$(grep -oE '/[^[:space:]"'"'"']+/bin/nvcc\b' "$nvcc" | head -n 1 || true)"
    nvcc="$next"
  done
  return 1
}
cuda_root=""
if [[ -n "${CUDA_HOME:-}" && -x "${CUDA_HOME}/bin/nvcc" ]]; then
  cuda_root="$CUDA_HOME"
elif root="$(real_nvcc_root)" && [[ -x "$root/bin/nvcc" ]]; then
  cuda_root="$root"
fi
cuda_args=()
if [[ -n "$cuda_root" ]]; then
  export CUDA_HOME="$cuda_root"
  cuda_args=(-DCUDA_TOOLKIT_ROOT_DIR="$cuda_root")
else
  unset CUDA_HOME  # an invalid one would only mislead torch's config
fi

echo "== cmake_test ($mode): python=$python cuda_root=${cuda_root:-<none>} build=$build_dir"
start=$(date +%s)
cmake -S . -B "$build_dir" -DCMAKE_PREFIX_PATH="$prefix" "${cuda_args[@]}" "${cmake_args[@]}"
cmake --build "$build_dir" -j"${JOBS:-2}"

if [[ "$mode" == sanitize ]]; then
  # detect_leaks=0: libtorch allocates singletons (dispatcher, op registry, thread pools) that it
  #   never frees by design; LeakSanitizer would report them at exit and fail the run.
  # halt_on_error / abort_on_error: any ASan or UBSan report fails the test instead of scrolling by.
  # UBSan is built with recovery on, so UBSAN_OPTIONS halt_on_error=1 is what makes it fatal.
  # verify_asan_link_order is not needed: libtorch is linked into the test (not dlopen'd), so the
  #   ASan runtime is already first in the library list.
  export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:halt_on_error=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1}"
  export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
fi
ctest --test-dir "$build_dir" --output-on-failure
echo "== cmake_test ($mode): passed in $(( $(date +%s) - start )) s"
