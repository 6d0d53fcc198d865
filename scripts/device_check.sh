#!/usr/bin/env bash
# One command for the GPU machine (H100/H200, its own python3 with torch 2.11 and Triton 3.6, no
# package index), ordered by value so that the first try on a lent device measures before anything
# else can use up its minutes:
#
#   1. build      the extension in place for sm_90 (NETSPACE_FORCE_CUDA_BUILD=1); if that fails, once
#                 more without the .cu kernels (NETSPACE_SKIP_CUDA_BUILD=1: the Triton pack kernel serves
#                 CUDA), said so in the table, and the run goes on;
#   2. benches    the NetSpace step (space), batched forward + backward (i) 8 ResNet8 and (ii) 64
#                 LeNetLike (batched), zoo training (zoo); each checks its replayed (CUDA-graph) result
#                 against eager or the per-network loop AFTER its timing;
#   3. graphs     the graph tests: tests/engine/test_graphs.py (a real engine call captured vs eager)
#                 and tests/zoo/test_zoo_gpu.py (graphed zoo training vs CPU, the whole zoo job);
#   4. commands   every CLI command end to end on CUDA, torchrun included (scripts/gpu_commands.sh);
#   5. more       the remaining benchmarks: packing (pack), the general engine's scenario (iii) (dsconv);
#   6. op tests   the other test files with gpu/triton tests (the Triton op tests, compiled for the GPU:
#                 the slowest, cold Triton cache), last, each in its own pytest process.
#
# Budget: under 8 minutes on a cold H100, held by timeouts and one deadline, NETSPACE_DEVICE_DEADLINE
# (default 450 s after the start): a stage or file that would start with less than NETSPACE_DEVICE_MIN_S
# (default 20 s) left, or with less than its own minimum, is skipped with a 'skipped' row saying so.
# Measured on an H200 (2026-11-27, the previous program): build 30-35 s; the gpu/triton test files
# ~150 s warm, on a cold machine up to their whole former 240 s (batched_forward_triton 66 s,
# batched_triton 42, pack_gpu 23, zoo_gpu 17; the first file pays Triton's compiles); benchmarks pack
# ~26 s, batched ~58 s, zoo ~82 s (zoo then rebuilt its net in every timing); space and the commands
# not measured yet. Stage budgets from those:
#   build     150 s timeout (5x the measured 30-35 s), the fallback build 120 s;
#   benches   space 75 s (3 scenarios of ~10-20 s), batched 120 s ((i)/(ii) ~40 s, torch.compile
#             ~40 s each when the budget allows), zoo 120 s (~82 s measured, less since it builds once);
#   graphs    60 s a file (zoo_gpu 17 s measured, test_graphs a few seconds);
#   commands  100 s in all, 60 s a command (~17 short CUDA processes, not measured on a GPU);
#   more      pack 60 s (~26 s measured), dsconv 60 s;
#   op tests  what is left, at most 120 s a file.
# Typical: 35 + ~190 + ~30 + 100 = ~355 s before stage 5, so the op tests, not the measurements, are
# what a slow run loses.
#
# Everything lands in $OUT (or /tmp/netspace_device_check) as soon as it is finished, so a run cut
# short keeps the stages it completed: build.log (build_fallback.log), bench.log (each benchmark's
# output appended when it ends), graphs.log and tests.log (every test file in its own pytest process;
# failures summarized with their messages), commands.log and commands/ (one log per command,
# table.md), and cache/ (NETSPACE_CACHE_DIR: the layout tuner's measured choices on this GPU; listed at
# the end in layouts.txt). cuDNN's autotuner follows the one rule (NETSPACE_CUDNN_BENCHMARK, default on).
#
# Knobs: NETSPACE_DEVICE_BUILD=0 skips the build; NETSPACE_DEVICE_BENCHES (default "space batched zoo")
# and NETSPACE_DEVICE_MORE_BENCHES (default "pack dsconv") pick benchmarks ("" none; names: space,
# batched, zoo, pack, dsconv); NETSPACE_DEVICE_GRAPH_TESTS narrows the graph tests;
# NETSPACE_DEVICE_TESTS=0 skips both test stages; NETSPACE_DEVICE_TEST_FILES narrows the op test files;
# NETSPACE_DEVICE_COMMANDS=0 skips the commands; NETSPACE_DEVICE_DEADLINE, NETSPACE_DEVICE_MIN_S.
#
# The dry run: NETSPACE_DEVICE=cpu bash scripts/device_check.sh runs the same stages on a CPU machine,
# the GPU program rehearsed (NETSPACE_GPU_REHEARSAL=1, TRITON_INTERPRET=1) in the benchmarks (their
# smoke mode, --device cpu --quick) and the commands (--device cpu), the test files as make test-triton
# runs them (interpreted): the script's logic (order, deadline, skip rows, build fallback, table)
# without a GPU (tests/test_scripts.py runs it with a stub python; NETSPACE_DEVICE_BUILD=0 there keeps
# a shared checkout's built extension as it is).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEV=${NETSPACE_DEVICE:-cuda}
case "$DEV" in
  cuda | cpu) ;;
  *) echo "NETSPACE_DEVICE: expected cuda or cpu, got '$DEV'" >&2; exit 2 ;;
esac
OUT_DIR=${OUT:-/tmp/netspace_device_check}
mkdir -p "$OUT_DIR"
export NETSPACE_CACHE_DIR=${NETSPACE_CACHE_DIR:-$OUT_DIR/cache}  # what the layout tuner measures comes back
export NETSPACE_CUDA_ARCHS=${NETSPACE_CUDA_ARCHS:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
export PYTHONUNBUFFERED=1
if [ "$DEV" = cpu ]; then  # the dry run: CPU tensors take the GPU program
  export NETSPACE_GPU_REHEARSAL=1 TRITON_INTERPRET=1
fi
START=$(date +%s)
DEADLINE=${NETSPACE_DEVICE_DEADLINE:-450}
MIN_S=${NETSPACE_DEVICE_MIN_S:-20}
status=()

row() { status+=("$1|$2|$3"); echo "-- $1: $2 ${3:+($3)}"; }
table() {
  printf '\n%-46s %-8s %s\n' CHECK RESULT DETAIL
  for r in "${status[@]}"; do IFS='|' read -r a b c <<<"$r"; printf '%-46s %-8s %s\n' "$a" "$b" "$c"; done
  echo "total $(( $(date +%s) - START )) s (deadline ${DEADLINE} s; device $DEV)"
}
elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( DEADLINE - $(elapsed) )); }  # seconds left before the deadline
cap() { local a=$1 b=$2; echo $(( a < b ? a : b )); }
# room NAME [NEED]: whether NAME may start (at least NEED, default MIN_S, seconds left); else a skip row
room() {
  local need=${2:-$MIN_S} l
  l=$(left)
  if [ "$l" -lt "$need" ]; then
    row "$1" skipped "deadline (${DEADLINE} s): ${l} s left at $(elapsed) s, needs ${need} s"
    return 1
  fi
}

# ---------------------------------------------------------------------------------------------- 1
echo "== 1. build (sm_${NETSPACE_CUDA_ARCHS/./}; device $DEV)"
if [ "${NETSPACE_DEVICE_BUILD:-1}" = 0 ]; then
  row build skipped "NETSPACE_DEVICE_BUILD=0"
else
  t0=$(date +%s)
  NETSPACE_FORCE_CUDA_BUILD=1 timeout 150 "$PY" setup.py -q build_ext --inplace >"$OUT_DIR/build.log" 2>&1
  rc=$?
  if [ "$rc" = 0 ]; then
    row "build (CUDA + C++)" ok "$(( $(date +%s) - t0 )) s"
  else
    tail -25 "$OUT_DIR/build.log"
    row "build (CUDA + C++)" FAILED "rc=$rc after $(( $(date +%s) - t0 )) s, see build.log; retrying without the .cu kernels"
    t0=$(date +%s)
    NETSPACE_SKIP_CUDA_BUILD=1 NETSPACE_FORCE_CUDA_BUILD=0 timeout 120 "$PY" setup.py -q build_ext --inplace \
      >"$OUT_DIR/build_fallback.log" 2>&1
    rc=$?
    if [ "$rc" = 0 ]; then
      row "build fallback (C++ only)" ok "$(( $(date +%s) - t0 )) s; NETSPACE_SKIP_CUDA_BUILD=1: no .cu kernels, the Triton pack kernel serves CUDA"
    else
      tail -25 "$OUT_DIR/build_fallback.log"
      row "build fallback (C++ only)" FAILED "rc=$rc, see build_fallback.log"
      table
      exit 1
    fi
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "$DEV" = cuda ]; then
  "$PY" -c "import netspace_fast as nf, torch; print(torch.__version__, torch.cuda.get_device_name(0)); print(nf.backends())"
else
  "$PY" -c "import netspace_fast as nf, torch; print(torch.__version__, 'cpu (dry run, GPU program rehearsed)')"
fi

# benchmarks: NAME -> script, cap (seconds); their arguments in bench()
declare -A bench_file=([space]=benchmarks/space/gpu_bench_space_step.py [batched]=benchmarks/engine/gpu_bench_batched_forward.py
                       [zoo]=benchmarks/zoo/gpu_bench_zoo_train.py [pack]=benchmarks/ops/gpu_bench_pack_preps.py
                       [dsconv]=benchmarks/engine/gpu_bench_batched_forward.py)
declare -A bench_cap=([space]=75 [batched]=120 [zoo]=120 [pack]=60 [dsconv]=60)
bench() {  # bench NAME: one benchmark, its output appended to bench.log, one row
  local name=$1 file=${bench_file[$1]:-} limit args=() t0 rc
  if [ -z "$file" ]; then
    row "bench $name" FAILED "unknown benchmark (valid: ${!bench_file[*]})"
    return
  fi
  room "bench $name ($(basename "$file"))" || return
  limit=$(cap "${bench_cap[$name]}" "$(left)")
  case $name in  # the benchmarks that can fit themselves into a time budget are told theirs
    space) args=(--budget "$(( limit * 2 / 3 ))") ;;  # a scenario starts only before this; one takes ~10-20 s
    batched) args=(--scenarios i,ii --budget "$(( limit - 15 ))") ;;
    dsconv) args=(--scenarios iii --budget "$(( limit - 15 ))") ;;
  esac
  if [ "$DEV" = cpu ]; then args+=(--device cpu --quick); fi
  t0=$(date +%s)
  echo "---- $name: $file ${args[*]-}" >>"$OUT_DIR/bench.log"
  timeout "$limit" "$PY" "$file" ${args[@]+"${args[@]}"} >"$OUT_DIR/bench_${name}.tmp" 2>&1
  rc=$?
  cat "$OUT_DIR/bench_${name}.tmp" >>"$OUT_DIR/bench.log"
  rm -f "$OUT_DIR/bench_${name}.tmp"
  row "bench $name ($(basename "$file"))" "$([ "$rc" = 0 ] && echo ok || echo FAILED)" \
    "rc=$rc$({ [ "$rc" = 124 ] || [ "$rc" = 137 ]; } && echo ' timed out'), $(( $(date +%s) - t0 )) s (limit $limit s)"
}

# test_files LOG FILE...: each file in its own pytest process (a crash cannot hide the others' results)
test_files() {
  local log=$1 f t0 rc summary limit
  shift
  for f in "$@"; do
    room "$(basename "$f")" || continue
    limit=$(cap 120 "$(left)")
    [ "$log" = graphs.log ] && limit=$(cap 60 "$limit")
    t0=$(date +%s)
    echo "---- $f" >>"$OUT_DIR/$log"
    # the test files set the rehearsal themselves where they test it (as make test-triton runs them)
    env -u NETSPACE_GPU_REHEARSAL timeout "$limit" "$PY" -m pytest -q -m "gpu or triton" "$f" -p no:cacheprovider \
      -rfE --tb=short >>"$OUT_DIR/$log" 2>&1
    rc=$?
    summary=$(sed -n "/^---- ${f//\//\\/}\$/,\$p" "$OUT_DIR/$log" | grep -E "passed|failed|error|skipped|Segmentation|Fatal" | tail -1)
    row "$(basename "$f")" "$([ "$rc" = 0 ] && echo ok || echo FAILED)" "rc=$rc ${summary} ($(( $(date +%s) - t0 )) s, limit $limit s)"
  done
  grep -hE "^(FAILED|ERROR) |Fatal Python error" "$OUT_DIR/$log" 2>/dev/null | cut -c1-300 || true
}

# ---------------------------------------------------------------------------------------------- 2
echo "== 2. benchmarks: the figures first"
for name in ${NETSPACE_DEVICE_BENCHES-space batched zoo}; do bench "$name"; done

# ---------------------------------------------------------------------------------------------- 3
GRAPH_TESTS=${NETSPACE_DEVICE_GRAPH_TESTS-tests/engine/test_graphs.py tests/zoo/test_zoo_gpu.py}
REHEARSAL_ONLY="tests/test_gpu_rehearsal.py tests/engine/test_gpu_memory.py"  # CPU rehearsals, skipped on a GPU
echo "== 3. graph tests"
: >"$OUT_DIR/graphs.log"
if [ "${NETSPACE_DEVICE_TESTS:-1}" = 0 ]; then
  row "graph tests" skipped "NETSPACE_DEVICE_TESTS=0"
else
  # shellcheck disable=SC2086
  test_files graphs.log $GRAPH_TESTS
fi

# ---------------------------------------------------------------------------------------------- 4
echo "== 4. CLI commands on $DEV"
if [ "${NETSPACE_DEVICE_COMMANDS:-1}" = 0 ]; then
  row gpu_commands.sh skipped "NETSPACE_DEVICE_COMMANDS=0"
elif room gpu_commands.sh 40; then
  t0=$(date +%s)
  budget=$(cap 100 "$(( $(left) - 10 ))")
  # the script keeps to its budget itself (each command's timeout never passes it); the outer timeout is a backstop
  NETSPACE_DEVICE=$DEV NETSPACE_COMMANDS_BUDGET=$budget NETSPACE_COMMAND_TIMEOUT=60 \
    timeout $(( budget + 30 )) bash scripts/gpu_commands.sh 2>&1 | tee "$OUT_DIR/commands.log"
  rc=${PIPESTATUS[0]}
  commands_ran=1
  summary=$(grep -E "^[0-9]+ ok, " "$OUT_DIR/commands.log" | tail -1)
  row gpu_commands.sh "$([ "$rc" = 0 ] && echo ok || echo FAILED)" "rc=$rc ${summary:-no summary} ($(( $(date +%s) - t0 )) s)"
fi

# ---------------------------------------------------------------------------------------------- 5
echo "== 5. more benchmarks"
for name in ${NETSPACE_DEVICE_MORE_BENCHES-pack dsconv}; do bench "$name"; done

# ---------------------------------------------------------------------------------------------- 6
echo "== 6. op tests (Triton kernels compiled for the GPU)"
: >"$OUT_DIR/tests.log"
if [ "${NETSPACE_DEVICE_TESTS:-1}" = 0 ]; then
  row "op tests" skipped "NETSPACE_DEVICE_TESTS=0"
else
  # every test file with gpu- or triton-marked tests, less the graph tests (stage 3) and the CPU rehearsal
  # files (whole modules skipped without TRITON_INTERPRET=1: nothing to run on a GPU)
  default_files=$(grep -lE "mark\.(gpu|triton)" tests/test_*.py tests/*/test_*.py | while read -r f; do
    case " $GRAPH_TESTS $REHEARSAL_ONLY " in *" $f "*) continue ;; esac
    echo "$f"
  done | tr '\n' ' ')
  # shellcheck disable=SC2086
  test_files tests.log ${NETSPACE_DEVICE_TEST_FILES-$default_files}
fi

echo
echo "== results"
# the conv layouts the tuner measured on this device (grouped / split / NCHW, replayed from CUDA graphs):
# also in cache/, as JSON
"$PY" -m netspace_fast.engine.layout "$DEV" >"$OUT_DIR/layouts.txt" 2>&1 || true
cat "$OUT_DIR/layouts.txt"
[ -n "${commands_ran:-}" ] && { grep -hE "^\|" "$OUT_DIR/commands/table.md" 2>/dev/null || true; }  # a row per command
grep -hE "^\|" "$OUT_DIR/bench.log" 2>/dev/null || true  # every table row of the benchmarks
table
