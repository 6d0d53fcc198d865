"""Image geometry (netspace_fast/data.py ``ImageGeometry``): a zoo's own channels, size and normalization,
recorded in its config; ``data.tensors(..., geometry=...)`` makes the dataset's images that way. The
dataset's own geometry gives exactly the images it always gave."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from netspace_fast import data
from public_zoos import write_fmnist


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    root = tmp_path_factory.mktemp("fm")
    arrays = write_fmnist(root, n_train=30, n_test=12)
    return root, torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float() / 255


def test_default_geometry_is_the_datasets_own(fmnist):
    root, _ = fmnist
    for name, kw in (("fashion-mnist", {"root": root}), ("digits", {})):
        for split in ("train", "test"):
            x, y = data.tensors(name, split, seed=1, **kw)
            gx, gy = data.tensors(name, split, seed=1, geometry=data.default_geometry(name), **kw)
            assert torch.equal(x, gx) and torch.equal(y, gy) and x.shape[1:] == (3, 32, 32)


def test_grayscale_28_and_their_normalization(fmnist):
    root, raw = fmnist
    g = data.ImageGeometry(1, 28, (0.1307,), (0.3081,))
    x, _ = data.tensors("fashion-mnist", "test", root, geometry=g)
    assert x.shape == (12, 1, 28, 28) and torch.allclose(x[:, 0], (raw - 0.1307) / 0.3081)
    x, _ = data.tensors("fashion-mnist", "test", root, geometry=data.ImageGeometry(3, 32, (0.5,) * 3, (0.5,) * 3))
    assert torch.allclose(x, (F.pad(raw, (2, 2, 2, 2)).unsqueeze(1).expand(-1, 3, -1, -1) - 0.5) / 0.5)


def test_zoo_tensors_follow_the_zoos_config(fmnist):
    root, _ = fmnist
    own, _ = data.zoo_tensors({"seed": 0}, "fashion-mnist", "test", root)  # a zoo of ours: the dataset's geometry
    assert torch.equal(own, data.tensors("fashion-mnist", "test", root)[0])
    g = data.ImageGeometry(1, 28, (0.5,), (0.5,))
    theirs, _ = data.zoo_tensors({"geometry": g.to_json()}, "fashion-mnist", "test", root)
    assert torch.equal(theirs, data.tensors("fashion-mnist", "test", root, geometry=g)[0])


def test_colour_made_gray_and_resized():
    x3, _ = data.tensors("digits", "test", geometry=data.ImageGeometry(3, 32, (0.0,) * 3, (1.0,) * 3))
    x1, _ = data.tensors("digits", "test", geometry=data.ImageGeometry(1, 32, (0.0,), (1.0,)))
    assert torch.allclose(x1[:, 0], x3.mean(1))  # grayscale: the mean of the channels
    small, _ = data.tensors("digits", "test", geometry=data.ImageGeometry(1, 28, (0.5,), (0.5,)))
    want = F.interpolate(x1, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
    assert small.shape[1:] == (1, 28, 28) and torch.allclose(small, (want - 0.5) / 0.5)


def test_geometry_records_and_refusals():
    g = data.ImageGeometry(1, 28, (0.5,), (0.5,))
    assert data.ImageGeometry.from_json(g.to_json()) == g
    assert data.geometry_of({"geometry": g.to_json()}) == g and data.geometry_of({"seed": 1}) is None
    with pytest.raises(ValueError, match=r"zoo config geometry: std must be 1 positive finite numbers"):
        data.geometry_of({"geometry": {**g.to_json(), "std": [0.0]}})
    with pytest.raises(ValueError, match=r"zoo config geometry: expected an object with exactly the keys"):
        data.geometry_of({"geometry": {"channels": 1}})
    with pytest.raises(ValueError, match=r"geometry: channels must be 1 or 3, got 2"):
        data.ImageGeometry(2, 28, (0.5,) * 2, (0.5,) * 2)
    with pytest.raises(ValueError, match=r"geometry: mean must be 3 finite numbers \(one per channel\)"):
        data.ImageGeometry(3, 28, (0.5,), (0.5,) * 3)
    with pytest.raises(TypeError, match="geometry: expected an ImageGeometry"):
        data.tensors("digits", "test", geometry=g.to_json())
    with pytest.raises(ValueError, match="geometry: images of another geometry than the dataset's are not made for "
                                         "'tinyimagenet'"):
        data.tensors("tinyimagenet", "test", geometry=g)
