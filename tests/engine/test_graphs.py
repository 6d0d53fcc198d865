"""The CUDA-graph bookkeeping of the GPU program (netspace_fast.engine.graphs), on CPU: under
NETSPACE_GPU_REHEARSAL=1 the GraphCache does on CPU tensors everything it does on CUDA except
``torch.cuda.graph`` itself (static inputs and outputs, signatures, capture after the second
sighting, generations, eviction, BatchNorm statistics restored after the warm-up, fresh outputs and
gradients), so these tests fail if any of that is wrong. Plain torch functions: no Triton here.
A CUDA-only test checks a real capture against eager on a GPU."""

from __future__ import annotations

import pytest
import torch

from conftest import requires_cuda
from netspace_fast import settings
from netspace_fast.engine import graphs
from netspace_fast.engine.graphs import GraphCache


@pytest.fixture
def rehearsal(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # what the rehearsal demands (no Triton runs in this file)
    monkeypatch.setenv("NETSPACE_GPU_REHEARSAL", "1")
    monkeypatch.delenv("NETSPACE_CUDA_GRAPHS", raising=False)


class _Net(torch.nn.Module):
    """Reads a parameter, updates a buffer in place (like BatchNorm's statistics)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(5, 3))
        self.register_buffer("seen", torch.zeros(()))

    def forward(self, x):
        self.seen.add_(1)
        return torch.tanh(x @ self.w.t())


def _call(cache, net, x):
    return cache.call(("net", net.training), net, (x,), params=tuple(net.parameters()), buffers=tuple(net.buffers()))


def test_replays_match_eager_forward_and_gradients(rehearsal):
    net, ref = _Net(), _Net()
    ref.load_state_dict(net.state_dict())
    cache = GraphCache()
    for step in range(4):
        x = torch.randn(4, 3, requires_grad=True)
        xr = x.detach().clone().requires_grad_()
        out, want = _call(cache, net, x), ref(xr)
        assert torch.equal(out, want)
        g = torch.randn_like(out)
        out.backward(g)
        want.backward(g)
        assert torch.equal(x.grad, xr.grad) and torch.equal(net.w.grad, ref.w.grad)
        with torch.no_grad():  # an optimizer step in place: the next replay reads the new weights
            net.w.sub_(0.1 * net.w.grad)
            ref.w.sub_(0.1 * ref.w.grad)
        net.w.grad = ref.w.grad = None
    # first sighting eager, captured on the second, replayed from then on; the buffer counted each
    # call once (the warm-up and capture passes were undone)
    assert cache.stats() == {"captured": 1, "replayed": 3, "eager": 1, "recomputed": 0, "evicted": 0, "failed": 0,
                             "graphs": 1}
    assert net.seen.item() == ref.seen.item() == 4


def test_outputs_and_gradients_are_fresh_tensors(rehearsal):
    net = _Net()
    cache = GraphCache()
    x1, x2 = torch.randn(4, 3), torch.randn(4, 3)
    _call(cache, net, x1)  # eager
    a = _call(cache, net, x1)
    a_kept = a.detach().clone()
    a.sum().backward()
    g1 = net.w.grad
    g1_kept = g1.clone()
    net.w.grad = None
    b = _call(cache, net, x2)
    (2 * b).sum().backward()
    assert torch.equal(a, a_kept) and not torch.equal(a, b)  # the second replay did not overwrite the first output
    assert torch.equal(g1, g1_kept) and net.w.grad is not g1  # nor the gradient handed out before


def test_two_forwards_then_two_backwards(rehearsal):
    net, ref = _Net(), _Net()
    ref.load_state_dict(net.state_dict())
    cache = GraphCache()
    _call(cache, net, torch.randn(4, 3, requires_grad=True))  # seen once: the next ones replay
    xs = [torch.randn(4, 3, requires_grad=True) for _ in range(2)]
    outs = [_call(cache, net, x) for x in xs]
    for o in reversed(outs):  # the first forward's backward comes after the second forward
        o.sum().backward()
    refs = [x.detach().clone().requires_grad_() for x in xs]
    sum(ref(x).sum() for x in refs).backward()
    for x, r in zip(xs, refs):
        assert torch.allclose(x.grad, r.grad, rtol=1e-6, atol=1e-7)
    assert torch.allclose(net.w.grad, ref.w.grad, rtol=1e-5, atol=1e-6)
    assert cache.stats()["recomputed"] == 1


def test_signatures_shapes_grad_mode_and_eviction(rehearsal):
    net = _Net()
    cache = GraphCache(max_graphs=1)
    for n in (4, 4, 4, 6, 6):
        _call(cache, net, torch.randn(n, 3))
    s = cache.stats()
    assert (s["captured"], s["evicted"], s["graphs"]) == (2, 1, 1)  # the 6-row shape replaced the 4-row one
    with torch.no_grad():
        for _ in range(3):
            out = _call(cache, net, torch.randn(6, 3))
    assert not out.requires_grad and cache.stats()["captured"] == 3  # no grad mode: its own, forward-only capture
    net.eval()  # the caller's key (here: training or not) is part of the signature
    _call(cache, net, torch.randn(6, 3))
    assert cache.stats()["eager"] == 4  # the first sighting of each of the four signatures
    cache.clear()
    assert cache.stats()["graphs"] == 0


def test_settings_that_change_the_program_are_part_of_the_signature(rehearsal, monkeypatch):
    net = _Net()
    cache = GraphCache()
    for _ in range(2):
        _call(cache, net, torch.randn(4, 3))
    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "grouped")
    _call(cache, net, torch.randn(4, 3))
    assert cache.stats()["eager"] == 2  # a new signature: seen once, eager


def test_a_failed_capture_warns_and_stays_eager(rehearsal):
    calls = []

    def fn(x):
        calls.append(1)
        if len(calls) == 2:  # the first warm-up pass
            raise RuntimeError("operation not permitted when stream is capturing")
        return x * 2

    cache = GraphCache()
    x = torch.randn(3)
    assert torch.equal(cache.call("f", fn, (x,)), 2 * x)
    with pytest.warns(RuntimeWarning, match="capturing a CUDA graph of 'f' failed"):
        assert torch.equal(cache.call("f", fn, (x,)), 2 * x)
    assert torch.equal(cache.call("f", fn, (x,)), 2 * x)
    s = cache.stats()
    assert (s["failed"], s["graphs"], s["captured"]) == (1, 0, 0)


def test_off_without_the_rehearsal_or_with_graphs_off(monkeypatch):
    monkeypatch.delenv("NETSPACE_GPU_REHEARSAL", raising=False)
    net, cache = _Net(), GraphCache()
    for _ in range(3):
        _call(cache, net, torch.randn(4, 3))
    assert cache.stats()["replayed"] == 0 and cache.stats()["eager"] == 0  # CPU program: not even counted
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("NETSPACE_GPU_REHEARSAL", "1")
    monkeypatch.setenv("NETSPACE_CUDA_GRAPHS", "0")
    for _ in range(3):
        _call(cache, net, torch.randn(4, 3))
    assert cache.stats()["captured"] == 0


def test_rehearsal_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("NETSPACE_GPU_REHEARSAL", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="NETSPACE_GPU_REHEARSAL=1.*TRITON_INTERPRET=1"):
        settings.gpu_rehearsal()
    monkeypatch.setenv("NETSPACE_GPU_REHEARSAL", "yes")
    with pytest.raises(ValueError, match="NETSPACE_GPU_REHEARSAL: expected 0 or 1"):
        settings.gpu_rehearsal()
    with pytest.raises(ValueError, match="max_graphs: expected a positive int"):
        GraphCache(max_graphs=0)


@requires_cuda
@pytest.mark.gpu
def test_cuda_capture_matches_eager(monkeypatch):
    monkeypatch.delenv("NETSPACE_CUDA_GRAPHS", raising=False)
    net, ref = _Net().cuda(), _Net().cuda()
    ref.load_state_dict(net.state_dict())
    cache = GraphCache()
    for _ in range(4):
        x = torch.randn(8, 3, device="cuda")
        out, want = _call(cache, net, x), ref(x)
        out.sum().backward()
        want.sum().backward()
        torch.testing.assert_close(out, want)
        torch.testing.assert_close(net.w.grad, ref.w.grad)
        net.w.grad = ref.w.grad = None
    assert cache.stats()["captured"] == 1 and cache.stats()["replayed"] == 3
    assert net.seen.item() == ref.seen.item() == 4
    assert graphs.WARMUP >= 1
