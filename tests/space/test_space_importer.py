"""``netspace import-checkpoint`` (netspace_fast/space/importer.py): checkpoints of the original NetSpace
code (written here as it writes them: a torch.save dict with 'epoch', 'best_score', '0', '1', '2')
become runs of ours, exactly, and everything else is refused with one clear error."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from netspace_fast.cli import cli
from netspace_fast.space import Decoder, Encoder, SpaceConfig
from netspace_fast.zoo import train_zoo


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    path = tmp_path_factory.mktemp("zoo") / "z"
    train_zoo(path, "digits-tiny", progress=False)
    return path


def _original(path, num_archs=0, height=8, width=10_000, mutate=None):
    torch.manual_seed(3)
    cfg = SpaceConfig.paper(height, width, num_archs=num_archs)
    enc, dec = Encoder(cfg), Decoder(cfg)
    opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()))
    ckpt = {"epoch": 417, "best_score": 0.0123, "0": enc.state_dict(), "1": dec.state_dict(), "2": opt.state_dict()}
    if mutate:
        mutate(ckpt)
    torch.save(ckpt, path)
    return enc, dec


def _invoke(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    return r.exit_code, r.output


def test_single_checkpoint_imports_exactly_and_evaluates(tiny_zoo, tmp_path):
    enc, dec = _original(tmp_path / "ckpt.pt")
    code, out = _invoke("import-checkpoint", tmp_path / "ckpt.pt", "--out", tmp_path / "run", "--arch", "lenetlike",
                        "--dataset", "digits", "--zoo", tiny_zoo)
    assert code == 0, out
    best = load_file(tmp_path / "run" / "best.safetensors")
    for k, v in enc.state_dict().items():
        assert torch.equal(best[f"encoder.{k}"], v)
    for k, v in dec.state_dict().items():
        assert torch.equal(best[f"decoder.{k}"], v)
    code, out = _invoke("eval", tmp_path / "run", "--split", "all")
    assert code == 0, out
    assert "weights of epoch 417" in out and out.count("lenetlike-00") == 2


def test_multi_checkpoint_needs_its_architectures(tmp_path):
    _original(tmp_path / "m.pt", num_archs=4, height=48)
    code, out = _invoke("import-checkpoint", tmp_path / "m.pt", "--out", tmp_path / "r", "--arch",
                        "lenetlike,vanillacnn,resnet8", "--dataset", "cifar10")
    assert code == 1 and "ClassId head has 4 architectures, got 3" in out
    code, out = _invoke("import-checkpoint", tmp_path / "m.pt", "--out", tmp_path / "r", "--arch",
                        "lenetlike,vanillacnn,resnet8,resnet32", "--dataset", "cifar10")
    assert code == 0, out
    code, out = _invoke("eval", tmp_path / "r")
    assert code == 1 and "names no zoo" in out


def _bad_bias(ckpt):
    ckpt["0"]["conv4.0.bias"] = torch.zeros(100)


def _extra_key(ckpt):
    ckpt["1"]["conv9.weight"] = torch.zeros(1)


class NotATensor:
    pass


def _object(ckpt):
    ckpt["3"] = NotATensor()


@pytest.mark.parametrize("mutate,match", [
    (_bad_bias, "does not fit the paper configuration"),
    (_extra_key, "does not fit the paper configuration"),
    (_object, "weights_only=True failed"),
    (lambda c: c.pop("1"), "expected the original's dict"),
])
def test_bad_checkpoints_are_refused(tmp_path, mutate, match):
    _original(tmp_path / "bad.pt", mutate=mutate)
    code, out = _invoke("import-checkpoint", tmp_path / "bad.pt", "--out", tmp_path / "r", "--arch", "lenetlike",
                        "--dataset", "digits")
    assert code == 1 and match in out and "Traceback" not in out
    assert not (tmp_path / "r" / "best.safetensors").exists()


def test_other_bad_arguments(tmp_path):
    _original(tmp_path / "c.pt")
    code, out = _invoke("import-checkpoint", tmp_path / "c.pt", "--out", tmp_path / "r", "--arch", "lenet",
                        "--dataset", "digits")
    assert code == 1 and "unknown architecture" in out
    code, out = _invoke("import-checkpoint", tmp_path / "nope.pt", "--out", tmp_path / "r", "--arch", "lenetlike",
                        "--dataset", "digits")
    assert code == 1 and "is not a file" in out
    code, out = _invoke("import-checkpoint", tmp_path / "c.pt", "--out", tmp_path / "r", "--arch", "lenetlike,resnet8",
                        "--dataset", "digits")
    assert code == 1 and "has one architecture" in out
    code, out = _invoke("import-checkpoint", tmp_path / "c.pt", "--out", tmp_path / "r", "--arch", "resnet32",
                        "--dataset", "digits")  # (8, 10000) PReps cannot hold a ResNet32
    assert code == 1 and "needs PReps of at least 48 rows" in out
