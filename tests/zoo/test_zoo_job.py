"""train_zoo (batched zoo training): presets, resume after SIGKILL, config guard, acceptance on digits."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from netspace_fast.zoo import PRESETS, train_zoo
from netspace_fast.zoo.format import Zoo

RUN = ("import sys; from netspace_fast.zoo import train_zoo; "
       "train_zoo(sys.argv[1], sys.argv[2], progress=True)")


def run_job(out, preset, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-c", RUN, str(out), preset], capture_output=True, text=True,
                          timeout=600, env=env)


def test_resume_after_sigkill(tmp_path):
    out = tmp_path / "zoo"
    first = run_job(out, "digits-tiny", {"NETSPACE_TEST_SIGKILL_AFTER_EPOCH": "2"})
    assert first.returncode == -9  # killed, mid-job
    assert not Zoo.open(out).instances()  # multi protocol: nothing final yet
    second = run_job(out, "digits-tiny")
    assert second.returncode == 0, second.stderr
    assert "resuming after epoch 2" in second.stderr
    assert "epoch 1/" not in second.stderr and "epoch 3/3" in second.stderr  # only the missing epoch ran
    zoo = Zoo.open(out)
    ids = [e["id"] for e in zoo.instances()]
    assert sorted(ids) == ["lenetlike-000", "lenetlike-001"] and len(set(ids)) == len(ids)
    assert zoo.verify() == []
    # a third run finds everything done and changes nothing
    before = (out / "manifest.json").read_bytes()
    third = run_job(out, "digits-tiny")
    assert third.returncode == 0 and "already in the zoo" in third.stderr
    assert (out / "manifest.json").read_bytes() == before


def test_other_config_into_same_dir_is_refused(tmp_path):
    train_zoo(tmp_path / "z", "digits-tiny", progress=False)
    with pytest.raises(ValueError, match="config"):
        train_zoo(tmp_path / "z", "digits-tiny", seed=1, progress=False)


def test_unknown_preset(tmp_path):
    with pytest.raises(ValueError, match="preset: unknown 'nope'"):
        train_zoo(tmp_path, "nope")


def test_paper_presets_follow_the_method():
    multi = PRESETS["cifar10-multi"]
    assert multi.epochs == 300 and multi.milestones == (150, 180, 210) and multi.lr == 0.05
    assert [(a, n) for a, n, _, _ in multi.archs] == [("lenetlike", 60), ("vanillacnn", 50), ("resnet8", 60),
                                                      ("resnet32", 100), ("resnet56", 1)]
    assert [(a, n) for a, n, _, _ in PRESETS["cifar10-unseen"].archs] == [("lenetlike", 40), ("resnet32", 80),
                                                                          ("resnet56", 1)]
    # every multi preset trains the ResNet56 teacher its NetSpace run distills from, into the same zoo
    for name, p in PRESETS.items():
        if p.protocol == "multi" and len(p.archs) > 1:
            assert p.archs[-1] == ("resnet56", 1, 0, 0), name
    single = PRESETS["cifar10-single"]
    assert single.lr == 1e-4 and single.snapshots[:3] == (1, 2, 3) and single.snapshots[-1] == 600
    assert 100 in single.snapshots and 102 in single.snapshots and 550 in single.snapshots


def test_digits_presets_of_netspace():
    """The NetSpace zoos: digits-multi holds the four architectures (ClassId order) and a ResNet56 teacher;
    digits-unseen trains LeNetLike + ResNet32 only, all four in val and test."""
    multi = PRESETS["digits-multi"]
    assert [a for a, *_ in multi.archs] == ["lenetlike", "vanillacnn", "resnet8", "resnet32", "resnet56"]
    assert all(tr > 0 and va > 0 and te > 0 for _, tr, va, te in multi.archs[:4])
    assert multi.archs[4][1:] == (1, 0, 0) and multi.protocol == "multi"
    unseen = {a: (tr, va, te) for a, tr, va, te in PRESETS["digits-unseen"].archs}
    assert {a for a, (tr, _, _) in unseen.items() if tr} == {"lenetlike", "resnet32", "resnet56"}
    assert all(unseen[a][1] > 0 and unseen[a][2] > 0 for a in ("lenetlike", "vanillacnn", "resnet8", "resnet32"))


def test_digits_lenet_acceptance(tmp_path):
    """Batched zoo training's acceptance: digits multi-protocol LeNetLike instances reach >= 95% test accuracy."""
    train_zoo(tmp_path / "m", "digits-lenet", progress=False)
    zoo = Zoo.open(tmp_path / "m")
    accs = [e["test_acc"] for e in zoo.instances()]
    assert len(accs) == 8 and {k: len(v) for k, v in zoo.splits.items()} == {"train": 4, "val": 2, "test": 2}
    assert min(accs) >= 0.95, accs
    assert zoo.verify() == []
    # PRep packing and folding, batched evaluation and zoo training end to end: the zoo's folded PReps,
    # evaluated by batched_forward, reproduce the test accuracy recorded for each instance (BN-form
    # models, eval mode)
    import torch

    from netspace_fast import archs, batched_forward, data

    x, y = data.tensors("digits", "test")
    for split in ("train", "val", "test"):
        entries = zoo.instances(split, "lenetlike")
        preps = zoo.preps(split, "lenetlike", width=1024)
        with torch.no_grad():
            logits = batched_forward(archs.spec("lenetlike", "digits"), preps, x)
        acc = (logits.argmax(-1) == y).float().mean(1)
        for e, a in zip(entries, acc.tolist()):
            assert abs(a - e["test_acc"]) <= 1.5 / len(y), (e["id"], a, e["test_acc"])  # at most one flipped image


def test_digits_single_acceptance(tmp_path):
    """NetSpace Single's zoo: its instances, and its test split alone, span from below 50% to above 90%."""
    train_zoo(tmp_path / "s", "digits-single", progress=False)
    zoo = Zoo.open(tmp_path / "s")
    accs = [e["test_acc"] for e in zoo.instances()]
    assert len(accs) == PRESETS["digits-single"].runs * len(PRESETS["digits-single"].snapshots)
    assert min(accs) < 0.5 and max(accs) > 0.9, (min(accs), max(accs))
    assert all(len(v) > 0 for v in zoo.splits.values())
    # NetSpace: the test split, on which it is judged, holds >= 10 networks spanning < 50% to > 90%
    test = [e["test_acc"] for e in zoo.instances("test")]
    assert len(test) >= 10 and min(test) < 0.5 and max(test) > 0.9, test


def test_images_per_epoch_and_eval_images(tmp_path, monkeypatch):
    """images_per_epoch: each instance's epoch is a fresh random subset of that many training images;
    eval_images: train/val accuracies on fixed subsets of that size (test: all of it); both recorded
    in the zoo's config."""
    import dataclasses

    from netspace_fast.zoo import job as zoo_job, loop as zoo_loop
    from netspace_fast.zoo.format import Zoo
    from netspace_fast.zoo.presets import PRESETS

    p = dataclasses.replace(PRESETS["digits-tiny"], epochs=2, images_per_epoch=100, eval_images=50)
    monkeypatch.setitem(PRESETS, "digits-tiny-sub", p)
    steps, evals = [], []
    real_train, real_eval = zoo_loop.train_epoch, zoo_job.evaluate

    def spy_train(net, opt, x, y, order, bs, *a, limit=0):
        steps.append(limit)
        return real_train(net, opt, x, y, order, bs, *a, limit=limit)

    monkeypatch.setattr(zoo_job, "train_epoch", spy_train)
    monkeypatch.setattr(zoo_job, "evaluate", lambda net, x, y, *a: evals.append(len(y)) or real_eval(net, x, y, *a))
    train_zoo(tmp_path / "z", "digits-tiny-sub", progress=False)
    assert steps == [100, 100]
    assert evals == [50, 50, 50, 50, 359]  # best-on-val each epoch, then train / val subsets and all of test
    z = Zoo.open(tmp_path / "z")
    assert z.config["images_per_epoch"] == 100 and z.config["eval_images"] == 50
    assert "images_per_epoch" not in {**PRESETS["digits-tiny"].config()}  # unset: older zoos' configs unchanged


def test_train_epoch_limit_draws_a_subset():
    import torch

    from netspace_fast import archs
    from netspace_fast.zoo.loop import DataOrder, make_optimizer, train_epoch
    from netspace_fast.zoo.model import BatchedZooNet

    torch.manual_seed(0)
    net = BatchedZooNet([archs.build("lenetlike", "digits") for _ in range(2)])
    x, y = torch.randn(40, 3, 32, 32), torch.randint(0, 10, (40,))
    calls = []
    real = net.forward
    net.forward = lambda xb, grouped=False: calls.append(xb.shape[0]) or real(xb, grouped=grouped)
    train_epoch(net, make_optimizer(net, "single", 1e-3), x, y, DataOrder.from_seeds([0, 1]), 8, limit=20)
    assert calls == [8, 8, 4]  # 20 images a step of 8 at a time, not 40
