"""Batched functional evaluation, forward + backward into the PReps, shared input, CPU.

(i) B=8 ResNet8 cifar10, N=128; (ii) B=64 LeNetLike cifar10, N=128. Providers, same run:
ours (`batched_forward`, native C++), the per-network loop (the original code's way: unpack each
PRep into views, run the BN-free network, stack; `batched_forward_reference`), and
`torch.func.vmap` over `functional_call` with the stacked parameters. Goals (issue, CPU):
(i) >= 1.2x the loop and >= 2.5x vmap; (ii) >= 2x both. Also the machine's sgemm rate, so
GFLOP/s of each provider can be put next to it (FLOPs: forward MACs x 2 x 3 for fwd+bwd).
"""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, vmap

import netspace_fast as nf
from netspace_fast import archs
from netspace_fast.engine import batched_forward, batched_forward_reference

ROUNDS = 5
N = 128
SCENARIOS = {"(i) resnet8 B=8": ("resnet8", 8), "(ii) lenetlike B=64": ("lenetlike", 64)}
GOALS = {"(i) resnet8 B=8": {"loop": 1.2, "vmap": 2.5}, "(ii) lenetlike B=64": {"loop": 2.0, "vmap": 2.0}}


def forward_flops(spec, n: int) -> float:
    """FLOPs (2 x multiply-adds) of one forward pass of one network on n images."""
    from torch.utils.flop_counter import FlopCounterMode

    model = archs.build(spec.name, spec.dataset or "cifar10", batchnorm=False)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *spec.input_shape))
    return counter.get_total_flops() * n


_cache: dict = {}


def setup(scenario):
    if scenario not in _cache:
        name, B = SCENARIOS[scenario]
        torch.manual_seed(0)
        spec = archs.spec(name, "cifar10")
        models = [archs.build(name, "cifar10", batchnorm=False) for _ in range(B)]
        with torch.no_grad():
            preps = nf.pack_preps(models, 10_000)
        _cache[scenario] = (spec, preps, torch.randn(N, 3, 32, 32))
    return _cache[scenario]


def step_ours(spec, preps, x):
    p = preps.detach().requires_grad_()
    batched_forward(spec, p, x).sum().backward()
    return p.grad


def step_loop(spec, preps, x):
    p = preps.detach().requires_grad_()
    batched_forward_reference(spec, p, x).sum().backward()
    return p.grad


def step_vmap(spec, preps, x):
    p = preps.detach().requires_grad_()
    layout = nf.PRepLayout.for_spec(spec, preps.shape[2], preps.shape[1])
    model = archs.SpecNet(spec, batchnorm=False).to("meta")  # (built-in or user architecture alike)
    views = dict(nf.unpack_prep(p, layout))
    y = vmap(lambda params: functional_call(model, params, (x,)))(views)
    y.sum().backward()
    return p.grad


STEPS = {"ours": step_ours, "loop": step_loop, "vmap": step_vmap}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("provider", list(STEPS))
def test_batched_step(benchmark, measure, scenario, provider):
    benchmark.group = scenario
    spec, preps, x = setup(scenario)
    goal = GOALS[scenario].get(provider)
    benchmark.extra_info["gflop_per_step"] = 3 * forward_flops(spec, N) * preps.shape[0] / 1e9
    grad = measure(lambda: STEPS[provider](spec, preps, x), rounds=ROUNDS, provider=provider, goal=goal, grad=True)
    ref = step_loop(spec, preps, x)
    assert ((grad - ref).abs().max() / ref.abs().max()).item() <= 1e-3, f"{provider}: gradient differs from the loop's"


def test_sgemm_rate(benchmark):
    """The machine's single-precision matmul rate (2048^3), for the GFLOP/s comparison."""
    benchmark.group = "sgemm 2048"
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    benchmark.extra_info["gflop_per_step"] = 2 * 2048**3 / 1e9
    benchmark.pedantic(lambda: a @ b, rounds=5, warmup_rounds=1)
