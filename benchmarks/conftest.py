"""Shared fixtures of the CPU benchmarks and the ratio summary printed at the end of the run.

Run: ``.venv/bin/python -m pytest -q benchmarks`` (not part of ``make test``: testpaths is tests/).
Every scenario is one pytest-benchmark group holding netspace_fast ("ours") and its peers, all
measured in the same run; the summary prints peer median / ours median per group next to the goal
of the issue. Nothing here asserts on time: the goals are printed, never enforced.
"""

from __future__ import annotations

import os
import platform

import pytest
import torch

import netspace_fast
from pack_peers import WIDTH, make_models


# ---------------------------------------------------------------------------------------------
# the zoos: built once per session, as users have them (eval mode, requires_grad as built)


@pytest.fixture(scope="session")
def resnet32_bnfree_64():
    return make_models("resnet32", 64, batchnorm=False, seed=1)


@pytest.fixture(scope="session")
def lenetlike_256():
    return make_models("lenetlike", 256, batchnorm=False, seed=2)


@pytest.fixture(scope="session")
def resnet56_bn_64():
    return make_models("resnet56", 64, batchnorm=True, seed=3)


@pytest.fixture(scope="session")
def packed():
    """pack_preps' output per zoo, computed once: what every provider of a group must reproduce."""
    cache: dict[int, torch.Tensor] = {}

    def get(models):
        if id(models) not in cache:
            with torch.no_grad():
                cache[id(models)] = netspace_fast.pack_preps(models, width=WIDTH)
        return cache[id(models)]

    return get


@pytest.fixture(scope="session", autouse=True)
def malloc_policy():
    """NETSPACE_BENCH_TUNE_MALLOC=1 applies netspace_fast.tune_malloc() to the whole process, so to
    every provider alike (no mmap churn for the tens-of-MB activations of the training steps)."""
    tuned = os.environ.get("NETSPACE_BENCH_TUNE_MALLOC", "0") == "1" and netspace_fast.tune_malloc()
    os.environ["NETSPACE_BENCH_MALLOC"] = "tuned (no mmap, no trim)" if tuned else "glibc default"
    yield


@pytest.fixture(scope="session", autouse=True)
def warm_memory(malloc_policy):
    """Touch ~3 GB once before anything is timed.

    On the development VMs the first touch of guest memory that the process has never used costs
    ~7x a normal page fault (measured: the first five 225 MB packs 290 ms each, then 39 ms). Without
    this, whichever provider happens to run first in a group pays for the VM, not for its code.
    """
    for _ in range(12):
        torch.empty(64 * 2**20).fill_(1.0)  # 256 MB, freed at once
    yield


# ---------------------------------------------------------------------------------------------
# measuring


@pytest.fixture
def measure(benchmark):
    """``measure(fn, rounds=..., provider=..., goal=...)``: time ``fn`` with pedantic rounds; returns its output.

    All providers run under ``torch.no_grad()``: a packing benchmark measures data movement, and
    the parameters of real models have requires_grad=True, so without it ours and the peers would
    also be timed recording autograd graphs (differently: the peers record one node per op).
    ``goal`` is the speedup (peer median / ours median) the issue asks for against this peer;
    None for netspace_fast itself and for peers reported without a goal. ``role='bound'`` marks a
    lower bound that is not a peer (allocating and zero-filling the output), reported apart.
    """

    def run(fn, *, rounds: int, provider: str, goal: float | None = None, role: str | None = None,
            grad: bool = False):
        role = role or ("ours" if provider == "ours" else "peer")
        benchmark.extra_info.update(provider=provider, role=role, goal=goal)

        def target():
            with torch.set_grad_enabled(grad):  # grad=True for training-step benchmarks
                return fn()

        return benchmark.pedantic(target, rounds=rounds, warmup_rounds=2, iterations=1)

    return run


# ---------------------------------------------------------------------------------------------
# the ratio table


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    omp = os.environ.get("OMP_WAIT_POLICY", "default")
    return (f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, OMP_WAIT_POLICY={omp}, "
            f"malloc {os.environ.get('NETSPACE_BENCH_MALLOC', 'glibc default')}, torch {torch.__version__}")


def ratio_rows(benchmarks) -> list[dict]:
    """One row per peer of every group that has 'ours': medians, minima, their ratios, the goal."""
    groups: dict[str, list] = {}
    for bench in benchmarks:
        if not bench or getattr(bench, "has_error", False):
            continue
        groups.setdefault(bench.group or "", []).append(bench)
    rows = []
    for group, benches in sorted(groups.items()):
        ours = [b for b in benches if b.extra_info.get("role") == "ours"]
        if not ours:
            continue
        o = ours[0].stats
        for b in benches:
            if b.extra_info.get("role") not in ("peer", "bound"):
                continue
            p = b.stats
            rows.append(dict(group=group, role=b.extra_info["role"], peer=b.extra_info.get("provider", b.name),
                             ours_med=o.median,
                             peer_med=p.median, ratio_med=p.median / o.median, ours_min=o.min, peer_min=p.min,
                             ratio_min=p.min / o.min, goal=b.extra_info.get("goal")))
    return rows


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    rows = ratio_rows(session.benchmarks)
    if not rows:
        return
    tr = terminalreporter
    tr.section("netspace_fast vs peers (ratio = peer / ours; goals are reported, not asserted)")
    tr.write_line(f"machine: {_machine()}")
    tr.write_line(f"load average (1, 5, 15 min) at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())} "
                  f"(this run itself adds up to {torch.get_num_threads()})")
    tr.write_line("median: the headline figure; min: the least disturbed round. Other processes on these cores make "
                  "OpenMP spin-waits stall every parallel region: the peers (thousands of small ops) then slow down "
                  "by up to 50x; OMP_WAIT_POLICY=PASSIVE avoids that when the machine cannot be quiet.")
    header = (f"{'scenario':<24} | {'peer':<34} | {'ours ms':>8} | {'peer ms':>9} | {'ratio':>8} | "
              f"{'min ratio':>9} | {'goal':>6} | meets")
    tr.write_line(header)
    tr.write_line("-" * len(header))
    for r in (r for r in rows if r["role"] == "peer"):
        goal = r["goal"]
        goal_s = f">={goal:g}x" if goal else "-"
        meets = ("yes" if r["ratio_med"] >= goal else "NO") if goal else "-"
        tr.write_line(f"{r['group']:<24} | {r['peer']:<34} | {r['ours_med'] * 1e3:8.2f} | {r['peer_med'] * 1e3:9.2f} | "
                      f"{r['ratio_med']:7.2f}x | {r['ratio_min']:8.2f}x | {goal_s:>6} | {meets}")
    bounds = [r for r in rows if r["role"] == "bound"]
    if bounds:
        tr.write_line("")
        tr.write_line("floor: allocating and zero-filling a fresh output of the same shape (page faults included); "
                      "ours / floor near 1 means the output allocation bounds ours")
        for r in bounds:
            tr.write_line(f"{r['group']:<24} | ours {r['ours_med'] * 1e3:8.2f} ms | "
                          f"floor {r['peer_med'] * 1e3:8.2f} ms | ours / floor {1 / r['ratio_med']:5.2f}")
