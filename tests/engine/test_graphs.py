"""The CUDA-graph bookkeeping of the GPU program (netspace_fast.engine.graphs), on CPU: under
NETSPACE_GPU_REHEARSAL=1 the GraphCache does on CPU tensors everything it does on CUDA except
``torch.cuda.graph`` itself (static inputs and outputs, signatures, capture after the second
sighting, generations, eviction, BatchNorm statistics restored after the warm-up, fresh outputs and
gradients), so these tests fail if any of that is wrong. Plain torch functions: no Triton here.
A CUDA-only test checks a real capture against eager on a GPU."""

from __future__ import annotations

import collections
import contextlib

import pytest
import torch

from conftest import assert_prep_grad_close, rel_err, requires_cuda
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


def test_a_failed_capture_takes_no_place_and_is_never_retried(rehearsal):
    """A signature whose capture failed is remembered apart: it does not count toward ``max_graphs``
    (it evicts nothing, nothing evicts it) and is never captured again."""
    attempts = []

    def bad(x):
        attempts.append(1)
        if len(attempts) == 2:  # the capture's first warm-up pass
            raise RuntimeError("operation not permitted when stream is capturing")
        return x + 1

    cache = GraphCache(max_graphs=1)
    x = torch.randn(3)
    cache.call("bad", bad, (x,))
    with pytest.warns(RuntimeWarning, match="capturing a CUDA graph of 'bad' failed"):
        cache.call("bad", bad, (x,))
    net = _Net()
    for n in (4, 4, 5, 5):  # two captures in turn: the second evicts the first, never the failed signature
        _call(cache, net, torch.randn(n, 3))
    s = cache.stats()
    assert (s["captured"], s["evicted"], s["failed"], s["graphs"]) == (2, 1, 1, 1)
    tried = len(attempts)
    for _ in range(3):
        assert torch.equal(cache.call("bad", bad, (x,)), x + 1)
    assert len(attempts) == tried + 3  # one eager pass a call: no capture attempted again
    assert cache.stats()["failed"] == 1


class _FakeCuda:
    """The torch.cuda calls of a capture and its replays, faked on CPU: each records which device was
    current (``torch.cuda.device`` contexts) when it ran, so a test sees where kernels would go."""

    def __init__(self, monkeypatch, current: int = 0):
        self.current = current
        self.events: list[tuple] = []
        fake = self

        class Device:
            def __init__(self, device):
                self.index = torch.device(device).index

            def __enter__(self):
                self.prev, fake.current = fake.current, self.index

            def __exit__(self, *exc):
                fake.current = self.prev

        class Stream:
            def __init__(self):
                fake.events.append(("stream", fake.current))

            def wait_stream(self, other):
                pass

        class Graph:
            def __init__(self):
                self.pool_token = None

            def pool(self):
                return self.pool_token

            def replay(self):
                fake.events.append(("replay", fake.current))

        @contextlib.contextmanager
        def graph(g, pool=None):
            g.pool_token = pool if pool is not None else object()
            fake.events.append(("capture", fake.current, pool))
            yield

        def pool_handle():
            fake.events.append(("pool", fake.current))
            return object()

        monkeypatch.setattr(torch.cuda, "device", Device)
        monkeypatch.setattr(torch.cuda, "Stream", Stream)
        monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: Stream.__new__(Stream))
        monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
        monkeypatch.setattr(torch.cuda, "graph", graph)
        monkeypatch.setattr(torch.cuda, "graph_pool_handle", pool_handle)


def test_capture_and_replays_run_on_the_arguments_device(monkeypatch):
    """Arguments on cuda:1 while cuda:0 is current: the warm-up stream, the capture (and what it runs),
    the forward and the backward replays all happen with cuda:1 current, and cuda:0 is current again
    after each. Without the guard the kernels would go to cuda:0 and the graph would be empty."""
    fake = _FakeCuda(monkeypatch, current=0)
    dev = torch.device("cuda", 1)
    ran_on = []
    w = torch.randn(5, 3, requires_grad=True)

    def fn(x):
        ran_on.append(fake.current)
        return torch.tanh(x @ w.t())

    x = torch.randn(4, 3, requires_grad=True)
    cap = graphs._Captured(fn, (x,), (w,), (), {}, dev)
    assert fake.current == 0 and ran_on and set(ran_on) == {1}
    out = graphs._Replay.apply(cap, collections.Counter(), x, w)
    assert fake.current == 0
    out.sum().backward()
    assert fake.current == 0 and w.grad is not None
    assert [e for e in fake.events if e[0] != "capture"] == [("stream", 1), ("replay", 1), ("replay", 1)]
    captures = [e for e in fake.events if e[0] == "capture"]
    assert [c[1] for c in captures] == [1, 1]  # the forward and the backward graph, both on cuda:1


def test_no_grad_captures_share_one_pool_per_device(monkeypatch):
    """Captures without gradient go into one memory pool per device (made on that device); a forward
    + backward capture keeps a private pool that its backward shares."""
    fake = _FakeCuda(monkeypatch, current=0)
    pools: dict = {}
    w = torch.randn(5, 3)
    fn = lambda x: torch.tanh(x @ w.t())  # noqa: E731
    with torch.no_grad():
        a = graphs._Captured(fn, (torch.randn(4, 3),), (), (), pools, torch.device("cuda", 1))
        b = graphs._Captured(fn, (torch.randn(6, 3),), (), (), pools, torch.device("cuda", 1))
        c = graphs._Captured(fn, (torch.randn(4, 3),), (), (), pools, torch.device("cuda", 0))
    assert [e for e in fake.events if e[0] == "pool"] == [("pool", 1), ("pool", 0)]
    assert a.fwd.pool() is b.fwd.pool() is pools[torch.device("cuda", 1)]
    assert c.fwd.pool() is pools[torch.device("cuda", 0)] is not a.fwd.pool()
    wg = torch.randn(5, 3, requires_grad=True)
    g = graphs._Captured(lambda x: torch.tanh(x @ wg.t()), (torch.randn(4, 3),), (wg,), (), pools,
                         torch.device("cuda", 1))
    fwd, bwd = [e for e in fake.events if e[0] == "capture"][-2:]
    assert fwd[2] is None and g.fwd.pool() is not a.fwd.pool()  # its own pool...
    assert bwd[2] is g.fwd.pool()  # ...shared with its backward


def test_no_grad_replays_return_fresh_copies(rehearsal):
    """A no-grad replay's output is cloned at once: a later replay (of any capture of the shared pool)
    leaves it as it was."""
    w = torch.randn(5, 3)
    cache = GraphCache()
    fn = lambda x: torch.tanh(x @ w.t())  # noqa: E731
    with torch.no_grad():
        xs = [torch.randn(4, 3) for _ in range(3)] + [torch.randn(6, 3) for _ in range(3)]
        outs = [cache.call("f", fn, (x,)) for x in xs]
    for x, o in zip(xs, outs):
        assert torch.equal(o, fn(x))
    assert cache.stats()["captured"] == 2 and cache.stats()["replayed"] == 4


def _engine_calls(spec, preps, xs, graphs_on, monkeypatch, grad=True):
    from netspace_fast import batched_forward

    if graphs_on:
        monkeypatch.delenv("NETSPACE_CUDA_GRAPHS", raising=False)
    else:
        monkeypatch.setenv("NETSPACE_CUDA_GRAPHS", "0")
    graphs.ENGINE.clear()
    results = []
    for call, x in enumerate(xs):
        p = preps.detach().clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            out = batched_forward(spec, p, x)
            if grad:
                out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(call)).to(out.device))
        results.append((out.detach(), p.grad))
    return results, graphs.ENGINE.stats()


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("grad", [True, False])
def test_cuda_engine_call_captured_matches_eager(monkeypatch, grad):
    """A real engine call (8 ResNet8 of the GPU program, fresh inputs each call): eager, captured, then
    replayed twice, against the same calls without graphs (outputs and PRep gradients). A stale graph
    (an empty capture, a replay reading old inputs) would return the capture-time output."""
    from netspace_fast import archs
    from netspace_fast.prep.layout import PRepLayout, prep_shape

    spec = archs.spec("resnet8", "cifar10")
    H, _ = prep_shape(spec.num_params, 1024)
    g = torch.Generator().manual_seed(0)
    preps = (0.2 * torch.randn(8, H, 1024, generator=g)).cuda()
    xs = [torch.randn(16, *spec.input_shape, generator=g).cuda() for _ in range(4)]
    want, _ = _engine_calls(spec, preps, xs, False, monkeypatch, grad)
    got, stats = _engine_calls(spec, preps, xs, True, monkeypatch, grad)
    assert (stats["eager"], stats["captured"], stats["replayed"]) == (1, 1, 3)
    layout = PRepLayout.for_spec(spec, preps.shape[2], preps.shape[1])
    for (o1, p1), (o0, p0) in zip(got, want):
        assert rel_err(o1, o0) <= 1e-4
        if grad:
            assert_prep_grad_close(p1, p0, layout)
    assert not torch.equal(got[2][0], got[3][0])  # fresh inputs, fresh outputs


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_capture_on_another_device_than_the_current(monkeypatch):
    monkeypatch.delenv("NETSPACE_CUDA_GRAPHS", raising=False)
    torch.cuda.set_device(0)
    net, ref = _Net().to("cuda:1"), _Net().to("cuda:1")
    ref.load_state_dict(net.state_dict())
    cache = GraphCache()
    for _ in range(4):
        x = torch.randn(8, 3, device="cuda:1")
        out, want = _call(cache, net, x), ref(x)
        torch.testing.assert_close(out, want)
    assert cache.stats()["replayed"] == 3 and torch.cuda.current_device() == 0
