"""Image-classification data for training the zoo (METHOD.md section 3, seed Sec. IV and V).

Five datasets, read from local folders. Nothing is downloaded unless asked: with ``download=True``
(the CLI's ``--download``) CIFAR-10, Fashion-MNIST and MNIST are fetched into ``root`` by
torchvision's own dataset classes, which verify their checksums (:func:`download`).

- ``"digits"`` -- the embedded default: scikit-learn's bundled 8x8 handwritten digits
  (``sklearn.datasets.load_digits``, 1797 images), bilinearly upsampled to 32x32 and replicated to
  3 channels, 10 classes. Split 60/20/20 into train/val/test (1079/359/359).
- ``"cifar10"`` -- CIFAR-10 in its standard python batch format: ``<root>/cifar-10-batches-py/``
  with ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` and ``batches.meta``. The 50k training
  set is split 40k train / 10k val, the official 10k test set is the test split.
- ``"tinyimagenet"`` -- Tiny-ImageNet in its standard folder layout: ``<root>/tiny-imagenet-200/``
  (or ``<root>`` itself) with ``wnids.txt``, ``train/<wnid>/images/*.JPEG`` and ``val/images/*.JPEG``
  plus ``val/val_annotations.txt`` (tab-separated: filename, wnid, x, y, w, h). The 100k training
  set is split 80k train / 20k val, the official 10k validation set is the test split. Labels are
  the line index of the wnid in ``wnids.txt``.

- ``"fashion-mnist"`` and ``"mnist"`` -- the four standard idx files in ``<root>`` (gzipped or not):
  ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
  ``t10k-labels-idx1-ubyte``; also found in ``<root>/FashionMNIST/raw`` / ``<root>/MNIST/raw``, where
  torchvision's download puts them. On Debian/Ubuntu ``apt-get install dataset-fashion-mnist``
  installs Fashion-MNIST's files into ``/usr/share/datasets/fashion-mnist``. The 28x28 grayscale
  images are padded with black to 32x32 (2 pixels each side) and replicated to 3 channels: the
  CIFAR-10 geometry of the paper's architectures, as the digits data. The 60k training set is split
  48k train / 12k val (seeded, as below), the official 10k test set is the test split.

Splits carved from a training set are proportional: the val split holds ``n // 5`` images and the
train split the rest (40k/10k of CIFAR-10's 50k, 80k/20k of Tiny-ImageNet's 100k, and the same
4/5 : 1/5 proportion for small stand-in sets). Which images go where is a random permutation drawn
from ``seed``: the same seed gives the same split, a different seed a different one; the splits are
disjoint and together cover the set.

Every split of every dataset (the grayscale ones after replication) is normalized with mean
(0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225). With
``augment=True`` the train split (only) also gets the standard augmentation: random crop with
padding ``S // 8`` (4 for 32 px, 8 for 64 px) and a random horizontal flip.

A zoo imported from elsewhere (:mod:`netspace_fast.zoo.public`) saw its images its own way: 28x28
grayscale, normalized with its own mean and std. Such a zoo records an :class:`ImageGeometry` in its
config (:func:`geometry_of`), and :func:`tensors` given that geometry returns the images as those
networks were trained on them: the dataset's own images in [0, 1] made ``channels`` channels (a
grayscale image replicated, a colour image averaged over its channels), ``size`` pixels a side (a
smaller image padded with black, centred; a larger one resized, bilinear with antialiasing) and
normalized with the geometry's per-channel mean and std. Without one, every dataset keeps the geometry
above (:func:`default_geometry`). :func:`zoo_tensors` gives a zoo's images either way.

Public API: :data:`DATASETS`, :data:`DOWNLOADABLE`, :class:`ImageGeometry`, :func:`dataset_info`,
:func:`default_geometry`, :func:`download`, :func:`geometry_of`, :func:`load_splits`, :func:`tensors`,
:func:`zoo_tensors`, :func:`read_idx`.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision import transforms as T

from . import archs

__all__ = ["DATASETS", "DOWNLOADABLE", "IDX_FILES", "MEAN", "STD", "ImageGeometry", "dataset_info", "default_geometry",
           "download", "fetch", "geometry_of", "load_splits", "read_idx", "tensors", "zoo_tensors"]

DATASETS = ("digits", "cifar10", "tinyimagenet", "fashion-mnist", "mnist")
DOWNLOADABLE = ("cifar10", "fashion-mnist", "mnist")
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "test")

_CIFAR_FOLDER = "cifar-10-batches-py"
_TINY_FOLDER = "tiny-imagenet-200"
_CIFAR_LAYOUT = (
    f"expected the CIFAR-10 python batch format: <root>/{_CIFAR_FOLDER}/ containing data_batch_1 .. "
    "data_batch_5, test_batch and batches.meta (pickled dicts with b'data' uint8 (n, 3072) and "
    "b'labels')"
)
_TINY_LAYOUT = (
    f"expected the Tiny-ImageNet layout: <root>/{_TINY_FOLDER}/ (or <root> itself) containing "
    "wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt "
    "(tab-separated: filename, wnid, x, y, w, h)"
)


# ----------------------------------------------------------------------------------------------
# public helpers


def _check_name(name: str) -> str:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset name={name!r}; valid names: {', '.join(DATASETS)}")
    return name


def dataset_info(name: str) -> tuple[int, int, int]:
    """``(channels, size, classes)`` of dataset ``name``; the same as ``archs.DATASETS[name]``."""
    return archs.DATASETS[_check_name(name)]


def _split_train_val(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded disjoint split of ``range(n)``: val gets ``n // 5`` indices, train the rest."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = n // 5
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _split_train_val_test(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded disjoint split of ``range(n)``: val and test get ``n // 5`` indices each."""
    perm = np.random.default_rng(seed).permutation(n)
    k = n // 5
    return np.sort(perm[2 * k :]), np.sort(perm[:k]), np.sort(perm[k : 2 * k])


def _transform(size: int, augment: bool, pil: bool) -> Callable:
    """Augmentation (optional) + to-tensor (for PIL inputs) + normalization."""
    steps: list[Callable] = []
    if augment:
        steps += [T.RandomCrop(size, padding=size // 8), T.RandomHorizontalFlip()]
    if pil:
        steps.append(T.ToTensor())
    steps.append(T.Normalize(MEAN, STD))
    return T.Compose(steps)


# ----------------------------------------------------------------------------------------------
# image geometry: how a zoo's networks see their images


@dataclass(frozen=True)
class ImageGeometry:
    """The images a zoo's networks take: ``channels`` (1 or 3), ``size`` (pixels a side) and the
    per-channel ``mean`` and ``std`` the [0, 1] pixels are normalized with (one value per channel).
    Recorded in a zoo's config under ``"geometry"`` (:meth:`to_json`, :func:`geometry_of`)."""

    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
            raise ValueError(f"geometry: channels must be 1 or 3, got {self.channels!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 1 <= self.size <= 1024:
            raise ValueError(f"geometry: size must be an int in [1, 1024], got {self.size!r}")
        for field, low in (("mean", -math.inf), ("std", 0.0)):
            values = getattr(self, field)
            if (not isinstance(values, (tuple, list)) or len(values) != self.channels
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                               and v > low for v in values)):
                what = "positive finite numbers" if field == "std" else "finite numbers"
                raise ValueError(f"geometry: {field} must be {self.channels} {what} (one per channel), got {values!r}")
            object.__setattr__(self, field, tuple(float(v) for v in values))

    def to_json(self) -> dict:
        return {"channels": self.channels, "size": self.size, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_json(cls, d, where: str = "geometry") -> "ImageGeometry":
        keys = ("channels", "size", "mean", "std")
        if not isinstance(d, dict) or set(d) != set(keys):
            raise ValueError(f"{where}: expected an object with exactly the keys {', '.join(keys)}, got {d!r}")
        try:
            return cls(d["channels"], d["size"], tuple(d["mean"]) if isinstance(d["mean"], list) else d["mean"],
                       tuple(d["std"]) if isinstance(d["std"], list) else d["std"])
        except ValueError as e:
            raise ValueError(f"{where}: {str(e).removeprefix('geometry: ')}") from None


def default_geometry(name: str) -> ImageGeometry:
    """The geometry of dataset ``name`` here: 3 channels, :func:`dataset_info`'s size, :data:`MEAN` / :data:`STD`."""
    channels, size, _ = dataset_info(name)
    return ImageGeometry(channels, size, MEAN, STD)


def geometry_of(config) -> ImageGeometry | None:
    """The geometry a zoo's config records (``config["geometry"]``), or None: the dataset's own."""
    if not isinstance(config, dict) or config.get("geometry") is None:
        return None
    return ImageGeometry.from_json(config["geometry"], "zoo config geometry")


def zoo_tensors(config, name: str, split: str, root=None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`tensors` as the networks of a zoo whose config is ``config`` see them: in the geometry it
    records (:func:`geometry_of`; an imported zoo), else in the dataset's own."""
    g = geometry_of(config)
    return tensors(name, split, root, seed) if g is None else tensors(name, split, root, seed, geometry=g)


def _to_geometry(x: torch.Tensor, g: ImageGeometry) -> torch.Tensor:
    """Float images (M, C, S, S) in [0, 1] as the geometry ``g`` sees them (module doc)."""
    if x.shape[1] != g.channels:
        x = x.mean(1, keepdim=True) if g.channels == 1 else x.expand(-1, g.channels, -1, -1)
    side = x.shape[-1]
    if side < g.size:
        a = (g.size - side) // 2
        x = F.pad(x, (a, g.size - side - a, a, g.size - side - a))
    elif side > g.size:
        x = F.interpolate(x, size=(g.size, g.size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(g.mean, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(g.std, dtype=x.dtype).view(1, -1, 1, 1)
    return ((x - mean) / std).contiguous()


# ----------------------------------------------------------------------------------------------
# dataset classes (items: (float32 tensor (3, S, S), int label))


class _TensorImages(Dataset):
    """Subset of float images (N, 3, S, S) in [0, 1] held in memory (digits)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indices, transform: Callable):
        self.images, self.labels = images, labels
        self.indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = int(self.indices[i])
        return self.transform(self.images[j]), int(self.labels[j])


class _ArrayImages(Dataset):
    """Subset of uint8 HWC images (N, S, S, 3) held in memory (CIFAR-10)."""

    def __init__(self, data: np.ndarray, labels: np.ndarray, indices, transform: Callable):
        self.data, self.labels = data, labels
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        from PIL import Image

        j = int(self.indices[i])
        return self.transform(Image.fromarray(self.data[j])), int(self.labels[j])


class _FileImages(Dataset):
    """Images read lazily from image files (Tiny-ImageNet), converted to RGB of side ``size``."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], size: int, transform: Callable):
        self.paths, self.labels = list(paths), list(labels)
        self.size = size
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            im = im.convert("RGB")  # a few Tiny-ImageNet JPEGs are grayscale
            if im.size != (self.size, self.size):
                im = im.resize((self.size, self.size), Image.BILINEAR)
        return self.transform(im), int(self.labels[i])


# ----------------------------------------------------------------------------------------------
# digits


def _digits_images() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as (N, 3, 32, 32) float32 in [0, 1] and (N,) int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8)
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    x = x.expand(-1, 3, -1, -1).contiguous()
    return x, torch.from_numpy(d.target.astype(np.int64))


def _digits_splits(seed: int, augment: bool) -> dict[str, Dataset]:
    x, y = _digits_images()
    idx = dict(zip(SPLITS, _split_train_val_test(len(y), seed)))
    return {
        s: _TensorImages(x, y, idx[s], _transform(32, augment and s == "train", pil=False))
        for s in SPLITS
    }


# ----------------------------------------------------------------------------------------------
# CIFAR-10


def _cifar_class():
    from torchvision.datasets import CIFAR10

    class _LocalCIFAR10(CIFAR10):
        """torchvision's CIFAR10 without md5 verification.

        ``CIFAR10`` checks every batch file (and ``batches.meta``) against the md5 sums of the
        official archive. Reading, we want any local copy in the same format
        (including small stand-in sets in tests), so only the files' existence is checked:
        ``check_integrity(path, None)`` is exactly an ``os.path.isfile`` test. (:func:`download`
        uses torchvision's own class, which does check them.)
        """

        train_list = [[f, None] for f, _ in CIFAR10.train_list]
        test_list = [[f, None] for f, _ in CIFAR10.test_list]
        meta = {**CIFAR10.meta, "md5": None}

    return _LocalCIFAR10


def _cifar_root(root) -> Path:
    if root is None:
        raise ValueError(f"root is required for dataset 'cifar10' (a folder); {_CIFAR_LAYOUT}")
    root = Path(root).expanduser()
    if root.name == _CIFAR_FOLDER and not (root / _CIFAR_FOLDER).is_dir():
        root = root.parent  # accept the batches folder itself
    folder = root / _CIFAR_FOLDER
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 not found: searched {folder} (missing: {', '.join(missing)}); {_CIFAR_LAYOUT}"
        )
    return root


def _cifar_raw(root, seed: int):
    """(train data, train labels, train idx, val idx, test data, test labels)."""
    cls = _cifar_class()
    root = _cifar_root(root)
    tr = cls(str(root), train=True, download=False)
    te = cls(str(root), train=False, download=False)
    tr_idx, va_idx = _split_train_val(len(tr.targets), seed)
    return (
        tr.data, np.asarray(tr.targets, dtype=np.int64), tr_idx, va_idx,
        te.data, np.asarray(te.targets, dtype=np.int64),
    )  # fmt: skip


def _cifar_splits(root, seed: int, augment: bool) -> dict[str, Dataset]:
    xtr, ytr, tr_idx, va_idx, xte, yte = _cifar_raw(root, seed)
    return {
        "train": _ArrayImages(xtr, ytr, tr_idx, _transform(32, augment, pil=True)),
        "val": _ArrayImages(xtr, ytr, va_idx, _transform(32, False, pil=True)),
        "test": _ArrayImages(xte, yte, np.arange(len(yte)), _transform(32, False, pil=True)),
    }


# ----------------------------------------------------------------------------------------------
# Tiny-ImageNet


def _tiny_folder(root) -> Path:
    if root is None:
        raise ValueError(f"root is required for dataset 'tinyimagenet' (a folder); {_TINY_LAYOUT}")
    root = Path(root).expanduser()
    for folder in (root / _TINY_FOLDER, root):
        if (folder / "wnids.txt").is_file():
            break
    else:
        raise FileNotFoundError(
            f"Tiny-ImageNet not found: searched {root / _TINY_FOLDER} and {root} for wnids.txt; "
            f"{_TINY_LAYOUT}"
        )
    for sub in ("train", "val/images", "val/val_annotations.txt"):
        if not (folder / sub).exists():
            raise FileNotFoundError(
                f"Tiny-ImageNet incomplete: {folder / sub} is missing (searched {folder}); "
                f"{_TINY_LAYOUT}"
            )
    return folder


def _tiny_files(root) -> tuple[list[str], list[int], list[str], list[int]]:
    """Sorted (train paths, train labels, official-val paths, official-val labels)."""
    folder = _tiny_folder(root)
    wnids = [w.strip() for w in (folder / "wnids.txt").read_text().splitlines() if w.strip()]
    label = {w: i for i, w in enumerate(wnids)}
    tr_paths, tr_labels = [], []
    for w in wnids:
        imgs = folder / "train" / w / "images"
        if not imgs.is_dir():
            raise FileNotFoundError(f"Tiny-ImageNet incomplete: {imgs} is missing; {_TINY_LAYOUT}")
        for p in sorted(imgs.iterdir()):
            if p.suffix.lower() == ".jpeg":
                tr_paths.append(str(p))
                tr_labels.append(label[w])
    te_paths, te_labels = [], []
    for line in (folder / "val" / "val_annotations.txt").read_text().splitlines():
        parts = line.strip().split("\t")
        if len(parts) < 2:
            continue
        fname, w = parts[0], parts[1]
        if w not in label:
            raise ValueError(f"{folder / 'val' / 'val_annotations.txt'}: wnid {w!r} not in wnids.txt")
        te_paths.append(str(folder / "val" / "images" / fname))
        te_labels.append(label[w])
    order = sorted(range(len(te_paths)), key=te_paths.__getitem__)
    return tr_paths, tr_labels, [te_paths[i] for i in order], [te_labels[i] for i in order]


def _tiny_splits(root, seed: int, augment: bool) -> dict[str, Dataset]:
    tr_paths, tr_labels, te_paths, te_labels = _tiny_files(root)
    tr_idx, va_idx = _split_train_val(len(tr_paths), seed)

    def pick(idx):
        return [tr_paths[i] for i in idx], [tr_labels[i] for i in idx]

    return {
        "train": _FileImages(*pick(tr_idx), 64, _transform(64, augment, pil=True)),
        "val": _FileImages(*pick(va_idx), 64, _transform(64, False, pil=True)),
        "test": _FileImages(te_paths, te_labels, 64, _transform(64, False, pil=True)),
    }


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST and MNIST (idx files)

_IDX_NAMES = {"fashion-mnist": "Fashion-MNIST", "mnist": "MNIST"}
_IDX_SUBFOLDER = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}  # torchvision's <root>/<class>/raw
_IDX_TYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_DEBIAN_FOLDER = "/usr/share/datasets/fashion-mnist"


def _how_to_get(name: str) -> str:
    debian = (f"`apt-get install dataset-fashion-mnist` (Debian/Ubuntu; the files land in {_DEBIAN_FOLDER}: pass "
              "that folder as --root), or " if name == "fashion-mnist" else "")
    return f"get them with {debian}--download (fetches them into --root)"


def read_idx(path) -> np.ndarray:
    """The array stored in idx file ``path`` (gzip-compressed if its name ends in ``.gz``).

    The idx format: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), a byte with the number of dimensions, the dimensions as big-endian
    uint32, then the data, big-endian, in C order. A file that is not idx, truncated or longer than
    its header says is a ValueError of one line naming the file.
    """
    import gzip
    import zlib

    path = Path(path)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ValueError(f"{path}: not a readable gzip file ({e})") from None
    if len(raw) < 4:
        raise ValueError(f"{path}: not an idx file: {len(raw)} bytes, shorter than the 4-byte magic number")
    magic = int.from_bytes(raw[:4], "big")
    if raw[0] or raw[1] or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise ValueError(f"{path}: not an idx file: magic number 0x{magic:08X}, expected 0x0000TTNN (TT a type byte "
                         "08/09/0B/0C/0D/0E, NN the number of dimensions; 0x00000803 for images, 0x00000801 for "
                         "labels)")
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated idx file: {len(raw)} bytes, its header alone needs {header}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    need = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != need:
        what = "truncated" if len(raw) - header < need else "corrupt"
        raise ValueError(f"{path}: {what} idx file: its header says shape {dims} ({need} bytes of data), the file "
                         f"holds {len(raw) - header} bytes of data")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))  # a writable copy


def _idx_paths(name: str, root) -> dict[str, Path]:
    """The four idx files of ``name`` (each gzipped or not) in ``root`` or ``root/<class>/raw``."""
    pretty = _IDX_NAMES[name]
    files = ", ".join(IDX_FILES)
    if root is None:
        raise ValueError(f"root is required for dataset {name!r} (the folder of the four idx files {files}, each "
                         f"may be .gz); {_how_to_get(name)}")
    root = Path(root).expanduser()
    folders = [root, root / _IDX_SUBFOLDER[name] / "raw"]
    for folder in folders:
        found = {}
        for f in IDX_FILES:
            for cand in (folder / f, folder / f"{f}.gz"):
                if cand.is_file():
                    found[f] = cand
                    break
        if len(found) == len(IDX_FILES):
            return found
    missing = [f for f in IDX_FILES if not any((folders[0] / g).is_file() for g in (f, f"{f}.gz"))]
    raise FileNotFoundError(f"{pretty} not found: searched {folders[0]} and {folders[1]} for the idx files {files} "
                            f"(each may be .gz; missing in {folders[0]}: {', '.join(missing)}); {_how_to_get(name)}")


def _idx_pair(images_path: Path, labels_path: Path, classes: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx(images_path), read_idx(labels_path)
    if x.dtype != np.uint8 or x.ndim != 3:
        raise ValueError(f"{images_path}: expected uint8 images of shape (n, rows, cols) (magic 0x00000803), got "
                         f"{x.dtype} of shape {x.shape}")
    if y.dtype != np.uint8 or y.ndim != 1:
        raise ValueError(f"{labels_path}: expected uint8 labels of shape (n,) (magic 0x00000801), got {y.dtype} of "
                         f"shape {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"{labels_path}: {len(y)} labels for the {len(x)} images of {images_path.name}; expected the "
                         "same count")
    if x.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: expected 28x28 images, got {x.shape[1]}x{x.shape[2]}")
    if len(y) and int(y.max()) >= classes:
        raise ValueError(f"{labels_path}: label {int(y.max())} out of range; expected labels 0..{classes - 1}")
    return x, y.astype(np.int64)


def _idx_raw(name: str, root) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images (60k, 28, 28) uint8, train labels, test images, test labels), read once per
    process and set of files (keyed by path, size and modification time)."""
    paths = _idx_paths(name, root)
    key = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths.values())
    return _idx_cached(key, dataset_info(name)[2])


@functools.lru_cache(maxsize=2)
def _idx_cached(key, classes: int):
    p = [Path(k[0]) for k in key]
    return (*_idx_pair(p[0], p[1], classes), *_idx_pair(p[2], p[3], classes))


def _gray_to_rgb32(x: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 3, 32, 32) in [0, 1]: black padding of 2 pixels, 3 equal channels."""
    t = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32).div_(255.0)
    t = F.pad(t, (2, 2, 2, 2))
    return t.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def _idx_arrays(name: str, root, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    xtr, ytr, xte, yte = _idx_raw(name, root)
    tr_idx, va_idx = _split_train_val(len(ytr), seed)
    return {"train": (xtr[tr_idx], ytr[tr_idx]), "val": (xtr[va_idx], ytr[va_idx]), "test": (xte, yte)}


def _idx_splits(name: str, root, seed: int, augment: bool) -> dict[str, Dataset]:
    out = {}
    for s, (x, y) in _idx_arrays(name, root, seed).items():
        t = _gray_to_rgb32(x)
        out[s] = _TensorImages(t, torch.from_numpy(y), np.arange(len(y)),
                               _transform(32, augment and s == "train", pil=False))
    return out


# ----------------------------------------------------------------------------------------------
# downloads (opt-in)


def _download_class(name: str):
    from torchvision import datasets as tvd

    return {"cifar10": tvd.CIFAR10, "fashion-mnist": tvd.FashionMNIST, "mnist": tvd.MNIST}[name]


def download(name: str, root) -> Path:
    """Fetch dataset ``name`` (one of :data:`DOWNLOADABLE`) into folder ``root`` with torchvision's own
    dataset class, which checks every file's md5 (files already there and intact are not fetched
    again); returns ``root``. Only called when the user asked for it (the CLI's ``--download``):
    nothing else in this package touches the network. CIFAR-10 lands in ``root/cifar-10-batches-py``,
    Fashion-MNIST / MNIST in ``root/FashionMNIST/raw`` / ``root/MNIST/raw``; both are where
    :func:`load_splits` looks."""
    _check_name(name)
    if name not in DOWNLOADABLE:
        raise ValueError(f"download: dataset {name!r} cannot be downloaded; downloadable: {', '.join(DOWNLOADABLE)}"
                         + (" (digits is embedded: nothing to fetch)" if name == "digits" else ""))
    if root is None:
        raise ValueError(f"root is required to download {name!r} (the folder to fetch it into)")
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    from urllib.error import URLError

    cls = _download_class(name)
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except (RuntimeError, URLError) as e:  # torchvision's: unreachable mirrors, a checksum that does not match
        reason = " ".join(str(e).split())
        raise OSError(f"download: fetching {name!r} into {root} failed: {reason}") from None
    return root


_download = download  # (fetch's flag shadows the name)


def fetch(name: str, root, download: bool) -> None:
    """What every command with ``--root`` / ``--download`` does first: with ``download``, fetch
    dataset ``name`` into ``root`` (:func:`download`; the embedded digits need nothing and are
    left alone); without it, nothing (never a network access the user did not ask for)."""
    if download and _check_name(name) != "digits":
        _download(name, root)


# ----------------------------------------------------------------------------------------------
# entry points


def load_splits(
    name: str, root: Optional[str | os.PathLike] = None, *, seed: int = 0, augment: bool = True
) -> dict[str, Dataset]:
    """The ``"train"``, ``"val"`` and ``"test"`` splits of dataset ``name`` (see module docstring).

    ``root`` is ignored for ``"digits"`` and required (the data folder) for the others. Each item
    is ``(image, label)``: a float32 tensor (3, S, S), normalized, and an ``int``. With ``augment``
    the train split applies random crop + horizontal flip; val and test never do. ``seed`` fixes
    which training-set images form train and val. Missing data raises FileNotFoundError naming the
    folder searched and the expected layout.
    """
    _check_name(name)
    if name == "digits":
        return _digits_splits(seed, augment)
    if name in _IDX_NAMES:
        return _idx_splits(name, root, seed, augment)
    if name == "cifar10":
        return _cifar_splits(root, seed, augment)
    return _tiny_splits(root, seed, augment)


def tensors(
    name: str, split: str, root: Optional[str | os.PathLike] = None, seed: int = 0,
    geometry: ImageGeometry | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Materialize one split without augmentation: ``(images (M, 3, S, S) float32, labels (M,) int64)``.

    Images are normalized exactly as the items of :func:`load_splits` (same split for the same
    ``seed``). Digits and CIFAR-10 are vectorized (CIFAR-10's 40k train split is ~490 MB of
    float32); Tiny-ImageNet decodes every JPEG one by one and is slow (minutes, ~3.9 GB of float32
    for the 80k train split) -- prefer a DataLoader over :func:`load_splits` there.

    ``geometry``: the images as a zoo with its own geometry sees them (module doc): (M, channels,
    size, size), normalized with its mean and std; the same images and split otherwise. Not for
    Tiny-ImageNet.
    """
    _check_name(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split={split!r}; valid splits: {', '.join(SPLITS)}")
    if geometry is not None and not isinstance(geometry, ImageGeometry):
        raise TypeError(f"geometry: expected an ImageGeometry or None, got {type(geometry).__name__}")
    if name == "digits":
        x, y = _digits_images()
        idx = torch.from_numpy(dict(zip(SPLITS, _split_train_val_test(len(y), seed)))[split])
        x, y = x[idx], y[idx]
    elif name in _IDX_NAMES:
        x, y = _idx_arrays(name, root, seed)[split]
        x = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32).div_(255.0).unsqueeze(1)  # (M, 1, 28, 28)
        y = torch.from_numpy(y)
    elif name == "cifar10":
        xtr, ytr, tr_idx, va_idx, xte, yte = _cifar_raw(root, seed)
        data, labels = (xte, yte) if split == "test" else (xtr, ytr)
        idx = {"train": tr_idx, "val": va_idx, "test": np.arange(len(yte))}[split]
        x = torch.from_numpy(np.ascontiguousarray(data[idx])).permute(0, 3, 1, 2).float() / 255.0
        y = torch.from_numpy(labels[idx])
    elif geometry is not None:
        raise ValueError(f"geometry: images of another geometry than the dataset's are not made for {name!r}")
    if name != "tinyimagenet":
        return _to_geometry(x, geometry or default_geometry(name)), y
    ds = load_splits(name, root, seed=seed, augment=False)[split]
    items = [ds[i] for i in range(len(ds))]
    size = dataset_info(name)[1]
    if not items:
        return torch.empty(0, 3, size, size), torch.empty(0, dtype=torch.long)
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.long)
