"""The zoo job's resume checkpoints (netspace_fast/zoo/job.py): read with
``torch.load(..., weights_only=True)``, so a zoo folder from someone else cannot run code on resume,
while our own checkpoints (both protocols: SGD + MultiStepLR, Adam; generator states) still resume."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
import torch

from netspace_fast.zoo import job as zoo_job
from netspace_fast.zoo import PRESETS, Preset, train_zoo
from netspace_fast.zoo.format import Zoo

TINY_SINGLE = Preset("test: single protocol, 2 runs, 2 snapshots", "digits", "single", (("lenetlike", 0, 0, 0),),
                     epochs=2, batch_size=64, lr=1e-4, runs=2, snapshots=(1, 2), crop_pad=0, flip=False)


class _Planted:
    """Unpickling this creates ``path``: what a malicious checkpoint could do instead."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("fmt", ["torch.save", "pickle"])
def test_planted_checkpoint_is_refused_and_runs_nothing(tmp_path, fmt):
    out = tmp_path / "zoo"
    marker = tmp_path / "code-ran"
    ckpt = out / ".checkpoints" / "0-lenetlike.pt"  # job 0 of digits-tiny, one process
    ckpt.parent.mkdir(parents=True)
    state = {"net": _Planted(marker), "epoch": 1}
    if fmt == "torch.save":
        buf = io.BytesIO()
        torch.save(state, buf)
        ckpt.write_bytes(buf.getvalue())
    else:
        ckpt.write_bytes(pickle.dumps(state, protocol=2))
    with pytest.raises(ValueError) as info:
        train_zoo(out, "digits-tiny", progress=False)
    msg = str(info.value)
    assert str(ckpt) in msg and "weights_only=True" in msg and "\n" not in msg
    assert "GLOBAL" in msg or "Unsupported" in msg  # torch's reason, without its advice to trust the file
    assert "trusted source" not in msg
    assert not marker.exists()


def test_checkpoint_without_the_job_state_is_refused(tmp_path):
    out = tmp_path / "zoo"
    ckpt = out / ".checkpoints" / "0-lenetlike.pt"
    ckpt.parent.mkdir(parents=True)
    buf = io.BytesIO()
    torch.save({"epoch": 1}, buf)
    ckpt.write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match=r"checkpoint .*0-lenetlike\.pt.*expected a dict with keys"):
        train_zoo(out, "digits-tiny", progress=False)


class _Killed(Exception):
    pass


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("preset,arch", [("digits-tiny", None), ("tiny-single", None),
                                         ("digits-tiny", "my_vgg:vgg_gelu")],
                         ids=["multi", "single", "user-architecture"])
def test_resume_reads_our_checkpoints(tmp_path, monkeypatch, capsys, preset, arch):
    """Interrupted after epoch 1's checkpoint and rerun: resumes from it (weights_only load of the
    model, optimizer, scheduler and generator states) and ends with the uninterrupted run's zoo. A
    user architecture (examples/my_vgg.py) runs on the general engine: its stacked parameters,
    BatchNorm statistics and optimizer state resume the same way."""
    kw = {} if arch is None else {"arch": arch}
    if arch is not None:
        monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setitem(PRESETS, "tiny-single", TINY_SINGLE)
    train_zoo(tmp_path / "whole", preset, progress=False, **kw)

    def kill_after_first(epoch: int) -> None:
        if epoch == 1:
            raise _Killed

    original = zoo_job.after_checkpoint
    monkeypatch.setattr(zoo_job, "after_checkpoint", kill_after_first)
    with pytest.raises(_Killed):
        train_zoo(tmp_path / "resumed", preset, progress=False, **kw)
    monkeypatch.setattr(zoo_job, "after_checkpoint", original)
    capsys.readouterr()
    train_zoo(tmp_path / "resumed", preset, progress=True, **kw)
    assert "resuming after epoch 1" in capsys.readouterr().err
    whole, resumed = Zoo.open(tmp_path / "whole"), Zoo.open(tmp_path / "resumed")
    ids = sorted(e["id"] for e in whole.instances())
    assert ids and sorted(e["id"] for e in resumed.instances()) == ids
    for i in ids:
        a, b = whole.state_dict(i), resumed.state_dict(i)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), i
