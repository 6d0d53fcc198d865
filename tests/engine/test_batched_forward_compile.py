"""``batched_forward`` under ``torch.compile`` (README: the ops work under ``torch.compile``; the CPU
whole-network path is one autograd node built on them).

``torch.compile(fullgraph=True, backend=fake_checked_backend)`` (conftest.py: ``aot_eager`` that also
checks every native op's real outputs against its fake kernel's): the whole call, input checks,
layout choice, the CPU executor and its autograd node, traces into one graph (no graph break) and
gives eager's outputs and PRep / input gradients bit for bit (the same kernels run). The
per-network reference path (``backend="torch"``) is compiled too. The layer ops one by one, and
under Inductor: tests/ops/test_compile.py.
"""

from __future__ import annotations

import pytest
import torch

import netspace_fast as nf
from netspace_fast import archs
from netspace_fast.engine import batched_forward
from conftest import fake_checked_backend

pytestmark = [pytest.mark.skipif(not nf.backends()["cpu"]["compiled"], reason="native CPU kernels not built"),
              pytest.mark.usefixtures("fresh_dynamo")]


def _preps(name: str, B: int = 2, width: int = 1024) -> torch.Tensor:
    models = [archs.build(name, batchnorm=False) for _ in range(B)]
    return nf.pack_preps(models, width).detach().requires_grad_()


CASES = [("lenetlike", True, None), ("lenetlike", False, None), ("resnet8", True, None), ("resnet8", False, None),
         ("siren", True, None), ("resnet8", True, "torch")]


@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
@pytest.mark.parametrize("name,shared,backend", CASES,
                         ids=[f"{n}-{'shared' if s else 'per_network'}-{b or 'auto'}" for n, s, b in CASES])
def test_batched_forward_compiles_fullgraph(name, shared, backend):
    spec = archs.spec(name, "cifar10")
    B, N = 2, 2
    preps = _preps(name, B)
    x = torch.randn((N, *spec.input_shape) if shared else (B, N, *spec.input_shape), requires_grad=True)

    def f(p, xx):
        return batched_forward(spec, p, xx, backend=backend) * 1.0

    got = torch.compile(f, fullgraph=True, backend=fake_checked_backend)(preps, x)
    want = f(preps, x)
    assert got.shape == (B, N, spec.num_outputs)
    assert torch.equal(got, want)
    g = torch.randn_like(want)
    for i, (a, b) in enumerate(zip(torch.autograd.grad(got, (preps, x), g), torch.autograd.grad(want, (preps, x), g))):
        assert torch.equal(a, b), ("preps", "x")[i]
    if backend is None:  # the CPU path's linear layers: the native op, forward and backward, fake-checked
        assert {"netspace_fast::batched_linear", "netspace_fast::batched_linear_backward"} <= set(
            fake_checked_backend.checked), fake_checked_backend.checked


@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
def test_batched_forward_compiled_inside_a_larger_graph():
    """A NetSpace-like step: PReps computed by ops before batched_forward (so the PRep gradient flows
    further back), a loss after it, all in one compiled graph."""
    spec = archs.spec("lenetlike", "cifar10")
    base = _preps("lenetlike").detach()
    scale = torch.tensor(1.5, requires_grad=True)
    x = torch.randn(3, 3, 32, 32)
    target = torch.tensor([1, 2, 3])

    def step(s):
        logits = batched_forward(spec, base * s, x)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 10), target.repeat(2))

    got = torch.compile(step, fullgraph=True, backend=fake_checked_backend)(scale)
    want = step(scale)
    assert torch.equal(got, want)
    assert torch.equal(torch.autograd.grad(got, scale)[0], torch.autograd.grad(want, scale)[0])
