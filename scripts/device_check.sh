#!/usr/bin/env bash
# One command for the GPU machine (H100/H200, its own python3 with torch 2.11 and Triton 3.6, no
# package index): build the extension in place for sm_90, run the GPU tests and the GPU benchmarks,
# print a short results table last. Budget: 8 minutes on a cold machine (measured 2026-11-27 on an
# H200: build 30-35 s, tests ~150 s (batched_forward_triton 66, batched_triton 42, pack_gpu 23,
# zoo_gpu 17; the first file pays Triton's compiles), benchmarks pack ~26 s, batched ~58 s, zoo ~82 s:
# ~6 min plus the machine's start).
#
# Everything lands in $OUT (or /tmp/netspace_device_check) as soon as it is finished, so a run cut
# short still leaves the stages it completed: build.log, tests.log (every test file in its own
# pytest process, so a crash in one file cannot hide the others' results; failures summarized with
# their messages), bench.log (each benchmark's table appended when it ends, shortest first).
#
# Knobs: NETSPACE_DEVICE_TESTS=0 skips the tests; NETSPACE_DEVICE_BENCHES="pack batched" picks
# benchmarks (default: pack batched zoo, shortest first; "" runs none); NETSPACE_DEVICE_TEST_FILES
# narrows the test files (default: every test file with gpu tests).
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

table() {
  printf '\n%-34s %-8s %s\n' CHECK RESULT DETAIL
  for row in "${status[@]}"; do IFS='|' read -r a b c <<<"$row"; printf '%-34s %-8s %s\n' "$a" "$b" "$c"; done
}

t0=$(date +%s)
echo "== build (sm_${NETSPACE_CUDA_ARCHS/./})"
if timeout 240 "$PY" setup.py -q build_ext --inplace >"$OUT_DIR/build.log" 2>&1; then
  status+=("build|ok|$(( $(date +%s) - t0 )) s")
else
  tail -40 "$OUT_DIR/build.log"
  status+=("build|FAILED|see build.log")
  table
  exit 1
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import netspace_fast as nf, torch; print(torch.__version__, torch.cuda.get_device_name(0)); print(nf.backends())"

if [ "${NETSPACE_DEVICE_TESTS:-1}" != 0 ]; then
  echo "== GPU tests"
  # the gpu-marked tests and the Triton-marked ones (on the device their kernels are compiled for the GPU,
  # not interpreted as in make test)
  files=${NETSPACE_DEVICE_TEST_FILES-$(grep -lE "mark\.(gpu|triton)" tests/test_*.py tests/*/test_*.py | tr '\n' ' ')}
  : >"$OUT_DIR/tests.log"
  for f in $files; do
    t0=$(date +%s)
    echo "---- $f" >>"$OUT_DIR/tests.log"
    timeout 150 "$PY" -m pytest -q -m "gpu or triton" "$f" -p no:cacheprovider -rfE --tb=short >>"$OUT_DIR/tests.log" 2>&1
    rc=$?
    summary=$(sed -n "/^---- ${f//\//\\/}\$/,\$p" "$OUT_DIR/tests.log" | grep -E "passed|failed|error|Segmentation|Fatal" | tail -1)
    status+=("$(basename "$f")|$([ "$rc" = 0 ] && echo ok || echo "FAILED")|rc=$rc ${summary} ($(( $(date +%s) - t0 )) s)")
  done
  grep -hE "^(FAILED|ERROR) |Fatal Python error" "$OUT_DIR/tests.log" | cut -c1-300 || true
fi

echo "== GPU benchmarks"
benches=${NETSPACE_DEVICE_BENCHES-pack batched zoo}
declare -A bench_file=([pack]=benchmarks/ops/gpu_bench_pack_preps.py [batched]=benchmarks/engine/gpu_bench_batched_forward.py
                       [zoo]=benchmarks/zoo/gpu_bench_zoo_train.py)
for name in $benches; do
  bench=${bench_file[$name]}
  t0=$(date +%s)
  timeout 150 "$PY" "$bench" >"$OUT_DIR/bench_${name}.tmp" 2>&1
  rc=$?
  cat "$OUT_DIR/bench_${name}.tmp" >>"$OUT_DIR/bench.log"
  rm -f "$OUT_DIR/bench_${name}.tmp"
  status+=("$(basename "$bench")|$([ "$rc" = 0 ] && echo ok || echo FAILED)|rc=$rc $(( $(date +%s) - t0 )) s")
done

echo
echo "== results"
grep -hE "\|" "$OUT_DIR/bench.log" 2>/dev/null || true  # every table row of the benchmarks
table
