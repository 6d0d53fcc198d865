#!/usr/bin/env bash
# One command for the GPU machine (H100/H200, its own python3 with torch 2.11 and Triton 3.6, no
# package index): build the extension in place for sm_90, run the GPU tests, every CLI command end to
# end on CUDA (scripts/gpu_commands.sh), then the GPU benchmarks, and print a short results table last.
# Budget: under 8 minutes on a cold H100, held by timeouts: the stages end by NETSPACE_DEVICE_DEADLINE
# (default 450 s after the start; what would start later is skipped and says so). Measured 2026-11-27
# on an H200 before the commands stage: build 30-35 s, tests ~150 s (batched_forward_triton 66,
# batched_triton 42, pack_gpu 23, zoo_gpu 17; the first file pays Triton's compiles), benchmarks pack
# ~26 s, batched ~58 s, zoo ~82 s. Stage budgets:
#   build     240 s (timeout; a failed build ends the run);
#   tests     120 s per test file, 240 s in all (a file that would start later is skipped);
#   commands  100 s in all, 60 s per command (not measured on a GPU yet; ~17 short CUDA processes);
#   benches   the rest up to the deadline, each at most its own cap (space 90 s, pack 60 s, batched
#             150 s, zoo 150 s), shortest first: on a slow run zoo, the last, is the one cut short.
#
# Everything lands in $OUT (or /tmp/netspace_device_check) as soon as it is finished, so a run cut
# short still leaves the stages it completed: build.log, tests.log (every test file in its own
# pytest process, so a crash in one file cannot hide the others' results; failures summarized with
# their messages), commands.log and commands/ (one log per command, table.md), bench.log (each
# benchmark's table appended when it ends, shortest first).
#
# Knobs: NETSPACE_DEVICE_TESTS=0 skips the tests; NETSPACE_DEVICE_TEST_FILES narrows the test files
# (default: every test file with gpu tests); NETSPACE_DEVICE_COMMANDS=0 skips the commands stage;
# NETSPACE_DEVICE_BENCHES="pack space" picks benchmarks (default: pack space batched zoo, shortest first;
# "" runs none); NETSPACE_DEVICE_DEADLINE (seconds, default 450) moves the deadline.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-/tmp/netspace_device_check}
mkdir -p "$OUT_DIR"
export NETSPACE_CUDA_ARCHS=${NETSPACE_CUDA_ARCHS:-9.0}
export NETSPACE_FORCE_CUDA_BUILD=1
export MAX_JOBS=${MAX_JOBS:-16}
export PYTHONUNBUFFERED=1
START=$(date +%s)
DEADLINE=${NETSPACE_DEVICE_DEADLINE:-450}
status=()

table() {
  printf '\n%-34s %-8s %s\n' CHECK RESULT DETAIL
  for row in "${status[@]}"; do IFS='|' read -r a b c <<<"$row"; printf '%-34s %-8s %s\n' "$a" "$b" "$c"; done
  echo "total $(( $(date +%s) - START )) s (deadline ${DEADLINE} s)"
}
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }  # seconds left before the deadline
cap() { local a=$1 b=$2; echo $(( a < b ? a : b )); }

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
  tests_start=$(date +%s)
  for f in $files; do
    budget=$(( 240 - ($(date +%s) - tests_start) ))
    if [ "$budget" -lt 20 ]; then
      status+=("$(basename "$f")|skipped|time budget of the tests (240 s) used")
      continue
    fi
    t0=$(date +%s)
    echo "---- $f" >>"$OUT_DIR/tests.log"
    timeout "$(cap 120 "$budget")" "$PY" -m pytest -q -m "gpu or triton" "$f" -p no:cacheprovider -rfE --tb=short \
      >>"$OUT_DIR/tests.log" 2>&1
    rc=$?
    summary=$(sed -n "/^---- ${f//\//\\/}\$/,\$p" "$OUT_DIR/tests.log" | grep -E "passed|failed|error|Segmentation|Fatal" | tail -1)
    status+=("$(basename "$f")|$([ "$rc" = 0 ] && echo ok || echo "FAILED")|rc=$rc ${summary} ($(( $(date +%s) - t0 )) s)")
  done
  grep -hE "^(FAILED|ERROR) |Fatal Python error" "$OUT_DIR/tests.log" | cut -c1-300 || true
fi

if [ "${NETSPACE_DEVICE_COMMANDS:-1}" != 0 ]; then
  echo "== CLI commands on CUDA"
  t0=$(date +%s)
  budget=$(cap 100 "$(( $(left) - 20 ))")
  if [ "$budget" -lt 20 ]; then
    status+=("gpu_commands.sh|skipped|deadline")
  else
    # the script keeps to its budget itself (each command's timeout never passes it); the outer timeout is a backstop
    NETSPACE_DEVICE=cuda NETSPACE_COMMANDS_BUDGET=$budget NETSPACE_COMMAND_TIMEOUT=60 \
      timeout $(( budget + 30 )) bash scripts/gpu_commands.sh 2>&1 | tee "$OUT_DIR/commands.log"
    rc=${PIPESTATUS[0]}
    commands_ran=1
    summary=$(grep -E "^[0-9]+ ok, " "$OUT_DIR/commands.log" | tail -1)
    status+=("gpu_commands.sh|$([ "$rc" = 0 ] && echo ok || echo FAILED)|rc=$rc ${summary:-no summary} ($(( $(date +%s) - t0 )) s)")
  fi
fi

echo "== GPU benchmarks"
benches=${NETSPACE_DEVICE_BENCHES-pack space batched zoo}
declare -A bench_file=([pack]=benchmarks/ops/gpu_bench_pack_preps.py [space]=benchmarks/space/gpu_bench_space_step.py
                       [batched]=benchmarks/engine/gpu_bench_batched_forward.py [zoo]=benchmarks/zoo/gpu_bench_zoo_train.py)
declare -A bench_cap=([pack]=60 [space]=90 [batched]=150 [zoo]=150)
for name in $benches; do
  bench=${bench_file[$name]:-}
  if [ -z "$bench" ]; then
    status+=("$name|FAILED|unknown benchmark (valid: ${!bench_file[*]})")
    continue
  fi
  limit=$(cap "${bench_cap[$name]}" "$(left)")
  if [ "$limit" -lt 20 ]; then
    status+=("$(basename "$bench")|skipped|deadline (${DEADLINE} s) reached")
    continue
  fi
  args=()
  case $name in  # the benchmarks that can fit themselves into a time budget are told theirs
    space) args=(--budget "$(( limit * 2 / 3 ))") ;;  # a scenario starts only before this; one takes ~10-20 s
    batched) args=(--budget "$(( limit - 15 ))") ;;
  esac
  t0=$(date +%s)
  timeout "$limit" "$PY" "$bench" ${args[@]+"${args[@]}"} >"$OUT_DIR/bench_${name}.tmp" 2>&1
  rc=$?
  cat "$OUT_DIR/bench_${name}.tmp" >>"$OUT_DIR/bench.log"
  rm -f "$OUT_DIR/bench_${name}.tmp"
  status+=("$(basename "$bench")|$([ "$rc" = 0 ] && echo ok || echo FAILED)|rc=$rc $(( $(date +%s) - t0 )) s (limit $limit s)")
done

echo
echo "== results"
[ -n "${commands_ran:-}" ] && { grep -hE "^\|" "$OUT_DIR/commands/table.md" 2>/dev/null || true; }  # a row per command
grep -hE "\|" "$OUT_DIR/bench.log" 2>/dev/null || true  # every table row of the benchmarks
table
