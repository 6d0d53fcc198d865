#!/usr/bin/env bash
# Every training and exploration command of the `netspace` CLI end to end on one device, on tiny presets
# (the argument choices of tests/cli, tests/explore, tests/sdf, tests/zoo and tests/space: one epoch, the
# embedded digits data, zoos of a few networks), each in its own process, as a user runs them:
#
#   zoo train (digits-tiny) -> train single (digits-tiny-single, 1 epoch) -> eval, interpolate, optimize;
#   test zoos written with the zoo format's own writer (untrained networks, as tests/explore/conftest.py:
#   an unseen-style Multi zoo with its ResNet56 teacher, a Single zoo of 5 LeNetLike, an SDF zoo of sphere
#   MLPs with a validation MLP, which zoo fit-sdf's tiny preset does not make) -> train multi
#   (digits-tiny-multi, 1 epoch) -> sample-unseen; zoo fit-sdf (tiny); train sdf (sdf-tiny, 1 epoch);
#   zoo train and train single under torchrun (--standalone; one rank per GPU up to 2, 2 ranks on CPU);
#   then export, visualize, audit, eval of the Multi run and interpolate of the SDF run (meshes).
#
#   bash scripts/gpu_commands.sh                       --device cuda (the GPU machine; NCCL under torchrun)
#   NETSPACE_DEVICE=cpu bash scripts/gpu_commands.sh   --device cpu (a rehearsal anywhere; gloo under torchrun)
#
# Under torchrun even ONE rank (a one-GPU machine) makes its process group (NCCL on CUDA), so its
# barriers run as real collectives; gradient averaging over ranks needs two ranks (two GPUs, or gloo on CPU).
#
# Each command: its own timeout (NETSPACE_COMMAND_TIMEOUT, default 120 s, CPU 300 s, never past the stage
# budget NETSPACE_COMMANDS_BUDGET, default 600 s, CPU 900 s: a command the budget cuts short is 'cut
# (time budget)', those after it 'skipped (time budget)'), its rc and seconds, its output in
# $OUT/commands/<name>.log (OUT defaults to /tmp/netspace_device_check), a check of the file it must have
# written (and under torchrun: 'done' printed once, the same weights on every rank), and one table row
# '| command | ok/FAILED | rc, seconds |', printed at once and appended to $OUT/commands/table.md. A
# failure never stops the others; a command that needs an earlier one's output is 'skipped (needs X)'
# when X did not succeed. The zoos and runs go to a scratch folder, removed at the end
# (NETSPACE_COMMANDS_KEEP=1 keeps it and prints its path). Exit status: 0 when every command that ran
# succeeded (time-budget cuts and skips aside), 1 otherwise.
# NETSPACE_TORCHRUN_NPROC overrides the number of torchrun ranks.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEV=${NETSPACE_DEVICE:-cuda}
OUT_DIR=${OUT:-/tmp/netspace_device_check}
LOG_DIR=$OUT_DIR/commands
case "$DEV" in
  cuda | cpu) ;;
  *) echo "NETSPACE_DEVICE: expected cuda or cpu, got '$DEV'" >&2; exit 2 ;;
esac
if [ "$DEV" = cuda ]; then
  if ! gpus=$("$PY" -c "import torch; assert torch.cuda.is_available(); print(torch.cuda.device_count())" 2>/dev/null); then
    echo "skipped: no CUDA (NETSPACE_DEVICE=cpu rehearses the commands on the CPU)"
    exit 0
  fi
  NPROC=${NETSPACE_TORCHRUN_NPROC:-$(( gpus < 2 ? gpus : 2 ))}
else
  NPROC=${NETSPACE_TORCHRUN_NPROC:-2}
fi
# on a CPU every command is slower (train multi: ~70 s on 2 idle cores, its decoded ResNet32s on 512 images)
if [ "$DEV" = cpu ]; then def_budget=900 def_timeout=300; else def_budget=600 def_timeout=120; fi
BUDGET=${NETSPACE_COMMANDS_BUDGET:-$def_budget}
CMD_TIMEOUT=${NETSPACE_COMMAND_TIMEOUT:-$def_timeout}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
mkdir -p "$LOG_DIR"
TABLE=$LOG_DIR/table.md

WORK=$(mktemp -d "${TMPDIR:-/tmp}/netspace_commands.XXXXXX")
cleanup() { if [ "${NETSPACE_COMMANDS_KEEP:-0}" = 1 ]; then echo "kept: $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT

CLI=("$PY" -m netspace_fast.cli)
TORCHRUN=("$PY" -m torch.distributed.run --standalone "--nproc_per_node=$NPROC")
T0=$(date +%s)
declare -A result=()
n_ok=0 n_failed=0 n_skipped=0 n_budget=0

now() { date +%s.%N; }
row() {  # row NAME RESULT DETAIL
  local line="| $1 | $2 | $3 |"
  echo "$line"
  echo "$line" >>"$TABLE"
}

# run NAME NEEDS EXPECT -- COMMAND...: NEEDS a comma-separated list of earlier names whose success this
# one needs ('' for none); EXPECT a file the command must have written ('' for none)
run() {
  local name=$1 needs=$2 expect=$3
  shift 4
  local n deps=()
  [ -n "$needs" ] && IFS=, read -ra deps <<<"$needs"
  for n in "${deps[@]}"; do
    if [ "${result[$n]:-}" = budget ]; then  # what it needs did not run for lack of time: neither does it
      result[$name]=budget
      n_budget=$((n_budget + 1))
      row "$name" "skipped (time budget)" "-"
      return
    elif [ "${result[$n]:-}" != ok ]; then
      result[$name]=skipped
      n_skipped=$((n_skipped + 1))
      row "$name" "skipped (needs $n)" "-"
      return
    fi
  done
  local left=$(( BUDGET - ($(date +%s) - T0) ))
  if [ "$left" -lt 5 ]; then
    result[$name]=budget
    n_budget=$((n_budget + 1))
    row "$name" "skipped (time budget)" "-"
    return
  fi
  local limit=$(( left < CMD_TIMEOUT ? left : CMD_TIMEOUT ))
  local log="$LOG_DIR/$(printf '%s' "$name" | tr -cs 'a-zA-Z0-9' '_' | sed 's/_$//').log"
  echo "\$ $*" >"$log"
  local t0 rc secs
  t0=$(now)
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  secs=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
  local why=""
  if { [ "$rc" = 124 ] || [ "$rc" = 137 ]; } && [ "$limit" -lt "$CMD_TIMEOUT" ]; then  # the stage's time ran out
    result[$name]=budget
    n_budget=$((n_budget + 1))
    row "$name" "cut (time budget)" "rc=$rc after $secs s (the $BUDGET s of the stage used)"
    return
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    why=", timed out after ${limit} s"
  elif [ "$rc" = 0 ] && [ -n "$expect" ] && [ ! -e "$expect" ]; then
    rc=0 why=", wrote no ${expect#"$WORK"/}"
  elif [ "$rc" = 0 ] && [ -n "${CHECK:-}" ] && ! why=$($CHECK "$log"); then
    why=", $why"
  else
    why=""
  fi
  if [ "$rc" = 0 ] && [ -z "$why" ]; then
    result[$name]=ok
    n_ok=$((n_ok + 1))
    row "$name" ok "rc=0, $secs s"
  else
    result[$name]=failed
    n_failed=$((n_failed + 1))
    row "$name" FAILED "rc=$rc$why, $secs s (see commands/$(basename "$log"))"
    tail -n 6 "$log" | cut -c1-240 | sed 's/^/    /'
  fi
}

# checks of a command's log (CHECK=fn): print the problem and return 1, or return 0
once_done() {  # torchrun zoo train: 'done' reported once, not once per rank
  local k
  k=$(grep -c "done: zoo written" "$1")
  [ "$k" = 1 ] || { echo "'done: zoo written' printed $k times"; return 1; }
}
same_weights() {  # torchrun train: every rank ends with the same weights (printed with 2 ranks or more)
  local k
  k=$(grep -oE "rank [0-9]+: weights sha256 [0-9a-f]+" "$1" | awk '{print $5}' | sort -u | wc -l)
  [ "$k" -le 1 ] || { echo "the ranks' weights differ ($k fingerprints)"; return 1; }
}

echo "== netspace commands on --device $DEV (torchrun: $NPROC rank(s)); logs in $LOG_DIR"
echo "| command | result | rc, seconds |"
echo "|---|---|---|"
{ echo "| command | result | rc, seconds |"; echo "|---|---|---|"; } >"$TABLE"

W=$WORK
cat >"$W/make_zoos.py" <<'EOF'
"""The test zoos, written with the zoo format's own writer (untrained networks; the commands' mechanics)."""
import sys
from pathlib import Path

import torch

from netspace_fast import archs
from netspace_fast.zoo.format import init_zoo, write_instance

work = Path(sys.argv[1])
sys.path.insert(0, str(Path("tests") / "sdf"))
from sdf_helpers import write_sphere_zoo  # noqa: E402  (3 training sphere MLPs and one validation MLP)


def write(path, items):
    init_zoo(path, {"seed": 0})
    torch.manual_seed(0)
    for i, (name, split) in enumerate(items):
        write_instance(path, archs.build(name, "digits").eval(), id=f"{name}-{i}", arch=name, dataset="digits",
                       protocol="multi", seed=i, epoch=0, acc={"train": None, "val": None, "test": None}, split=split)


# unseen-style Multi zoo: LeNetLike and ResNet32 to train, VanillaCNN and ResNet8 only in test, a ResNet56 teacher
write(work / "mzoo", [("lenetlike", "train"), ("resnet32", "train"), ("lenetlike", "val"), ("resnet32", "val"),
                      ("vanillacnn", "test"), ("resnet8", "test"), ("resnet56", "train")])
# Single zoo with 3 training networks: a meta-batch that every torchrun rank gets a share of
write(work / "szoo", [("lenetlike", s) for s in ("train", "train", "train", "val", "test")])
write_sphere_zoo(work / "spheres")
print("test zoos written:", ", ".join(p.name for p in sorted(work.iterdir()) if p.is_dir()))
EOF

# the zoo trainer, then a Single space on its zoo and the exploration commands on that run
run "zoo train" "" "$W/zoo/manifest.json" -- \
  "${CLI[@]}" zoo train --preset digits-tiny --out "$W/zoo" --device "$DEV" --no-progress
run "train single" "zoo train" "$W/single/best.safetensors" -- \
  "${CLI[@]}" train single --zoo "$W/zoo" --out "$W/single" --preset digits-tiny-single --epochs 1 --device "$DEV" \
  --no-progress
ids=()
if [ -f "$W/zoo/manifest.json" ]; then  # the zoo's first two instance ids (train, then val)
  mapfile -t ids < <("$PY" -c "import json, sys; s = json.load(open(sys.argv[1]))['splits']
print(*(s['train'] + s['val'] + s['test'])[:2], sep='\n')" "$W/zoo/manifest.json")
fi
A=${ids[0]:-lenetlike-000} B=${ids[1]:-lenetlike-001}
run "eval" "train single" "$W/eval.csv" -- \
  "${CLI[@]}" eval "$W/single" --split val --csv "$W/eval.csv" --device "$DEV"
run "interpolate" "train single" "$W/interp/interpolation.csv" -- \
  "${CLI[@]}" interpolate "$W/single" --a "$A" --b "$B" --steps 3 --out "$W/interp" --device "$DEV" --no-progress
run "optimize" "train single" "$W/opt/best.safetensors" -- \
  "${CLI[@]}" optimize "$W/single" --from "$A" --steps 3 --out "$W/opt" --device "$DEV" --no-progress

# Multi and SDF: the test zoos, then training and sampling
run "write test zoos" "" "$W/spheres/manifest.json" -- "$PY" "$W/make_zoos.py" "$W"
run "train multi" "write test zoos" "$W/multi/best.safetensors" -- \
  "${CLI[@]}" train multi --zoo "$W/mzoo" --out "$W/multi" --preset digits-tiny-multi --epochs 1 --device "$DEV" \
  --no-progress
run "sample-unseen" "train multi" "$W/unseen/samples.csv" -- \
  "${CLI[@]}" sample-unseen "$W/multi" --alphas 0.5 --out "$W/unseen" --device "$DEV" --no-progress
run "zoo fit-sdf" "" "$W/sdfzoo/manifest.json" -- \
  "${CLI[@]}" zoo fit-sdf --shapes procedural --out "$W/sdfzoo" --preset tiny --device "$DEV" --no-progress
run "train sdf" "write test zoos" "$W/sdfrun/best.safetensors" -- \
  "${CLI[@]}" train sdf --zoo "$W/spheres" --out "$W/sdfrun" --preset sdf-tiny --epochs 1 --device "$DEV" --no-progress

# torchrun: the zoo sharded over the ranks; NetSpace with the meta-batch split over them
CHECK=once_done run "torchrun zoo train" "" "$W/zoo_tr/manifest.json" -- \
  "${TORCHRUN[@]}" -m netspace_fast.cli zoo train --preset digits-tiny --out "$W/zoo_tr" --device "$DEV" --no-progress
CHECK=same_weights run "torchrun train single" "write test zoos" "$W/single_tr/best.safetensors" -- \
  "${TORCHRUN[@]}" -m netspace_fast.cli train single --zoo "$W/szoo" --out "$W/single_tr" --preset digits-tiny-single \
  --epochs 1 --device "$DEV" --no-progress

# the remaining exploration commands (last: the first to go when the time budget runs out)
run "export" "train single" "$W/decoded.safetensors" -- \
  "${CLI[@]}" export "$W/single" --id "$A" --out "$W/decoded.safetensors" --device "$DEV"
run "visualize" "train single" "$W/prep.png" -- \
  "${CLI[@]}" visualize "$W/single" --id "$A" --out "$W/prep.png" --device "$DEV"
run "audit" "train single" "$W/audit/audit.csv" -- \
  "${CLI[@]}" audit "$W/single" --out "$W/audit" --split val --images 256 --device "$DEV"
run "eval (multi)" "train multi" "$W/eval_multi.csv" -- \
  "${CLI[@]}" eval "$W/multi" --split val --csv "$W/eval_multi.csv" --device "$DEV"
run "interpolate (sdf)" "train sdf" "$W/sdfinterp/interpolation.csv" -- \
  "${CLI[@]}" interpolate "$W/sdfrun" --a sphere-a --b sphere-d --steps 3 --out "$W/sdfinterp" --device "$DEV" \
  --no-progress

total=$(( $(date +%s) - T0 ))
summary="$n_ok ok, $n_failed failed, $n_skipped skipped (needs), $n_budget skipped (time budget); $total s on --device $DEV"
echo "$summary"
echo "$summary" >>"$TABLE"
[ "$n_failed" = 0 ] && [ "$n_skipped" = 0 ]
