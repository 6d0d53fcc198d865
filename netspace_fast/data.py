"""Image-classification data for training the zoo (METHOD.md section 3, seed Sec. IV and V).

Three datasets, read from local folders only (nothing is ever downloaded):

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

Splits carved from a training set are proportional: the val split holds ``n // 5`` images and the
train split the rest (40k/10k of CIFAR-10's 50k, 80k/20k of Tiny-ImageNet's 100k, and the same
4/5 : 1/5 proportion for small stand-in sets). Which images go where is a random permutation drawn
from ``seed``: the same seed gives the same split, a different seed a different one; the splits are
disjoint and together cover the set.

Every split is normalized with mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225). With
``augment=True`` the train split (only) also gets the standard augmentation: random crop with
padding ``S // 8`` (4 for 32 px, 8 for 64 px) and a random horizontal flip.

Public API: :data:`DATASETS`, :func:`dataset_info`, :func:`load_splits`, :func:`tensors`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision import transforms as T

from . import archs

__all__ = ["DATASETS", "MEAN", "STD", "dataset_info", "load_splits", "tensors"]

DATASETS = ("digits", "cifar10", "tinyimagenet")
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


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """Normalize a batch (M, 3, S, S) of float images in [0, 1]."""
    mean = torch.tensor(MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


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
        official archive. We never download, and we want to read any local copy in the same format
        (including small stand-in sets in tests), so only the files' existence is checked:
        ``check_integrity(path, None)`` is exactly an ``os.path.isfile`` test.
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
    if name == "cifar10":
        return _cifar_splits(root, seed, augment)
    return _tiny_splits(root, seed, augment)


def tensors(
    name: str, split: str, root: Optional[str | os.PathLike] = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Materialize one split without augmentation: ``(images (M, 3, S, S) float32, labels (M,) int64)``.

    Images are normalized exactly as the items of :func:`load_splits` (same split for the same
    ``seed``). Digits and CIFAR-10 are vectorized (CIFAR-10's 40k train split is ~490 MB of
    float32); Tiny-ImageNet decodes every JPEG one by one and is slow (minutes, ~3.9 GB of float32
    for the 80k train split) -- prefer a DataLoader over :func:`load_splits` there.
    """
    _check_name(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split={split!r}; valid splits: {', '.join(SPLITS)}")
    if name == "digits":
        x, y = _digits_images()
        idx = torch.from_numpy(dict(zip(SPLITS, _split_train_val_test(len(y), seed)))[split])
        return _normalize(x[idx]), y[idx]
    if name == "cifar10":
        xtr, ytr, tr_idx, va_idx, xte, yte = _cifar_raw(root, seed)
        data, labels = (xte, yte) if split == "test" else (xtr, ytr)
        idx = {"train": tr_idx, "val": va_idx, "test": np.arange(len(yte))}[split]
        x = torch.from_numpy(np.ascontiguousarray(data[idx])).permute(0, 3, 1, 2).float() / 255.0
        return _normalize(x).contiguous(), torch.from_numpy(labels[idx])
    ds = load_splits(name, root, seed=seed, augment=False)[split]
    items = [ds[i] for i in range(len(ds))]
    size = dataset_info(name)[1]
    if not items:
        return torch.empty(0, 3, size, size), torch.empty(0, dtype=torch.long)
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.long)
