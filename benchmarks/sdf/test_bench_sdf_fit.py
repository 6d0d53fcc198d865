"""Batched SIREN fitting throughput (shape-steps per second), CPU, all in one run.

One round = one Adam step of K SIRENs (3 -> 256 -> 256 -> 1, sin(30 x)) on N points each (its own
points per network; the points are drawn once, outside the timing, alike for everyone). Two
scenarios, each one group: "sdf fit 16x2048" (K=16, N=2,048: every hidden activation is exactly
32 MiB, glibc's largest mmap threshold, so with the default malloc each one is a fresh mmap and
pays its page faults every step) and "sdf fit 24x1024" (the small preset's group and points: 24 MiB
activations, from the heap, which glibc still trims when a step frees ~100 MB at once). Run it with
glibc's default malloc and with ``NETSPACE_BENCH_TUNE_MALLOC=1`` (what the CLI applies). Providers:

- ours: :class:`netspace_fast.sdf.SirenFitter`'s step with the default kernel ("op":
  ``batched_forward``, the C++ batched linear op with its vectorized sin(30 z) epilogue, one (K, P)
  gradient) and fused Adam over the (K, H, 64) PRep batch;
- ours with kernel "fused" (:class:`netspace_fast.sdf.fit.SirenStack`: batched GEMMs with the 30
  folded in, ATen's vectorized sin/cos);
- the original way: 4 MLPs at a time with ``torch.bmm`` (``baddbmm``), plain ``torch.sin``,
  autograd, ``torch.optim.Adam`` per group of 4 (goal: ours >= 1.2x);
- one at a time: ``archs.build("siren")`` modules and ``torch.optim.Adam``.

``test_sgemm`` times a 2048^3 float32 GEMM in the same run; ``test_summary`` prints shape-steps/s
and the fraction of that sgemm rate each provider reaches (GEMM FLOPs only: 2 * N * (3*256 +
256*256 + 256) per forward, x3 with the backward).
"""

from __future__ import annotations

import pytest
import torch

from netspace_fast import archs
from netspace_fast.sdf import ProceduralChairs, SirenFitter

SHAPES = [(16, 2048), (24, 1024)]
ROUNDS = 5
_results: dict[tuple, float] = {}
_cache: dict = {}


def _flop_per_shape_step(N: int) -> int:
    return 3 * 2 * N * (3 * 256 + 256 * 256 + 256)


def _data(K: int, N: int):
    if (K, N) not in _cache:
        g = torch.Generator().manual_seed(0)
        _cache[K, N] = (torch.rand(K, N, 3, generator=g) * 2 - 1, torch.rand(K, N, generator=g) * 0.2 - 0.1)
    if "shapes" not in _cache:
        _cache["shapes"] = ProceduralChairs(max(k for k, _ in SHAPES), pool_size=100, heldout_size=10)  # unused
    return _cache[K, N]


def _ours(kernel, K, N):
    x, y = _data(K, N)
    f = SirenFitter(_cache["shapes"], list(range(K)), points=N, lr=1e-4, kernel=kernel)
    f.batch = lambda: (x, y)  # the same fixed points as the peers
    return f.train_step


def _bmm4(K, N):
    x, y = _data(K, N)
    groups = []
    for s in range(0, K, 4):
        ms = []
        for i in range(s, s + 4):
            torch.manual_seed(i)
            ms.append(archs.build("siren"))
        ps = [torch.stack([m.get_parameter(n).detach() for m in ms]).clone().requires_grad_()
              for n in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias")]
        groups.append((ps, torch.optim.Adam(ps, lr=1e-4), x[s:s + 4], y[s:s + 4]))

    def step():
        for (w1, b1, w2, b2, w3, b3), opt, xb, yb in groups:
            h = torch.sin(30 * torch.baddbmm(b1.unsqueeze(1), xb, w1.transpose(1, 2)))
            h = torch.sin(30 * torch.baddbmm(b2.unsqueeze(1), h, w2.transpose(1, 2)))
            out = torch.baddbmm(b3.unsqueeze(1), h, w3.transpose(1, 2))[..., 0]
            loss = (out - yb).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return step


def _one_at_a_time(K, N):
    x, y = _data(K, N)
    nets = []
    for i in range(K):
        torch.manual_seed(i)
        m = archs.build("siren")
        nets.append((m, torch.optim.Adam(m.parameters(), lr=1e-4)))

    def step():
        for i, (m, opt) in enumerate(nets):
            loss = (m(x[i])[..., 0] - y[i]).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return step


PROVIDERS = {"ours": lambda K, N: _ours("op", K, N),
             "ours, kernel fused (SirenStack)": lambda K, N: _ours("fused", K, N),
             "original: 4 at a time, bmm": _bmm4, "one at a time": _one_at_a_time}
GOALS = {"original: 4 at a time, bmm": 1.2}


@pytest.mark.parametrize("shape", SHAPES, ids=[f"{k}x{n}" for k, n in SHAPES])
@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_sdf_fit_step(benchmark, measure, provider, shape):
    K, N = shape
    benchmark.group = f"sdf fit {K}x{N}"
    benchmark.extra_info["shape_steps"] = K
    step = PROVIDERS[provider](K, N)
    measure(step, rounds=ROUNDS, provider=provider, goal=GOALS.get(provider), grad=True)
    _results[shape, provider] = benchmark.stats.stats.median


def test_sgemm(benchmark, measure):
    benchmark.group = "sgemm 2048^3"
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    measure(lambda: a @ b, rounds=10, provider="sgemm", role="bound")
    _results["sgemm"] = benchmark.stats.stats.median


def test_summary(capsys):
    if "sgemm" not in _results or not any(k[1] == "ours" for k in _results if k != "sgemm"):
        pytest.skip("run with the other benchmarks of this module")
    rate = 2 * 2048 ** 3 / _results["sgemm"]
    with capsys.disabled():
        print(f"\nsgemm: {rate / 1e9:.1f} GFLOP/s")
        for K, N in SHAPES:
            if ((K, N), "ours") not in _results:
                continue
            print(f"{K} networks x {N} points:")
            for name in PROVIDERS:
                t = _results.get(((K, N), name))
                if t is None:
                    continue
                flops = K * _flop_per_shape_step(N) / t
                print(f"  {name:<32} {K / t:7.1f} shape-steps/s  {flops / 1e9:6.1f} GFLOP/s  {flops / rate:5.1%} of "
                      f"sgemm  ours speedup {t / _results[(K, N), 'ours']:.2f}x")
