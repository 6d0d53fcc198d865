"""NetSpace training under torchrun (gloo on CPU, 2 real processes): both ranks end with identical
weights, and they match one process stepping on the same global meta-batches (Single: the meta-batch's
networks split over the ranks; Multi: the image batch split)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from netspace_fast import archs
from netspace_fast.zoo.format import init_zoo, write_instance


@pytest.fixture(scope="module")
def single_zoo(tmp_path_factory):
    """Untrained LeNetLikes (train: 4, val: 1), written with the zoo format's own writer: what the ranks
    must agree on does not depend on how well the zoo's networks were trained (a trained digits-single
    zoo took 30 s of the suite's time and changes nothing here)."""
    path = tmp_path_factory.mktemp("zoo") / "z"
    init_zoo(path, {"seed": 0})
    torch.manual_seed(0)
    for i, split in enumerate(["train"] * 4 + ["val"]):
        write_instance(path, archs.build("lenetlike", "digits").eval(), id=f"lenetlike-{i}", arch="lenetlike",
                       dataset="digits", protocol="single", seed=i, epoch=0,
                       acc={"train": None, "val": None, "test": None}, split=split)
    return path


@pytest.fixture(scope="module")
def multi_zoo(tmp_path_factory):
    """Two architectures to train (a LeNetLike and a ResNet: residual blocks and a downsampling shortcut),
    a val network and the ResNet56 teacher. ResNet8 rather than ResNet32: the same layer kinds and the
    same image split over the ranks, a third of the time (a ResNet32 was most of this test's 2.3 minutes)."""
    path = tmp_path_factory.mktemp("mzoo") / "z"
    init_zoo(path, {"seed": 0})
    torch.manual_seed(0)
    for i, (name, split) in enumerate([("lenetlike", "train"), ("resnet8", "train"), ("lenetlike", "val"),
                                       ("resnet56", "test")]):
        write_instance(path, archs.build(name, "digits").eval(), id=f"{name}-{i}", arch=name, dataset="digits",
                       protocol="multi", seed=i, epoch=0, acc={"train": None, "val": None, "test": None}, split=split)
    return path


def _run(cmd, env):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r.stderr


def _check(zoo, protocol, preset, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    args = ["train", protocol, "--zoo", str(zoo), "--preset", preset, "--epochs", "2", "--no-progress"]
    _run([sys.executable, "-m", "netspace_fast.cli", *args, "--out", str(tmp_path / "one")], env)
    err = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "netspace_fast.cli", *args, "--out", str(tmp_path / "two")], env)
    prints = dict(re.findall(r"rank (\d): weights sha256 ([0-9a-f]+)", err))
    assert set(prints) == {"0", "1"} and prints["0"] == prints["1"], err[-2000:]  # identical weights on both ranks
    a = load_file(tmp_path / "one" / "ckpt-00002.safetensors")
    b = load_file(tmp_path / "two" / "ckpt-00002.safetensors")
    assert a.keys() == b.keys()
    # ||a - b|| / ||a|| per tensor <= 2e-3: the ranks sum gradients in another order than one process
    # and evaluate other image counts per call (other oneDNN algorithms), and Adam divides by sqrt(v),
    # so an element whose gradient is ~0 can move by up to ~lr either way. Measured after 6 steps at
    # lr 1e-3: Single < 1e-4, Multi 6e-4 (decoder.conv4) on a trained digits-single zoo and with a ResNet32;
    # 1.4e-6 and 1.8e-5 (decoder.conv2) on the zoos above. A wrong split or weighting of the loss
    # changes the gradient by O(1) and the weights by ~1e-1 here.
    for k in a:
        if k.startswith(("encoder.", "decoder.")):
            err = ((a[k] - b[k]).double().norm() / a[k].double().norm().clamp_min(1e-12)).item()
            assert err <= 2e-3, (k, err)


def test_single_two_ranks_gloo(single_zoo, tmp_path):
    _check(single_zoo, "single", "digits-tiny-single", tmp_path)


def test_multi_two_ranks_gloo(multi_zoo, tmp_path):
    _check(multi_zoo, "multi", "digits-tiny-multi", tmp_path)


@pytest.mark.parametrize("protocol,world", [("single", 2), ("single", 4), ("single", 3), ("single", 6), ("multi", 2),
                                            ("multi", 3)])
def test_rank_losses_average_to_the_whole_step(protocol, world):
    """The data-parallel split itself, in one process and float64: the mean over the ranks of each
    rank's gradient (what the all-reduce computes) equals the gradient of the whole step, to 1e-9
    (Adam is blind to a wrong overall scale, so the weights of a 2-rank run could not show one).
    Single with 4 networks over 3 ranks: slices of unequal size; over 6 ranks: ranks without a network."""
    from netspace_fast import pack_preps
    from netspace_fast.prep import PRepLayout
    from netspace_fast.space import Decoder, Encoder, SpaceConfig
    from netspace_fast.space.train import rank_loss

    torch.manual_seed(5)
    names = ("lenetlike", "vanillacnn", "resnet8", "resnet32")
    specs = [archs.spec(n, "digits") for n in names]
    pick = ["lenetlike"] * 4 if protocol == "single" else ["lenetlike", "resnet32", "resnet8"]
    height = max(PRepLayout.for_spec(archs.spec(n, "digits"), 1024).height for n in pick)
    preps = torch.cat([pack_preps(archs.build(n, "digits", batchnorm=False), 1024, height).detach()
                       for n in pick]).double()
    class_ids = torch.tensor([names.index(n) for n in pick])
    cfg = SpaceConfig(height, 1024, embed=256, view=16, dec_a=8, dec_b=16, dec_c=8, prep_scale=30.0,
                      num_archs=4 if protocol == "multi" else 0)
    enc, dec = Encoder(cfg).double(), Decoder(cfg).double()
    with torch.no_grad():
        dec.scalelayer.scale.mul_(30)
    x, y = torch.randn(7, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (7,))
    teacher = torch.randn(7, 10, dtype=torch.float64)
    nets, idx = torch.arange(len(pick)), torch.tensor([6, 0, 3, 5, 1, 2, 4])
    params = list(enc.parameters()) + list(dec.parameters())

    def grads(rank, w):
        loss, _ = rank_loss(enc, dec, protocol, specs, preps, class_ids, nets, x, y, teacher, idx, rank, w)
        return torch.autograd.grad(loss, params, allow_unused=True)

    whole = grads(0, 1)
    per_rank = [grads(r, world) for r in range(world)]
    for i, g in enumerate(whole):
        if g is None:
            continue
        mean = sum(pr[i] if pr[i] is not None else torch.zeros_like(g) for pr in per_rank) / world
        assert ((mean - g).abs().max() / g.abs().max().clamp_min(1e-30)).item() <= 1e-9, i
