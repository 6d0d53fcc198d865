"""Training steps that never wait for the device, shown on CPU.

On CUDA a step that reads a value on the host (``float(loss)``, ``.item()``, ``.tolist()``) or copies
a host tensor from pageable memory (``.to('cuda')``) waits until the device has finished all queued
work. The NetSpace step loop (netspace_fast/space/train.py) keeps its losses on the device and reads
them once an epoch, and sends its draws through pinned memory without blocking; the SIREN fitter
(netspace_fast/sdf/fit.py) samples into pinned buffers sent without blocking, and its step reads
nothing. Counted here with patched ``Tensor`` methods: the host reads and copies of an epoch must not
grow with its number of steps (the optimizer's own step counters are CPU tensors on every device, and
are not counted), and the CUDA copies must be pinned and non-blocking (CUDA calls faked)."""

from __future__ import annotations

import collections
import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

READS = ("item", "__float__", "__int__", "__bool__", "tolist", "numpy")


class Counting:
    """Counts the host reads of tensors and ``Tensor.to`` calls to a device, by the file and function
    that made them (torch's own files excepted: the optimizer's step counters are CPU tensors)."""

    def __init__(self, monkeypatch) -> None:
        self.reads: collections.Counter = collections.Counter()
        self.copies: collections.Counter = collections.Counter()
        for name in READS + ("to",):
            orig = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, orig))

    def _wrap(self, name, orig):
        counter = self.copies if name == "to" else self.reads

        def counted(t, *args, **kwargs):
            code = sys._getframe(1).f_code
            to_device = name != "to" or "device" in kwargs or any(isinstance(a, (str, torch.device)) for a in args)
            if to_device and "/site-packages/torch/" not in code.co_filename:  # a .to(dtype) copies nothing over
                counter[(name, Path(code.co_filename).name, code.co_name)] += 1
            return orig(t, *args, **kwargs)
        return counted

    def clear(self) -> None:
        self.reads.clear()
        self.copies.clear()


# ------------------------------------------------------------------------------------------------
# NetSpace training


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    from netspace_fast.zoo import train_zoo

    path = tmp_path_factory.mktemp("zoo") / "z"
    train_zoo(path, "digits-tiny", progress=False)
    return path


def test_space_steps_read_nothing_and_copy_nothing_from_pageable_memory(tiny_zoo, tmp_path, monkeypatch):
    """One epoch of a Single run in 1 step and in 4 steps (image batches of 512 and 128): the same
    host reads and copies (the epoch's one read of its losses, validation, the checkpoint), none in
    the step loop itself; and the recorded losses are the numbers ``float()`` of each step gives."""
    from netspace_fast.space import presets as space_presets
    from netspace_fast.space import train as space_train

    base = space_presets.SPACE_PRESETS["digits-tiny-single"]
    counting = Counting(monkeypatch)
    seen = {}
    for batch in (512, 128):
        monkeypatch.setitem(space_presets.SPACE_PRESETS, "probe", dataclasses.replace(base, image_batch=batch,
                                                                                     epochs=1))
        counting.clear()
        space_train.train_space(tmp_path / f"run{batch}", tiny_zoo, "single", "probe", progress=False)
        seen[batch] = (dict(counting.reads), dict(counting.copies))
    assert seen[512] == seen[128], seen
    reads, copies = seen[128]
    assert not any(fn in ("_train_loop", "_terms") for _, _, fn in reads), reads
    assert not any(fn == "_train_loop" for _, _, fn in copies), copies  # every draw through _to_device
    assert reads.get(("tolist", "train.py", "_read_once")) == 1  # the epoch's one read of its losses
    history = json.loads((tmp_path / "run128" / "state.json").read_text())["history"]
    assert len(history) == 1 and isinstance(history[0]["loss"], float)


def test_read_once_gives_the_numbers_float_gives():
    from netspace_fast.space.train import _read_once

    g = torch.Generator().manual_seed(0)
    losses = [torch.randn((), generator=g) for _ in range(7)]
    terms = {"class_loss": [torch.randn((), generator=g) for _ in range(7)],
             "kd_mixture": [torch.randn((1,), generator=g).mean() for _ in range(7)]}
    got_losses, got_terms = _read_once(losses, terms)
    assert got_losses == [float(v) for v in losses]
    assert got_terms == {k: [float(v) for v in vs] for k, vs in terms.items()}
    assert sum(got_losses) / 7 == sum(float(v) for v in losses) / 7  # the epoch's mean, bit for bit


class _FakeTo:
    """``Tensor.pin_memory`` and ``Tensor.to`` toward a (fake) CUDA device: recorded, the tensor kept on
    the CPU."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[tuple] = []
        orig_to = torch.Tensor.to
        fake = self

        def pin_memory(t):
            fake.calls.append(("pin",))
            out = t.clone()
            out._netspace_pinned = True
            return out

        def to(t, *args, **kwargs):
            target = args[0] if args else kwargs.get("device")
            if isinstance(target, (str, torch.device)) and torch.device(target).type == "cuda":
                fake.calls.append(("to", getattr(t, "_netspace_pinned", False), kwargs.get("non_blocking", False)))
                return t
            return orig_to(t, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
        monkeypatch.setattr(torch.Tensor, "to", to)


def test_space_draws_go_to_cuda_pinned_and_non_blocking(monkeypatch):
    from netspace_fast.space.train import _to_device

    fake = _FakeTo(monkeypatch)
    idx = torch.randperm(10)
    out = _to_device(idx, torch.device("cuda", 0))
    assert torch.equal(out, idx)
    assert fake.calls == [("pin",), ("to", True, True)]
    assert _to_device(idx, torch.device("cpu")) is idx  # the CPU: nothing to copy


# ------------------------------------------------------------------------------------------------
# SIREN fitting


def _fitter(device="cpu"):
    from netspace_fast.sdf.fit import SirenFitter
    from netspace_fast.sdf.shapes import ProceduralChairs

    shapes = ProceduralChairs(3, seed=0, pool_size=400, heldout_size=100)
    return SirenFitter(shapes, [0, 1, 2], points=64, device=device)


def test_siren_steps_read_nothing_from_the_device(monkeypatch):
    fitter = _fitter()
    fitter.train_step()  # the first step makes Adam's state
    counting = Counting(monkeypatch)
    for _ in range(3):
        fitter.train_step()
    assert not counting.reads, counting.reads
    assert all(file != "fit.py" or fn == "batch" for _, file, fn in counting.copies), counting.copies


def test_siren_batches_are_the_per_network_draws(monkeypatch):
    """The batch sampled into one buffer each is what stacking each network's draws gave (the same
    generators, the same numbers)."""
    a, b = _fitter(), _fitter()
    x, y = a.batch()
    xs, ys = zip(*(b.shapes.sample(i, b.points, g) for i, g in zip(b.indices, b.gens)))
    assert torch.equal(x, torch.stack(xs)) and torch.equal(y, torch.stack(ys))
    assert x.is_contiguous() and y.is_contiguous() and x.shape == (3, 64, 3) and y.shape == (3, 64)


def test_siren_batches_go_to_cuda_pinned_and_non_blocking(monkeypatch):
    fitter = _fitter()
    fitter.device = torch.device("cuda", 0)
    pinned = []
    orig_empty = torch.empty

    def empty(*args, pin_memory=False, **kwargs):
        pinned.append(pin_memory)
        out = orig_empty(*args, **kwargs)
        out._netspace_pinned = pin_memory
        return out

    monkeypatch.setattr(torch, "empty", empty)
    fake = _FakeTo(monkeypatch)
    fitter.batch()
    assert pinned == [True, True]
    assert fake.calls == [("to", True, True), ("to", True, True)]
