"""Tests of ``netspace_fast.data``: digits (embedded), CIFAR-10 and Tiny-ImageNet loaders on tiny fake
folders written in the real on-disk formats (nothing is downloaded)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from netspace_fast import archs, data

MEAN = torch.tensor(data.MEAN).view(3, 1, 1)
STD = torch.tensor(data.STD).view(3, 1, 1)


def _unnormalize(x: torch.Tensor) -> torch.Tensor:
    return x * STD + MEAN


# ----------------------------------------------------------------------------------------------
# generic


def test_datasets_and_info_match_archs():
    assert set(data.DATASETS) == set(archs.DATASETS)
    for name in data.DATASETS:
        assert data.dataset_info(name) == archs.DATASETS[name]


def test_unknown_name():
    for fn in (lambda: data.load_splits("svhn"), lambda: data.dataset_info("svhn"),
               lambda: data.tensors("svhn", "train")):  # fmt: skip
        with pytest.raises(ValueError) as e:
            fn()
        msg = str(e.value)
        assert "name" in msg and "svhn" in msg
        assert all(n in msg for n in data.DATASETS)


def test_unknown_split():
    with pytest.raises(ValueError, match="split"):
        data.tensors("digits", "holdout")


@pytest.mark.parametrize("name", ["cifar10", "tinyimagenet"])
def test_root_required(name):
    with pytest.raises(ValueError, match="root"):
        data.load_splits(name)


# ----------------------------------------------------------------------------------------------
# digits


def _index_sets(splits):
    return {s: set(int(i) for i in ds.indices) for s, ds in splits.items()}


def test_digits_sizes_disjoint_covering():
    splits = data.load_splits("digits")
    assert {s: len(d) for s, d in splits.items()} == {"train": 1079, "val": 359, "test": 359}
    idx = _index_sets(splits)
    assert not (idx["train"] & idx["val"]) and not (idx["train"] & idx["test"])
    assert not (idx["val"] & idx["test"])
    assert idx["train"] | idx["val"] | idx["test"] == set(range(1797))


def test_digits_determinism():
    a, b = _index_sets(data.load_splits("digits", seed=3)), _index_sets(data.load_splits("digits", seed=3))
    c = _index_sets(data.load_splits("digits", seed=4))
    assert a == b
    assert a["train"] != c["train"] and a["test"] != c["test"]
    x1, y1 = data.tensors("digits", "val", seed=3)
    x2, y2 = data.tensors("digits", "val", seed=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_digits_items_shapes_labels_normalization():
    splits = data.load_splits("digits", augment=False)
    for ds in splits.values():
        x, y = ds[0]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert isinstance(y, int) and 0 <= y <= 9
    x, y = data.tensors("digits", "train")
    assert x.shape == (1079, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (1079,) and y.dtype == torch.int64
    assert set(y.tolist()) == set(range(10))
    u = _unnormalize(x)
    assert u.min() >= -1e-5 and u.max() <= 1 + 1e-5 and u.max() > 0.9
    # the three channels are replicas of one gray image
    assert torch.allclose(u[:, 0], u[:, 1], atol=1e-5) and torch.allclose(u[:, 0], u[:, 2], atol=1e-5)
    # tensors() equals the non-augmented items
    for i in (0, 17, 1078):
        xi, yi = splits["train"][i]
        assert torch.allclose(xi, x[i], atol=1e-6) and yi == int(y[i])


def test_digits_augmentation_only_on_train():
    splits = data.load_splits("digits", augment=True)
    for s in ("val", "test"):
        a, b = splits[s][5][0], splits[s][5][0]
        assert torch.equal(a, b)
    draws = [splits["train"][5][0] for _ in range(8)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    assert all(d.shape == (3, 32, 32) for d in draws)
    plain = data.load_splits("digits", augment=False)["train"]
    assert torch.equal(plain[5][0], plain[5][0])


# ----------------------------------------------------------------------------------------------
# CIFAR-10: tiny fake set in the real python pickle batch format


PER_BATCH, N_TEST = 6, 7


class _Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` with Python 2's ``str`` opcodes (SHORT_BINSTRING / BINSTRING), as the
    official CIFAR-10 batches (pickled by Python 2's cPickle) do: loaded with ``encoding="bytes"``
    the keys are b'data', b'labels' (the documented format), with ``encoding="latin1"`` (what
    torchvision uses) they are 'data', 'labels'."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + n.to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _dump_py2(obj, path):
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def _write_cifar(root, rng):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        n = N_TEST if name == "test_batch" else PER_BATCH
        entry = {
            b"batch_label": f"fake batch {k}".encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{k}_{i}.png".encode() for i in range(n)],
        }
        _dump_py2(entry, folder / name)
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_cases_per_batch": PER_BATCH,
            b"num_vis": 3072}  # fmt: skip
    _dump_py2(meta, folder / "batches.meta")
    return folder


def _read_batch(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def test_cifar10_fake(tmp_path):
    folder = _write_cifar(tmp_path, np.random.default_rng(0))
    splits = data.load_splits("cifar10", tmp_path, seed=1, augment=True)
    n_train = 5 * PER_BATCH
    assert len(splits["train"]) == n_train - n_train // 5 == 24
    assert len(splits["val"]) == n_train // 5 == 6
    assert len(splits["test"]) == N_TEST
    tr, va = set(splits["train"].indices.tolist()), set(splits["val"].indices.tolist())
    assert not (tr & va) and tr | va == set(range(n_train))
    # determinism
    again = data.load_splits("cifar10", tmp_path, seed=1)
    other = data.load_splits("cifar10", tmp_path, seed=2)
    assert np.array_equal(again["val"].indices, splits["val"].indices)
    assert not np.array_equal(other["val"].indices, splits["val"].indices)

    # items equal the raw pixels, normalized; labels match the batch files
    batches = [_read_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    raw = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
    labels = sum((b[b"labels"] for b in batches), [])
    x, y = data.tensors("cifar10", "val", tmp_path, seed=1)
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    vi = splits["val"].indices
    assert torch.allclose(_unnormalize(x), torch.from_numpy(raw[vi]).float() / 255, atol=1e-5)
    assert y.tolist() == [labels[i] for i in vi]
    for j in range(len(splits["val"])):
        xj, yj = splits["val"][j]
        assert isinstance(yj, int) and torch.allclose(xj, x[j], atol=1e-6)

    test = _read_batch(folder / "test_batch")
    xt, yt = data.tensors("cifar10", "test", tmp_path)
    raw_test = torch.from_numpy(test[b"data"].reshape(-1, 3, 32, 32)).float() / 255
    assert torch.allclose(_unnormalize(xt), raw_test, atol=1e-5)
    assert yt.tolist() == test[b"labels"]

    # augmentation only on train
    assert torch.equal(splits["test"][0][0], splits["test"][0][0])
    draws = [splits["train"][0][0] for _ in range(8)]
    assert all(d.shape == (3, 32, 32) for d in draws)
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    # the batches folder itself is accepted as root
    assert len(data.load_splits("cifar10", folder)["test"]) == N_TEST


def test_cifar10_missing(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        data.load_splits("cifar10", tmp_path / "nowhere")
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in msg
    assert "data_batch_1" in msg and "test_batch" in msg and "batches.meta" in msg
    folder = _write_cifar(tmp_path, np.random.default_rng(0))
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        data.load_splits("cifar10", tmp_path)


# ----------------------------------------------------------------------------------------------
# Tiny-ImageNet: tiny fake folder with real JPEG files


WNIDS = ["n01443537", "n01629819"]  # listed in this order: labels 0, 1
N_PER_CLASS = 5


def _color(label):
    return (230, 20, 20) if label == 0 else (20, 20, 230)


def _write_tiny(root):
    from PIL import Image

    folder = root / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    for label, w in enumerate(WNIDS):
        imgs = folder / "train" / w / "images"
        imgs.mkdir(parents=True)
        for i in range(N_PER_CLASS):
            Image.new("RGB", (64, 64), _color(label)).save(imgs / f"{w}_{i}.JPEG", quality=95)
        (folder / "train" / w / f"{w}_boxes.txt").write_text("")
    lines = []
    val_labels = [1, 0, 1]
    for i, label in enumerate(val_labels):
        im = Image.new("RGB", (64, 64), _color(label))
        if i == 2:
            im = im.convert("L")  # grayscale JPEGs exist in the real set
        im.save(folder / "val" / "images" / f"val_{i}.JPEG", quality=95)
        lines.append(f"val_{i}.JPEG\t{WNIDS[label]}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder, val_labels


def test_tinyimagenet_fake(tmp_path):
    folder, val_labels = _write_tiny(tmp_path)
    splits = data.load_splits("tinyimagenet", tmp_path, seed=0, augment=True)
    n = 2 * N_PER_CLASS
    assert {s: len(d) for s, d in splits.items()} == {"train": n - n // 5, "val": n // 5, "test": 3}
    tr, va = set(splits["train"].paths), set(splits["val"].paths)
    assert not (tr & va) and len(tr | va) == n
    other = data.load_splits("tinyimagenet", tmp_path, seed=5)
    assert data.load_splits("tinyimagenet", tmp_path, seed=0)["val"].paths == splits["val"].paths
    assert other["val"].paths != splits["val"].paths or other["train"].paths != splits["train"].paths

    # labels follow wnids.txt order; the pixel colour tells which class an image came from
    for s in ("train", "val"):
        for path, label in zip(splits[s].paths, splits[s].labels):
            assert f"/{WNIDS[label]}/" in path
    x, y = data.tensors("tinyimagenet", "test", tmp_path)
    assert x.shape == (3, 3, 64, 64) and x.dtype == torch.float32 and y.tolist() == val_labels
    u = _unnormalize(x)
    assert u.min() >= -1e-5 and u.max() <= 1 + 1e-5
    for i, label in enumerate(val_labels[:2]):  # the RGB ones: red (class 0) or blue (class 1)
        r, b = u[i, 0].mean(), u[i, 2].mean()
        assert (r > b) == (label == 0)
    xv, yv = splits["val"][0]
    assert xv.shape == (3, 64, 64) and isinstance(yv, int) and yv in (0, 1)

    # augmentation only on train
    assert torch.equal(splits["val"][0][0], splits["val"][0][0])
    crop = next(t for t in splits["train"].transform.transforms if isinstance(t, data.T.RandomCrop))
    assert crop.size == (64, 64) and crop.padding == 8
    for s in ("val", "test"):
        assert not any(isinstance(t, (data.T.RandomCrop, data.T.RandomHorizontalFlip))
                       for t in splits[s].transform.transforms)  # fmt: skip
    assert splits["train"][0][0].shape == (3, 64, 64)
    # the tiny-imagenet-200 folder itself is accepted as root
    assert len(data.load_splits("tinyimagenet", folder)["test"]) == 3


def test_tinyimagenet_missing(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        data.load_splits("tinyimagenet", tmp_path / "nowhere")
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "tiny-imagenet-200") in msg
    assert "wnids.txt" in msg and "val_annotations.txt" in msg and "train/<wnid>/images" in msg
    folder, _ = _write_tiny(tmp_path)
    (folder / "val" / "val_annotations.txt").unlink()
    with pytest.raises(FileNotFoundError, match="val_annotations.txt"):
        data.load_splits("tinyimagenet", tmp_path)


def test_cifar10_augment_crop_padding(tmp_path):
    _write_cifar(tmp_path, np.random.default_rng(1))
    splits = data.load_splits("cifar10", tmp_path, augment=True)
    crop = next(t for t in splits["train"].transform.transforms if isinstance(t, data.T.RandomCrop))
    assert crop.size == (32, 32) and crop.padding == 4
    no_aug = data.load_splits("cifar10", tmp_path, augment=False)
    assert not any(isinstance(t, data.T.RandomCrop) for t in no_aug["train"].transform.transforms)
