#!/usr/bin/env bash
# One command for the GPU machine (H100, its own python3 with torch 2.11 and Triton 3.6, no package
# index): build the extension in place for sm_90, run the GPU tests and the GPU benchmarks, print a
# short results table last. Budget: under 8 minutes. Every later kernel adds its tests/benchmarks here.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-/tmp/netspace_device_check}
mkdir -p "$OUT_DIR"
export NETSPACE_CUDA_ARCHS=${NETSPACE_CUDA_ARCHS:-9.0}
export NETSPACE_FORCE_CUDA_BUILD=1
export MAX_JOBS=${MAX_JOBS:-16}
export PYTHONUNBUFFERED=1
status=()

t0=$(date +%s)
echo "== build (sm_${NETSPACE_CUDA_ARCHS/./})"
if timeout 300 "$PY" setup.py -q build_ext --inplace >"$OUT_DIR/build.log" 2>&1; then
  status+=("build|ok|$(( $(date +%s) - t0 )) s")
else
  tail -40 "$OUT_DIR/build.log"
  status+=("build|FAILED|see build.log")
  printf '\n%-28s %-8s %s\n' CHECK RESULT DETAIL
  for row in "${status[@]}"; do IFS='|' read -r a b c <<<"$row"; printf '%-28s %-8s %s\n' "$a" "$b" "$c"; done
  exit 1
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import netspace_fast as nf, torch; print(torch.__version__, torch.cuda.get_device_name(0)); print(nf.backends())"

echo "== GPU tests"
t0=$(date +%s)
timeout 240 "$PY" -m pytest -q -m gpu tests -p no:cacheprovider 2>&1 | tee "$OUT_DIR/tests.log" | tail -25
rc=${PIPESTATUS[0]}
summary=$(grep -E "passed|failed|error" "$OUT_DIR/tests.log" | tail -1)
status+=("gpu tests|$([ "$rc" = 0 ] && echo ok || echo FAILED)|${summary} ($(( $(date +%s) - t0 )) s)")

echo "== GPU benchmarks"
t0=$(date +%s)
for bench in benchmarks/gpu_bench_*.py; do
  timeout 150 "$PY" "$bench" 2>&1 | tee -a "$OUT_DIR/bench.log"
  rc=${PIPESTATUS[0]}
  status+=("$(basename "$bench")|$([ "$rc" = 0 ] && echo ok || echo FAILED)|$(( $(date +%s) - t0 )) s")
done

echo
echo "== results"
grep -hE "\|" "$OUT_DIR/bench.log" 2>/dev/null || true  # every table row of the benchmarks
printf '\n%-28s %-8s %s\n' CHECK RESULT DETAIL
for row in "${status[@]}"; do IFS='|' read -r a b c <<<"$row"; printf '%-28s %-8s %s\n' "$a" "$b" "$c"; done
