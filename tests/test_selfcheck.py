"""The PRep core self-check (netspace_fast/selfcheck.py, the first stage of `netspace demo`) as a smoke test at its smallest setting: one network per
architecture (``--batch 1``; the default width). It runs as a command
(``python -m netspace_fast.selfcheck``) and in-process; it must pass its own checks, print its table and
write its PRep image, a valid PNG of ResNet8's PRep. Its checks must be able to fail: a wrong
parameter count or a wrong batched evaluation turns the exit status to 1."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from netspace_fast import archs, selfcheck as demo

ARCHS = ("lenetlike", "vanillacnn", "resnet8", "resnet32", "resnet56")


def check_png(path) -> np.ndarray:
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        px = np.asarray(im.convert("RGBA"))
    # ResNet8's 77,706 folded parameters, near square: 279 x 279, the last 135 pixels transparent padding
    assert px.shape == (279, 279, 4)
    alpha = px.reshape(-1, 4)[:, 3]
    assert (alpha[:77706] == 255).all() and (alpha[77706:] == 0).all()
    assert len(np.unique(px.reshape(-1, 4)[:77706], axis=0)) > 100  # a picture, not a flat colour
    return px


def test_demo_command_smoke(tmp_path):
    """``python -m netspace_fast.demo --batch 1``: exit 0, every architecture in the table, the PNG."""
    out = tmp_path / "demo_out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "netspace_fast.selfcheck", "--out", str(out), "--batch", "1"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all checks passed" in r.stdout and "CHECK FAILED" not in r.stdout
    for name in ARCHS:
        assert f"\n{name} " in r.stdout, name
    assert "(1, 8, 10000)" in r.stdout  # the PRep batch of one LeNetLike at the default width
    png = out / "prep_resnet8_digits.png"
    assert f"PRep image: {png}" in r.stdout
    assert sorted(os.listdir(out)) == ["prep_resnet8_digits.png"]
    check_png(png)


def test_demo_main_in_process(tmp_path, capsys):
    """main() at width 1024 on cifar10: the image is the first network's PRep, whatever the width."""
    assert demo.main(["--out", str(tmp_path), "--batch", "1", "--width", "1024", "--dataset", "cifar10"]) == 0
    text = capsys.readouterr().out
    assert "all checks passed" in text and "(1, 76, 1024)" in text  # ResNet8: 77,706 values, 76 rows of 1024
    check_png(tmp_path / "prep_resnet8_cifar10.png")


def test_demo_checks_can_fail(tmp_path, capsys, monkeypatch):
    """A parameter count that disagrees with Table I, or a batched evaluation that is off by 1%,
    makes the demo report CHECK FAILED and exit 1."""
    monkeypatch.setitem(demo.TABLE_I, "lenetlike", 62_007)
    assert demo.main(["--out", str(tmp_path), "--batch", "1", "--width", "1024"]) == 1
    assert "CHECK FAILED" in capsys.readouterr().out
    monkeypatch.setitem(demo.TABLE_I, "lenetlike", 62_006)
    real = demo.batched_forward
    monkeypatch.setattr(demo, "batched_forward", lambda spec, preps, x: real(spec, preps, x) * 1.01)
    assert demo.main(["--out", str(tmp_path), "--batch", "1", "--width", "1024"]) == 1
    assert "CHECK FAILED" in capsys.readouterr().out


def test_demo_bad_arguments(tmp_path):
    with pytest.raises(SystemExit) as e:
        demo.main(["--out", str(tmp_path), "--batch", "0"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        demo.main(["--out", str(tmp_path), "--dataset", "svhn"])


def test_demo_randomize_bn_is_not_identity():
    """The demo's stand-in for training gives BN statistics that make folding non-trivial."""
    m = archs.build("resnet8")
    demo._randomize_bn(m, torch.Generator().manual_seed(0))
    assert not m.training
    bn = m.get_submodule("layer1.0.bn1")
    assert not torch.equal(bn.running_var, torch.ones_like(bn.running_var))
    assert not torch.equal(bn.weight, torch.ones_like(bn.weight))
