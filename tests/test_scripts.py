"""The GPU machine's scripts, checked where no GPU is: they parse, every benchmark and script they
name exists, the commands script says it skips without CUDA, and each GPU benchmark script has its
CPU smoke mode (``--device cpu --quick``). A renamed file or a syntax error would otherwise first
show on a lent device, whose minutes are few."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "scripts").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_device_check_names_existing_files():
    text = (REPO / "scripts" / "device_check.sh").read_text()
    benches = re.findall(r"\[(\w+)\]=(benchmarks/\S+\.py)", text)
    assert {name for name, _ in benches} >= {"pack", "space", "batched", "zoo"}
    for _, path in benches:
        assert (REPO / path).is_file(), path
    default = re.search(r"NETSPACE_DEVICE_BENCHES-([\w ]+)\}", text).group(1).split()
    more = re.search(r"NETSPACE_DEVICE_MORE_BENCHES-([\w ]+)\}", text).group(1).split()
    assert set(default) | set(more) <= {name for name, _ in benches}
    assert default == ["space", "batched", "zoo"]  # the figures first
    assert "scripts/gpu_commands.sh" in text and (REPO / "scripts" / "gpu_commands.sh").is_file()
    for _, path in benches:  # the CPU smoke mode each script documents
        assert "--quick" in (REPO / path).read_text() and "--device" in (REPO / path).read_text(), path


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit")
def test_gpu_commands_skips_without_cuda(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path), NETSPACE_DEVICE="cuda")
    r = subprocess.run(["bash", str(REPO / "scripts" / "gpu_commands.sh")], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "skipped: no CUDA" in r.stdout
    r = subprocess.run(["bash", str(REPO / "scripts" / "gpu_commands.sh")], capture_output=True, text=True,
                       env=dict(env, NETSPACE_DEVICE="tpu"), timeout=60)
    assert r.returncode == 2 and "NETSPACE_DEVICE: expected cuda or cpu" in r.stderr


# ------------------------------------------------------------------------------------------------
# scripts/device_check.sh: its logic on CPU, with a stub interpreter that logs what it is asked to run

STUB = r"""#!/usr/bin/env bash
echo "$* | force=${NETSPACE_FORCE_CUDA_BUILD:-} skip=${NETSPACE_SKIP_CUDA_BUILD:-} rehearsal=${NETSPACE_GPU_REHEARSAL:-} interpret=${TRITON_INTERPRET:-} cache=${NETSPACE_CACHE_DIR:-}" >>"$STUB_LOG"
case "$1" in
  setup.py)
    if [ "${NETSPACE_SKIP_CUDA_BUILD:-0}" != 1 ] && [ -n "${STUB_FAIL_CUDA_BUILD:-}" ]; then echo "nvcc fatal"; exit 1; fi
    if [ "${NETSPACE_SKIP_CUDA_BUILD:-0}" = 1 ] && [ -n "${STUB_FAIL_ALL_BUILDS:-}" ]; then echo "c++ fatal"; exit 1; fi
    exit 0 ;;
  -c) echo "stub torch"; exit 0 ;;
  -m) [ "$2" = pytest ] && echo "1 passed in 0.01s"; exit 0 ;;
  *.py) echo "| stub row | $1 |"; exit 0 ;;
esac
exit 0
"""


def _dry_run(tmp_path, **env):
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    log = tmp_path / "stub.log"
    out = tmp_path / "out"
    full = dict(os.environ, PYTHON=str(stub), STUB_LOG=str(log), OUT=str(out), NETSPACE_DEVICE="cpu",
                NETSPACE_COMMANDS_KEEP="0", **env)
    for k in ("NETSPACE_GPU_REHEARSAL", "TRITON_INTERPRET", "NETSPACE_CACHE_DIR", "NETSPACE_DEVICE_DEADLINE"):
        if k not in env:
            full.pop(k, None)
    r = subprocess.run(["bash", str(REPO / "scripts" / "device_check.sh")], capture_output=True, text=True, env=full,
                       timeout=300)
    calls = log.read_text().splitlines() if log.exists() else []
    return r, calls, out


def _stage(call: str) -> str:
    """What one logged interpreter call was, in the device check's terms."""
    args = call.split(" | ")[0]
    if args.startswith("setup.py"):
        return "build (fallback)" if "skip=1" in call else "build"
    if args.startswith("-c "):
        return "info"
    if args.startswith("-m netspace_fast.engine.layout"):
        return "layouts"
    if "netspace_fast.cli" in args or "torch.distributed.run" in args or "make_zoos.py" in args:
        return "commands"
    if args.startswith("-m pytest"):
        name = next(a for a in args.split() if a.startswith("tests/"))
        return "graph tests" if name in ("tests/engine/test_graphs.py", "tests/zoo/test_zoo_gpu.py") else "op tests"
    if "--scenarios iii" in args:
        return "bench dsconv"
    return "bench " + {"gpu_bench_space_step.py": "space", "gpu_bench_batched_forward.py": "batched",
                       "gpu_bench_zoo_train.py": "zoo", "gpu_bench_pack_preps.py": "pack"}[Path(args.split()[0]).name]


def test_device_check_dry_run_measures_first_and_falls_back_to_the_cpp_build(tmp_path):
    """The CUDA build fails: the C++-only build runs, the table says so, and the run goes on in the
    order of value: the benchmarks, the graph tests, the commands, the other benchmarks, the op tests;
    every stage in the rehearsal (the dry run), the layout tuner's cache under $OUT."""
    r, calls, out = _dry_run(tmp_path, STUB_FAIL_CUDA_BUILD="1")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    stages = [_stage(c) for c in calls]
    order = list(dict.fromkeys(stages))  # first appearances
    assert order == ["build", "build (fallback)", "info", "bench space", "bench batched", "bench zoo", "graph tests",
                     "commands", "bench pack", "bench dsconv", "op tests", "layouts"], order
    assert stages.index("op tests") > max(i for i, s in enumerate(stages) if s not in ("op tests", "layouts"))
    assert stages[-1] == "layouts" and stages.count("layouts") == 1  # the measured layouts, listed at the end
    assert calls[-1].startswith("-m netspace_fast.engine.layout cpu ")
    assert [c.split(" | ")[0] for c in calls if _stage(c) == "graph tests"] == [
        f"-m pytest -q -m gpu or triton {f} -p no:cacheprovider -rfE --tb=short"
        for f in ("tests/engine/test_graphs.py", "tests/zoo/test_zoo_gpu.py")]
    batched = next(c for c in calls if _stage(c) == "bench batched")
    assert "--scenarios i,ii" in batched and "--device cpu --quick" in batched
    assert not any("test_gpu_rehearsal.py" in c or "test_gpu_memory.py" in c for c in calls)  # CPU-only files
    for c in calls[2:]:  # after the build: the GPU program rehearsed (the tests set it themselves), the
        # Triton kernels interpreted, the cache written under $OUT
        rehearsal = "" if _stage(c).endswith("tests") else "1"
        assert f"rehearsal={rehearsal} interpret=1" in c and f"cache={out}/cache" in c, c
    table = r.stdout[r.stdout.rindex("CHECK"):]
    assert re.search(r"build \(CUDA \+ C\+\+\)\s+FAILED\s+rc=1 .*retrying without the \.cu kernels", table)
    assert re.search(r"build fallback \(C\+\+ only\)\s+ok\s+.*NETSPACE_SKIP_CUDA_BUILD=1", table)
    rows = [line.split()[0] for line in table.splitlines()[1:] if line.strip() and not line.startswith("total")]
    assert rows[:8] == ["build", "build", "bench", "bench", "bench", "test_graphs.py", "test_zoo_gpu.py",
                        "gpu_commands.sh"], rows
    assert (out / "build.log").is_file() and (out / "build_fallback.log").is_file() and (out / "bench.log").is_file()


def test_device_check_dry_run_past_the_deadline_skips_and_says_so(tmp_path):
    """Deadline 0: the build runs, every later stage is a 'skipped' row naming the deadline, nothing
    else is run, and the table is printed."""
    r, calls, _ = _dry_run(tmp_path, NETSPACE_DEVICE_DEADLINE="0")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert [_stage(c) for c in calls] == ["build", "info", "layouts"]
    table = r.stdout[r.stdout.rindex("CHECK"):]
    skipped = [line for line in table.splitlines() if " skipped " in line]
    names = [line.split()[0] for line in skipped]
    assert names[:8] == ["bench", "bench", "bench", "test_graphs.py", "test_zoo_gpu.py", "gpu_commands.sh", "bench",
                         "bench"], names
    assert len(names) > 9  # and every op test file
    assert all("deadline (0 s)" in line for line in skipped)
    assert "total" in table and "deadline 0 s" in table


def test_device_check_ends_when_no_build_works(tmp_path):
    r, calls, _ = _dry_run(tmp_path, STUB_FAIL_CUDA_BUILD="1", STUB_FAIL_ALL_BUILDS="1")
    assert r.returncode == 1
    assert [_stage(c) for c in calls] == ["build", "build (fallback)"]
    assert re.search(r"build fallback \(C\+\+ only\)\s+FAILED", r.stdout)


def test_zoo_benchmark_builds_each_net_once(tmp_path):
    """benchmarks/zoo/gpu_bench_zoo_train.py in its CPU smoke mode: one BatchedZooNet per scenario and
    provider (6), however many runs each makes (a warm-up, the timing, the check after it), and the
    check after the timings passes."""
    path = REPO / "benchmarks" / "zoo" / "gpu_bench_zoo_train.py"
    code = f"""
import runpy, sys
import netspace_fast.zoo as zoo
from netspace_fast.zoo.model import BatchedZooNet
built, runs = [], []
class Counted(BatchedZooNet):
    def __init__(self, models):
        built.append(1)
        super().__init__(models)
zoo.BatchedZooNet = Counted
real_epoch = zoo.train_epoch
def counted_epoch(net, *a, **k):
    runs.append(id(net))
    return real_epoch(net, *a, **k)
zoo.train_epoch = counted_epoch
sys.argv = [{str(path)!r}, "--device", "cpu", "--quick", "--epochs", "1"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    print("built", len(built), "nets", len(set(runs)), "epochs", len(runs))
    raise
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    built, nets, epochs = map(int, re.search(r"built (\d+) nets (\d+) epochs (\d+)", r.stdout).groups())
    # 6 nets x (a warm-up + 1 timing) + 2 scenarios x (the graphed and the eager run of the check) = 16 runs
    assert (built, nets, epochs) == (6, 6, 16), r.stdout
    checks = [line for line in r.stdout.splitlines() if "check (after timing)" in line]
    assert len(checks) == 2 and all("| ok:" in line for line in checks), r.stdout
