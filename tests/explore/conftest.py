"""Fixtures of the exploration tests: small zoos written with the zoo format's own writer (untrained
networks: the commands' mechanics, not the space's quality) and one-epoch NetSpace runs on them. The
digits splits are cut to their first 96 images (``data.tensors`` patched for the whole session) so
that every command evaluates its networks in a fraction of a second."""

from __future__ import annotations

import pytest
import torch

from netspace_fast import archs, data
from netspace_fast.space.train import train_space
from netspace_fast.zoo.format import init_zoo, write_instance

N_IMAGES = 96
_real_tensors = data.tensors


def _few_tensors(name, split, root=None, seed=0):
    x, y = _real_tensors(name, split, root=root, seed=seed)
    return x[:N_IMAGES], y[:N_IMAGES]


@pytest.fixture(scope="package", autouse=True)
def _small_splits():
    """Package scope: undone when the exploration tests end (the other tests see full splits). The zoo
    and run fixtures below request it and share its scope, so they are built on the cut splits whatever
    test runs first (a session-scoped fixture would be set up before it, on the full splits)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(data, "tensors", _few_tensors)
    yield
    mp.undo()


def _trained_lenet() -> torch.nn.Module:
    """A LeNetLike trained briefly (40 full-batch Adam steps on the first training images): clearly
    better than chance, with peaked logits (a teacher worth distilling from)."""
    model = archs.build("lenetlike", "digits")
    x, y = _few_tensors("digits", "train")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(40):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def _write(path, items, trained=()):
    init_zoo(path, {"seed": 0})
    torch.manual_seed(0)
    for i, (name, split) in enumerate(items):
        model = _trained_lenet() if i in trained else archs.build(name, "digits").eval()
        write_instance(path, model, id=f"{name}-{i}", arch=name, dataset="digits", protocol="multi", seed=i,
                       epoch=0, acc={"train": None, "val": None, "test": None}, split=split)
    return path


@pytest.fixture(scope="package")
def single_zoo(_small_splits, tmp_path_factory):
    """Five LeNetLike (train 3, val 1, test 1); lenetlike-2 briefly trained, the others untrained."""
    items = [("lenetlike", s) for s in ("train", "train", "train", "val", "test")]
    return _write(tmp_path_factory.mktemp("szoo") / "z", items, trained=(2,))


@pytest.fixture(scope="package")
def multi_zoo(_small_splits, tmp_path_factory):
    """An unseen-style zoo: LeNetLike and ResNet32 to train (and validate), VanillaCNN and ResNet8 only
    in test, and a ResNet56 teacher."""
    items = [("lenetlike", "train"), ("resnet32", "train"), ("lenetlike", "val"), ("resnet32", "val"),
             ("vanillacnn", "test"), ("resnet8", "test"), ("resnet56", "train")]
    return _write(tmp_path_factory.mktemp("mzoo") / "z", items)


@pytest.fixture(scope="package")
def single_run(single_zoo, tmp_path_factory):
    """40 epochs (one step each on the 96 images): enough for decoded networks that move with the
    embedding (after one step they hardly do, and latent optimization has nothing to follow)."""
    run = tmp_path_factory.mktemp("srun") / "run"
    train_space(run, single_zoo, "single", "digits-tiny-single", epochs=40, progress=False)
    return run


@pytest.fixture(scope="package")
def multi_run(multi_zoo, tmp_path_factory):
    run = tmp_path_factory.mktemp("mrun") / "run"
    train_space(run, multi_zoo, "multi", "digits-tiny-multi", epochs=1, progress=False)
    return run
