"""Batched zoo training beyond one machine: sharding a zoo job over torchrun ranks, one manifest; progress and
TensorBoard scalars of the trainer."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from netspace_fast.zoo import job as zoo_job
from netspace_fast.zoo import PRESETS, Preset, shard, train_zoo
from netspace_fast.zoo.format import Zoo

TINY_SINGLE = Preset("test: single protocol, 3 runs, 2 snapshots", "digits", "single", (("lenetlike", 0, 0, 0),),
                     epochs=3, batch_size=64, lr=1e-4, runs=3, snapshots=(1, 3), crop_pad=0, flip=False)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 300), st.integers(1, 17))
def test_shard_blocks_partition_the_instances(n, world):
    blocks = [shard(n, r, world) for r in range(world)]
    assert [i for b in blocks for i in b] == list(range(n))  # every instance once, in order
    sizes = [len(b) for b in blocks]
    assert max(sizes) - min(sizes) <= 1


def _same_zoo(a: Zoo, b: Zoo) -> None:
    """Same ids, splits, metadata; each instance's weights are the same network's.

    Not "equal to float32 rounding": the two zoos train with different batching (one job of B
    networks vs jobs of fewer), so their sums round differently (by kernel, CPU and ``MKL_CBWR``
    code path), and SGD amplifies rounding chaotically over the steps (LeakyReLU signs near 0
    flip): under ``MKL_CBWR=COMPATIBLE`` instance 0 of digits-tiny ends ~1e-3 apart after 51 steps,
    ~3e-8 under ``AVX2``. No error analysis bounds that growth. What the bookkeeping must get right
    (ids, seeds, data order, which instance a rank trains) decides WHICH network an instance is:
    so each instance must be far closer to its counterpart than to any other instance of the same
    architecture: max|a_i - b_i| <= 0.05 * max|a_i - a_j| per tensor (different seeds start ~ the
    init scale apart), and its accuracies within 0.02."""
    ea = {e["id"]: e for e in a.instances()}
    eb = {e["id"]: e for e in b.instances()}
    assert sorted(ea) == sorted(eb)
    assert {s: sorted(v) for s, v in a.splits.items()} == {s: sorted(v) for s, v in b.splits.items()}
    for i in ea:
        for key in ("architecture", "dataset", "protocol", "seed", "epoch", "split", "num_params"):
            assert ea[i][key] == eb[i][key], (i, key)
        for key in ("train_acc", "val_acc", "test_acc"):
            assert abs(ea[i][key] - eb[i][key]) <= 0.02, (i, key, ea[i][key], eb[i][key])
        sa, sb = a.state_dict(i), b.state_dict(i)
        others = [j for j in ea if j != i and ea[j]["architecture"] == ea[i]["architecture"]]
        assert others, "needs two instances of an architecture to tell them apart"
        for k in sa:
            if not sa[k].is_floating_point():
                assert torch.equal(sa[k], sb[k]), (i, k)
                continue
            apart = min((sa[k].float() - a.state_dict(j)[k].float()).abs().max().item() for j in others)
            diff = (sa[k].float() - sb[k].float()).abs().max().item()
            assert diff <= 0.05 * apart, (i, k, diff, apart)
    assert a.verify() == [] and b.verify() == []


@pytest.mark.parametrize("preset", ["digits-tiny", "tiny-single"])
def test_ranks_shard_the_job_into_one_manifest(tmp_path, monkeypatch, preset):
    """The rank bookkeeping (blocks, ids, seeds, splits, checkpoints), ranks run one after the other."""
    monkeypatch.setitem(PRESETS, "tiny-single", TINY_SINGLE)
    train_zoo(tmp_path / "one", preset, progress=False)
    for rank in range(2):
        monkeypatch.setattr(zoo_job, "setup_distributed", lambda device, r=rank: (r, 2, device, None, False))
        train_zoo(tmp_path / "two", preset, progress=False)
    _same_zoo(Zoo.open(tmp_path / "one"), Zoo.open(tmp_path / "two"))
    ckpts = sorted(p.name for p in (tmp_path / "two" / ".checkpoints").iterdir())
    B = TINY_SINGLE.runs if preset == "tiny-single" else 2
    assert ckpts == sorted([f"0-lenetlike-0-{B // 2}.pt", f"0-lenetlike-{B // 2}-{B}.pt"])


def test_torchrun_two_ranks_gloo(tmp_path):
    """The real thing: torchrun --nproc_per_node=2 on the CLI command, gloo on CPU, one zoo."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "netspace_fast.cli", "zoo", "train", "--preset", "digits-tiny", "--out", str(tmp_path / "two")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("done: zoo written") == 1  # reported once, not once per rank
    ckpts = sorted(p.name for p in (tmp_path / "two" / ".checkpoints").iterdir())
    assert ckpts == ["0-lenetlike-0-1.pt", "0-lenetlike-1-2.pt"]  # each rank trained its own instance
    train_zoo(tmp_path / "one", "digits-tiny", progress=False)
    _same_zoo(Zoo.open(tmp_path / "one"), Zoo.open(tmp_path / "two"))


class _FakeWriter:
    """Stands in for torch.utils.tensorboard.SummaryWriter (the tensorboard package is optional)."""

    made: list["_FakeWriter"] = []

    def __init__(self, logdir):
        self.logdir, self.scalars, self.hists, self.closed = logdir, [], [], False
        _FakeWriter.made.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def add_histogram(self, tag, values, step):
        self.hists.append((tag, tuple(values.shape), step))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_tensorboard_scalars_per_epoch(tmp_path, monkeypatch):
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = _FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    _FakeWriter.made.clear()
    train_zoo(tmp_path / "z", "digits-tiny", progress=False, tensorboard=tmp_path / "tb")
    (w,) = _FakeWriter.made
    assert w.logdir == str(tmp_path / "tb") and w.closed
    assert [s for t, _, s in w.scalars if t == "lenetlike/loss"] == [1, 2, 3]
    assert [s for t, _, s in w.scalars if t == "lenetlike/best_val_acc"] == [1, 2, 3]
    assert all(0.0 <= v <= 1.0 for t, v, _ in w.scalars if t.endswith("acc"))
    assert w.hists == [("lenetlike/instance_loss", (2,), e) for e in (1, 2, 3)]


def test_tensorboard_missing_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ValueError, match="tensorboard.*needs the 'tensorboard' package"):
        train_zoo(tmp_path / "z", "digits-tiny", progress=False, tensorboard=tmp_path / "tb")
    assert not (tmp_path / "z").exists()  # refused before any work


def test_progress_lines_when_not_a_terminal(tmp_path, capsys):
    train_zoo(tmp_path / "z", "digits-tiny", progress=True)
    err = capsys.readouterr().err
    assert "lenetlike: epoch 1/3 loss" in err and "lenetlike: epoch 3/3 loss" in err
    assert "2 instances written" in err


def test_progress_bar_on_a_terminal(tmp_path, monkeypatch):
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    err = Tty()
    monkeypatch.setattr(sys, "stderr", err)
    train_zoo(tmp_path / "z", "digits-tiny", progress=True)
    text = err.getvalue()
    assert "lenetlike (2 instances)" in text and "3/3" in text
    assert "epoch/s" in text or "s/epoch" in text
    assert "lenetlike: epoch 1/3" not in text  # the bar replaces the per-epoch lines


# the torchrun kill test (one rank killed inside a write, every rank resumes, another number of ranks
# refused): tests/zoo/test_zoo_kill.py


def test_one_rank_under_torchrun_makes_its_process_group(monkeypatch):
    """torchrun with one rank (a one-GPU machine) still makes the process group (gloo here, NCCL on
    CUDA), so its barriers are real collectives; a plain process makes none."""
    import socket

    import torch.distributed as dist

    from netspace_fast.zoo.distributed import setup_distributed

    for k in ("WORLD_SIZE", "RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(k, raising=False)
    assert setup_distributed("cpu") == (0, 1, "cpu", None, False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    for k, v in (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                 ("MASTER_PORT", str(port))):
        monkeypatch.setenv(k, v)
    rank, world, device, d, owned = setup_distributed("cpu")
    try:
        assert (rank, world, device, owned) == (0, 1, "cpu", True) and d is dist and dist.is_initialized()
        assert dist.get_backend() == "gloo"
        dist.barrier()
    finally:
        dist.destroy_process_group()
