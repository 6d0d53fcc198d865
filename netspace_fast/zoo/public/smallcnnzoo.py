"""Import the Small CNN Zoo (Unterthiner et al., "Predicting Neural Network Accuracy from Weights",
2020; google-research ``dnn_predict_accuracy``) into one of our zoos: ``netspace zoo import --format
smallcnnzoo``.

The layout, as its README describes it and NFN's loader (``experiments/data_utils.py`` of
AllanYangZhou/nfn, ``ZooDataset``) reads it: one folder per dataset (``mnist``, ``fashion_mnist``,
``cifar10``, ``svhn_cropped``) holding

- ``weights.npy``: one row per checkpoint, every parameter of the network flattened into it (4,970
  columns); read with ``numpy.load(allow_pickle=False)``, memory-mapped (the released files are GBs);
- ``metrics.csv.gz`` (or ``metrics.csv``): one row per row of ``weights.npy``: ``config.*`` columns
  (``config.activation``, ``config.dataset``, ``config.dropout``, ``config.learning_rate``,
  ``config.w_init``, ``config.random_seed``, ...), ``modeldir`` (the training run), ``step`` (the
  epoch of the checkpoint: 0, 1, 2, 3, 20, 40, 60, 80, 86), ``train_accuracy``, ``test_accuracy``,
  ``train_loss``, ``test_loss`` (a first, unnamed index column is ignored);
- ``layout.csv``: which columns hold which tensor: ``varname`` (a Keras variable name ending in
  ``kernel:0`` or ``bias:0``), ``start_idx``, ``end_idx`` and ``shape`` (a tuple, ``(3, 3, 1, 16)``).
  Keras stores a conv kernel as (kh, kw, in, out) and a dense kernel as (in, out): they are
  transposed to PyTorch's (out, in, kh, kw) and (out, in), as NFN does.

The network is the zoo's CNN (:class:`netspace_fast.zoo.public.nets.SmallCNNZooNet`: three 3x3
stride-2 convolutions of 16 units, global average pooling, dense 10) with the run's
``config.activation``; a layout of any other network is refused. Its images, as ``train_network.py``
makes them: grayscale (a colour image's channels averaged), 28x28 (MNIST, Fashion-MNIST) or 32x32
(CIFAR-10), in [-1, 1] (mean 0.5, std 0.5 of [0, 1] pixels); SVHN is refused (not read here).

A member's id is ``row<index>-e<step>``; its accuracies are ``train_accuracy`` and ``test_accuracy``
(no val), its seed ``config.random_seed``. A run is the rows sharing ``modeldir`` (each row its own
run without that column).

**Their split** (``split="theirs"``): NFN's ``ZooDataset`` rule applied to the runs in file order
(NFN first reorders the rows with a permutation file of its own): the second half of the runs is
test, the first half is shuffled by ``random.Random(0)`` and cut 80/20 into train and val. Epochs,
filters, ``"ours"`` and writing: :mod:`.members`.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import random
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ... import data
from . import nets
from .members import (Member, check_options, check_out, check_source_dir, choose_epochs, finish_import, jsonable,
                      register_archs)

__all__ = ["SMALLCNNZOO_DATASETS", "import_smallcnnzoo"]

_WHAT = "the Small CNN Zoo (a folder with weights.npy, metrics.csv.gz or metrics.csv, layout.csv)"
#: TFDS dataset names (``config.dataset``) -> ours and the side of its images (None: not read here)
SMALLCNNZOO_DATASETS = {"mnist": ("mnist", 28), "fashion_mnist": ("fashion-mnist", 28), "cifar10": ("cifar10", 32),
                        "svhn_cropped": None}
_SIDES = {ours: side for ours, side in filter(None, SMALLCNNZOO_DATASETS.values())}
_SHAPE = re.compile(r"^\(\s*(\d+)\s*(?:,\s*(\d+)\s*)*,?\s*\)$")
#: the CNN's tensors in layer order: (name, Keras kernel shape); each kernel has a bias of its last dim
_LAYERS = (("conv2d", (3, 3, 1, 16)), ("conv2d_1", (3, 3, 16, 16)), ("conv2d_2", (3, 3, 16, 16)),
           ("dense", (16, 10)))
_NEEDED = ("step", "train_accuracy", "test_accuracy", "config.activation", "config.dataset")


@dataclass(frozen=True)
class _Slot:
    """Where one of our tensors lies in a row: columns [start, end), Keras shape, our name."""

    name: str
    start: int
    end: int
    shape: tuple[int, ...]


def _read_layout(path: Path) -> list[_Slot]:
    """Our tensors' places in a row (in PRep order), from ``layout.csv``; one line for any other network."""
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is missing: expected {_WHAT}")
    rows = _csv_rows(path, ("varname", "start_idx", "end_idx", "shape"))
    entries = []
    for n, r in rows:
        where = f"{path}:{n}"
        m = _SHAPE.match(r["shape"].strip())
        try:
            start, end = int(r["start_idx"]), int(r["end_idx"])
        except ValueError:
            raise ValueError(f"{where}: start_idx and end_idx must be ints, found {r['start_idx']!r}, "
                             f"{r['end_idx']!r}") from None
        if m is None:
            raise ValueError(f"{where}: shape must be a tuple of ints such as (3, 3, 1, 16), found {r['shape']!r}")
        shape = tuple(int(d) for d in re.findall(r"\d+", r["shape"]))
        if end - start != math.prod(shape) or start < 0:
            raise ValueError(f"{where}: columns [{start}, {end}) do not hold a tensor of shape {shape}")
        kind = r["varname"].rsplit("/", 1)[-1]
        if kind not in ("kernel:0", "bias:0"):
            raise ValueError(f"{where}: varname {r['varname']!r} is neither a kernel:0 nor a bias:0 variable")
        entries.append((r["varname"].rsplit("/", 1)[0], kind, start, end, shape))
    spans = sorted((s, e) for *_, s, e, _ in entries)
    if [s for s, _ in spans] != [0] + [e for _, e in spans[:-1]]:
        raise ValueError(f"{str(path)!r}: the variables do not tile the columns 0 .. {spans[-1][1] if spans else 0} "
                         f"without gaps or overlaps")
    layers: dict[str, dict[str, tuple[int, int, tuple[int, ...]]]] = {}
    for prefix, kind, start, end, shape in entries:
        layers.setdefault(prefix, {})[kind] = (start, end, shape)
    order = sorted(layers, key=lambda k: min(v[0] for v in layers[k].values()))
    found = [(layers[k].get("kernel:0", (0, 0, None))[2], layers[k].get("bias:0", (0, 0, None))[2]) for k in order]
    expected = [(shape, (shape[-1],)) for _, shape in _LAYERS]
    if found != expected:
        raise ValueError(f"{str(path)!r}: describes kernels and biases {found}, not the Small CNN Zoo's CNN "
                         f"{expected} (three 3x3 convs of 16 units on one channel, dense 16 -> 10)")
    slots = []
    for (name, _), prefix in zip(_LAYERS, order):
        k, b = layers[prefix]["kernel:0"], layers[prefix]["bias:0"]
        slots += [_Slot(f"{name}.weight", *k), _Slot(f"{name}.bias", *b)]
    return slots


def _csv_rows(path: Path, needed) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV file (gzip if its name ends in .gz) that has the ``needed`` columns."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as e:
        raise ValueError(f"{str(path)!r}: not a readable {'gzip ' if path.name.endswith('.gz') else ''}CSV file "
                         f"({e})") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in needed if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{str(path)!r}: no column {', '.join(missing)} (its columns: "
                         f"{', '.join(reader.fieldnames or []) or 'none'})")
    rows = []
    for row in reader:
        if None in row or any(v is None for v in row.values()):
            raise ValueError(f"{path}:{reader.line_num}: expected {len(reader.fieldnames)} fields (a truncated or "
                             f"damaged row)")
        rows.append((reader.line_num, row))
    return rows


def _metrics_path(src: Path) -> Path:
    for name in ("metrics.csv.gz", "metrics.csv"):
        if (src / name).is_file():
            return src / name
    raise ValueError(f"{str(src / 'metrics.csv.gz')!r} is missing (nor is there a metrics.csv): expected {_WHAT}")


def _weights(src: Path, columns: int) -> np.ndarray:
    path = src / "weights.npy"
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is missing: expected {_WHAT}")
    try:
        w = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{str(path)!r} is not a NumPy array file numpy.load(allow_pickle=False) can read "
                         f"({' '.join(str(e).split())})") from None
    if w.ndim != 2 or w.shape[1] != columns or w.dtype.kind != "f":
        raise ValueError(f"{str(path)!r}: expected a float array of shape (checkpoints, {columns}) (layout.csv's "
                         f"columns), found {w.dtype} {w.shape}")
    return w


def _number(row: dict, key: str, where: str) -> float:
    try:
        return float(row[key]) if row.get(key, "") != "" else math.nan
    except ValueError:
        raise ValueError(f"{where}: {key} must be a number, found {row[key]!r}") from None


def _state(weights: np.ndarray, row: int, slots: list[_Slot]) -> dict[str, torch.Tensor]:
    """Row ``row`` as our network's state dict (Keras kernels transposed to PyTorch's layout)."""
    flat = torch.from_numpy(np.array(weights[row], dtype=np.float32))
    state = {}
    for s in slots:
        t = flat[s.start:s.end].reshape(s.shape)
        if t.ndim == 4:
            t = t.permute(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
        elif t.ndim == 2:
            t = t.t()
        state[s.name] = t.contiguous()
    return state


def _nfn_split(groups: list[str]) -> dict[str, str]:
    """NFN's ``ZooDataset._split_indices_iid`` over ``groups`` (module doc)."""
    half = int(0.5 * len(groups))
    first = list(range(half))
    random.Random(0).shuffle(first)
    cut = int(0.8 * len(first))
    where = {g: "test" for g in groups[half:]}
    where.update({groups[i]: "train" if k < cut else "val" for k, i in enumerate(first)})
    return where


def import_smallcnnzoo(src, out, *, epochs="last", split: str = "theirs", seed: int = 0,
                       max_weight: float | None = None, dataset: str | None = None,
                       log: Callable[[str], None] | None = None):
    """Import the Small CNN Zoo folder ``src`` (module doc) into our zoo ``out``; returns the opened
    :class:`netspace_fast.zoo.format.Zoo`. ``epochs``, ``split``, ``seed``, ``max_weight``:
    :mod:`.members`. ``dataset``: ours for the rows' ``config.dataset``."""
    chosen = check_options(epochs, split, seed, max_weight, dataset)
    out = check_out(out)
    src = check_source_dir(src, _WHAT)
    log = log or (lambda msg: None)
    slots = _read_layout(src / "layout.csv")
    metrics = _metrics_path(src)
    rows = _csv_rows(metrics, _NEEDED)
    weights = _weights(src, max(s.end for s in slots))
    if len(rows) != len(weights):
        raise ValueError(f"{str(metrics)!r} has {len(rows)} rows for the {len(weights)} rows of weights.npy; "
                         f"expected one metrics row per checkpoint")
    if not rows:
        raise ValueError(f"{str(metrics)!r}: no rows; expected one per checkpoint")

    theirs = {r["config.dataset"] for _, r in rows}
    if len(theirs) != 1:
        raise ValueError(f"{str(metrics)!r}: rows of different datasets ({', '.join(sorted(theirs))}); expected one")
    (their,) = theirs
    if dataset is None:
        if SMALLCNNZOO_DATASETS.get(their) is None:
            raise ValueError(f"{str(metrics)!r}: config.dataset {their!r} is not a dataset netspace_fast reads "
                             f"(it reads {', '.join(k for k, v in SMALLCNNZOO_DATASETS.items() if v)}); "
                             f"--dataset names ours for it")
        dataset, side = SMALLCNNZOO_DATASETS[their]
    else:
        side = _SIDES[dataset]
    geometry = data.ImageGeometry(1, side, (0.5,), (0.5,))

    runs: dict[str, dict] = {}
    steps: dict[str, dict[int, int]] = {}
    for index, (n, r) in enumerate(rows):
        where = f"{metrics}:{n}"
        run = r.get("modeldir") or f"row{index}"
        try:
            step = int(r["step"])
        except ValueError:
            raise ValueError(f"{where}: step must be an int, found {r['step']!r}") from None
        if step in steps.setdefault(run, {}):
            raise ValueError(f"{where}: a second checkpoint of run {run!r} at step {step}")
        steps[run][step] = index
        config = {k: v for k, v in r.items() if k.startswith("config.")}
        if runs.setdefault(run, config) != config:
            raise ValueError(f"{where}: run {run!r} has another config.* than on its first row")
    members = []
    for run, by_step in steps.items():
        for step in choose_epochs(by_step, chosen, f"run {run!r}"):
            index = by_step[step]
            n, r = rows[index]
            where = f"{metrics}:{n}"
            act = r["config.activation"]
            if act not in nets.SMALLCNNZOO_ACTIVATIONS:
                raise ValueError(f"{where}: config.activation {act!r} is not one of "
                                 f"{', '.join(nets.SMALLCNNZOO_ACTIVATIONS)}")
            acc = {s: _number(r, f"{s}_accuracy", where) for s in ("train", "test")}
            for s, v in acc.items():
                if math.isfinite(v) and not 0 <= v <= 1:
                    raise ValueError(f"{where}: {s}_accuracy must be in [0, 1], found {v!r}")
            losses = [_number(r, k, where) for k in ("train_loss", "test_loss") if k in r]
            diverged = not all(math.isfinite(v) for v in [*acc.values(), *losses])
            seed_of = r.get("config.random_seed", "")
            members.append(Member(f"row{index:06d}-e{step:03d}", nets.smallcnnzoo_name(act, side), run, str(index),
                                  step, int(seed_of) if seed_of.isdigit() else None,
                                  {"train": acc["train"] if math.isfinite(acc["train"]) else None, "val": None,
                                   "test": acc["test"] if math.isfinite(acc["test"]) else None}, diverged))
    register_archs({m.arch for m in members}, dataset, geometry)
    config = {"import": "smallcnnzoo", "source": str(src), "dataset": dataset, "geometry": geometry.to_json(),
              "epochs": chosen if isinstance(chosen, str) else list(chosen),
              "layout": [[s.name, s.start, s.end, list(s.shape)] for s in slots], "runs": jsonable(runs)}
    return finish_import(out, members, lambda m: _state(weights, int(m.source), slots), config=config,
                         record=lambda m: {"run": m.group, "row": int(m.source)}, theirs=_nfn_split(list(steps)),
                         split=split, seed=seed, max_weight=max_weight, protocol="smallcnnzoo", log=log)
