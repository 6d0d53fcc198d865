"""Memory of the GPU program, shown on CPU: a call without gradient drops each activation after its
last use (so a no-grad CUDA graph's pool holds a few layers, not the whole network), the general
engine's chunks are sized by device (a CPU cache bound on CPU, the device's memory on CUDA), and a
finished zoo job's net (with its graph cache) is freed by reference counting alone, without the
cycle collector.

Peak memory is counted by a dispatch mode that adds up the bytes of the live storages made by the
ops inside the call (each storage counted once, taken off when it is freed): exact and
deterministic on any machine, unlike the process's resident size. Tests marked ``triton`` run the
rehearsed GPU program (``NETSPACE_GPU_REHEARSAL=1``, ``TRITON_INTERPRET=1``)."""

from __future__ import annotations

import gc
import os
import sys
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from netspace_fast import archs, batched_forward
from netspace_fast.engine import general
from netspace_fast.engine.executor import last_uses
from netspace_fast.engine.general import chunk_bytes, chunk_sizes, value_numels
from netspace_fast.prep.layout import prep_shape

needs_interpreter = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                       reason="the rehearsal runs Triton kernels on CPU: needs TRITON_INTERPRET=1")


class PeakBytes(TorchDispatchMode):
    """Live and peak bytes of the storages that ops make while the mode is on."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def _track(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        key, n = st.data_ptr(), st.nbytes()
        if n == 0 or key in self.seen:
            return
        self.seen.add(key)
        self.live += n
        self.peak = max(self.peak, self.live)

        def freed(key=key, n=n):
            self.live -= n
            self.seen.discard(key)
        weakref.finalize(st, freed)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                self._track(t)
        return out


def _peak(fn) -> tuple[int, torch.Tensor]:
    with PeakBytes() as m:
        out = fn()
        kept = out.detach().clone()
        del out
    return m.peak, kept


def _preps(spec, B, width=1024, seed=0):
    g = torch.Generator().manual_seed(seed)
    H, _ = prep_shape(spec.num_params, width)
    return 0.2 * torch.randn(B, H, width, generator=g)


def _activation_bytes(spec, B, N) -> tuple[int, int]:
    """(bytes of every value of the B networks on N images, the input excepted: what a recorded
    forward keeps; bytes of the largest of them)."""
    numels = value_numels(spec)[1:]
    return sum(numels) * B * N * 4, max(numels) * B * N * 4


def _check_peaks(peak_rec: int, peak_free: int, total: int, largest: int, x: torch.Tensor) -> None:
    """The recorded call keeps every value; the no-grad call at most three of the largest's size at
    once (a step's input, its output, and a residual or the conv's result before its epilogue) and
    a copy of the input. The networks tested hold more than five times the largest value in all, so
    a call that kept its values would fail."""
    assert total >= 5 * largest
    assert peak_rec >= 0.9 * total, (peak_rec, total)
    assert peak_free <= 3 * largest + x.numel() * 4, (peak_free, largest, total)


# ------------------------------------------------------------------------------------------------
# the fast engine's GPU program (rehearsed)


@pytest.mark.triton
@needs_interpreter
@pytest.mark.parametrize("shared", [True, False])
def test_no_grad_call_drops_values_after_their_last_use(monkeypatch, shared):
    """2 ResNet8 on 64 CIFAR-sized images: the recorded call (a gradient wanted) keeps every activation
    (its peak is at least their sum); the no-grad call of the same program keeps a few at a time,
    with the same output bit for bit."""
    monkeypatch.setenv("NETSPACE_GPU_REHEARSAL", "1")
    monkeypatch.setenv("NETSPACE_CUDA_GRAPHS", "0")  # the call itself; graphs: the next test
    spec = archs.spec("resnet8", "cifar10")
    B, N = 2, 64
    preps = _preps(spec, B)
    x = torch.randn(*((N,) if shared else (B, N)), *spec.input_shape)
    total, largest = _activation_bytes(spec, B, N)
    peak_rec, out_rec = _peak(lambda: batched_forward(spec, preps.clone().requires_grad_(), x))
    with torch.no_grad():
        peak_free, out_free = _peak(lambda: batched_forward(spec, preps, x))
    assert torch.equal(out_free, out_rec)
    _check_peaks(peak_rec, peak_free, total, largest, x)


@pytest.mark.triton
@needs_interpreter
def test_no_grad_captures_replay_the_value_dropping_program(monkeypatch):
    """Under no_grad the engine's calls are captured (rehearsal) and replayed with the program that
    drops values, and their outputs equal the recorded program's."""
    from netspace_fast.engine import graphs

    monkeypatch.setenv("NETSPACE_GPU_REHEARSAL", "1")
    monkeypatch.delenv("NETSPACE_CUDA_GRAPHS", raising=False)
    spec = archs.spec("lenetlike", "digits")
    preps = _preps(spec, 3)
    graphs.ENGINE.clear()
    for call in range(3):
        x = torch.randn(8, *spec.input_shape, generator=torch.Generator().manual_seed(call))
        with torch.no_grad():
            got = batched_forward(spec, preps, x)
        want = batched_forward(spec, preps.clone().requires_grad_(), x)
        assert torch.equal(got, want.detach())
    s = graphs.ENGINE.stats()
    assert s["captured"] >= 1 and s["replayed"] >= 2
    graphs.ENGINE.clear()


def test_last_uses_keep_the_output_and_drop_every_other_value():
    spec = archs.spec("resnet8", "cifar10")
    from netspace_fast.engine.program import compile_program

    program = compile_program(spec)
    blocks = [(i, i + 1, False) for i in range(len(program))]
    dead = last_uses(program, blocks)
    out = program[-1][2]
    dropped = [v for d in dead for v in d]
    assert out not in dropped and len(dropped) == len(set(dropped))
    made = {0} | {step[2] for step in program}
    assert set(dropped) == made - {out}
    for k, d in enumerate(dead):  # nothing is dropped before a later block reads it
        for v in d:
            assert all(v not in (s[1], s[3]) for s in program[k + 1:])


# ------------------------------------------------------------------------------------------------
# the general engine (user architectures)


def _dsconv_spec():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    from dsconv import depthwise_separable

    return archs.spec_from_module(depthwise_separable().eval(), torch.zeros(1, 3, 32, 32))


def test_general_engine_no_grad_drops_values():
    """A user CNN of eight same-size ReLU convs (the general engine), 2 networks on 32 images: without
    gradient it keeps a few values at a time; the output is the recorded path's bit for bit."""
    from torch import nn

    layers = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()]
    for _ in range(7):
        layers += [nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()]
    module = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    spec = archs.spec_from_module(module, torch.zeros(1, 3, 16, 16))
    assert not spec.fast
    B, N = 2, 32
    preps = _preps(spec, B, width=256)
    x = torch.randn(N, 3, 16, 16)
    total, largest = _activation_bytes(spec, B, N)
    peak_rec, out_rec = _peak(lambda: batched_forward(spec, preps.clone().requires_grad_(), x))
    with torch.no_grad():
        peak_free, out_free = _peak(lambda: batched_forward(spec, preps, x))
    assert torch.equal(out_free, out_rec)
    _check_peaks(peak_rec, peak_free, total, largest, x)


def test_chunk_sizes_by_device(monkeypatch):
    """32 depthwise-separable CNNs at N = 128 (8 MiB a network at the first layer): on CPU the cache
    bound runs them one network a call; on a CUDA device (its memory faked: 80 GiB) as one grouped
    call; a small device bounds them by its memory."""
    spec = _dsconv_spec()
    assert chunk_sizes(spec, 32, 128, 4) == (1,) * 32 == chunk_sizes(spec, 32, 128, 4, torch.device("cpu"))
    memory = {0: 80 << 30, 1: 1 << 30}
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=memory[i]))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    general._cuda_total_memory.cache_clear()
    try:
        assert chunk_bytes("cuda:0") == (80 << 30) // general.CUDA_CHUNK_DIVISOR
        assert chunk_sizes(spec, 32, 128, 4, torch.device("cuda", 0)) == (32,)
        assert chunk_sizes(spec, 32, 128, 4, "cuda") == (32,)  # the current device
        # 1 GiB / 64 = 16 MiB: two networks a call, never fewer than on CPU
        assert chunk_sizes(spec, 32, 128, 4, torch.device("cuda", 1)) == (2,) * 16
    finally:
        general._cuda_total_memory.cache_clear()


# ------------------------------------------------------------------------------------------------
# zoo training: the net and its graphs freed without the cycle collector


@pytest.mark.triton
@needs_interpreter
def test_a_finished_zoo_job_is_freed_without_the_cycle_collector(monkeypatch):
    """Two LeNetLike trained a few steps with their calls captured (rehearsal): once the job lets go
    of the net and its optimizer, reference counting alone frees the net (and its graph cache with
    the captures' pools); the captured function holds the net weakly."""
    from netspace_fast import data
    from netspace_fast.zoo.loop import DataOrder, evaluate, make_optimizer, train_epoch
    from netspace_fast.zoo.model import BatchedZooNet

    monkeypatch.setenv("NETSPACE_GPU_REHEARSAL", "1")
    monkeypatch.delenv("NETSPACE_CUDA_GRAPHS", raising=False)
    x, y = data.tensors("digits", "train")
    x, y = x[:24], y[:24]
    torch.manual_seed(0)
    net = BatchedZooNet([archs.build("lenetlike", "digits") for _ in range(2)])
    opt = make_optimizer(net, "multi", 0.05)
    train_epoch(net, opt, x, y, DataOrder.from_seeds([0, 1]), batch_size=8)
    evaluate(net, x, y)
    assert net.graphs.stats()["captured"] >= 1
    ref = weakref.ref(net)
    gc.collect()
    gc.disable()
    try:
        del net, opt
        assert ref() is None, "the net outlived the job: a reference cycle keeps it (and its graphs)"
    finally:
        gc.enable()
