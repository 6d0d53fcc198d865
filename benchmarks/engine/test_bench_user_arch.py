"""A user architecture on the general batched engine: forward + backward into the PReps of 32
instances of a depthwise-separable CNN (BatchNorm folded, ReLU, adaptive pooling), CPU.

Providers, same run: ours (`batched_forward`: the general engine, chunks of networks), the
per-network loop (`batched_forward_reference`: unpack views, run each BN-free network, stack) and
`torch.func.vmap` over `functional_call` of the BN-free module with the stacked parameters. Goals
(issue, CPU): at least the loop's speed (>= 1x) and >= 1.5x vmap. Scenarios: N = 128 images (8 MB
of activations a network: chunks of one network) and N = 16 (1 MB: chunks of eight).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import netspace_fast as nf
from netspace_fast import archs
from test_bench_batched_forward import STEPS, step_loop  # the same three providers as the built-ins

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from dsconv import depthwise_separable  # noqa: E402  (the user's module, examples/dsconv.py)

ROUNDS = 5
B = 32
SCENARIOS = {"depthwise-separable B=32 N=128": 128, "depthwise-separable B=32 N=16": 16}
GOALS = {"loop": 1.0, "vmap": 1.5}


_cache: dict = {}


def setup(n: int):
    if n not in _cache:
        torch.manual_seed(0)
        spec = archs.spec_from_module(depthwise_separable(), torch.randn(2, 3, 32, 32), name="dsconv",
                                      dataset="cifar10")
        nets = []
        for _ in range(B):
            net = archs.SpecNet(spec)
            net.load_state_dict(depthwise_separable().state_dict(), strict=True)
            nets.append(net.eval())
        with torch.no_grad():
            preps = nf.pack_preps(nets, 10_000)
        _cache[n] = (spec, preps, torch.randn(n, 3, 32, 32))
    return _cache[n]




@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("provider", list(STEPS))
def test_user_arch_step(benchmark, measure, scenario, provider):
    benchmark.group = scenario
    spec, preps, x = setup(SCENARIOS[scenario])
    assert not spec.fast  # the general engine
    grad = measure(lambda: STEPS[provider](spec, preps, x), rounds=ROUNDS, provider=provider,
                   goal=GOALS.get(provider), grad=True)
    ref = step_loop(spec, preps, x)
    assert ((grad - ref).abs().max() / ref.abs().max()).item() <= 1e-3, f"{provider}: gradient differs from the loop's"
