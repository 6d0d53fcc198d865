"""Import the original NetSpace code's model zoo into a netspace_fast zoo.

The original code lists its networks in text files (``models/input_lists/<dataset>/<protocol>/
{train,val,test}.txt``), one network a line::

    class;<typed params>;path/to/file.pt

``class`` is ``lenetlike``, ``vanilla_cnn`` or ``resnet_fusedbn``; each parameter starts with its
type (``d`` int, ``f`` float, ``s`` string, ``l`` list ``[a,b]`` of typed items) and they are the
class's constructor arguments after the network id:

- ``lenetlike;d0;scifar10;...`` and ``vanilla_cnn;d1;scifar10;...``: (ClassId, dataset);
- ``resnet_fusedbn;d2;d8;scifar10;...``: (ClassId, depth, dataset).

Datasets are named ``cifar10`` and ``tiny-imagenet-200`` (ours: ``cifar10``, ``tinyimagenet``).
Each ``.pt`` is a ``torch.save`` of a state dict (the BatchNorm form for the ResNets), read here
with ``torch.load(..., weights_only=True)``; netspace_fast's architectures have the original's
names, so it loads strictly. The split of a network is its list file's name (``train.txt``,
``val.txt``, ``test.txt``: the name must contain exactly one of ``train``, ``val``, ``test``).
Relative ``.pt`` paths resolve against ``base`` (default: the current directory).

Everything is validated before anything is written: every line parsed, every file loaded and
checked against its architecture; the first problem is a ValueError naming the list file, the
line, what was expected and what was found. Accuracies are "not recorded" (None) unless ``root``
gives the dataset: then each network's train/val/test accuracy is evaluated with
:func:`netspace_fast.data.tensors` (our splits, ``seed`` 0: the original carved its validation
set differently, so these are our splits' accuracies). Instance ids come from the ``.pt`` paths
(relative to ``base``, the directories all networks share dropped, ``/`` -> ``-``), e.g.
``multi-resnet8-0``. An import is resumable: rerunning it into the same ``out`` (same lists,
base and root) skips the networks already written; other arguments are refused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import archs
from ..storage import load_state_dict_file

__all__ = ["ORIGINAL_CLASSES", "ORIGINAL_DATASETS", "OriginalEntry", "import_original_zoo", "load_original",
           "parse_list", "split_of_list"]

#: the original's class names -> the parameters after the class (name, type prefix)
ORIGINAL_CLASSES: dict[str, tuple[tuple[str, str], ...]] = {
    "lenetlike": (("ClassId", "d"), ("dataset", "s")),
    "vanilla_cnn": (("ClassId", "d"), ("dataset", "s")),
    "resnet_fusedbn": (("ClassId", "d"), ("depth", "d"), ("dataset", "s")),
}
#: the original's dataset names -> ours
ORIGINAL_DATASETS = {"cifar10": "cifar10", "tiny-imagenet-200": "tinyimagenet"}
_TYPES = {"d": "an int", "f": "a float", "s": "a string", "l": "a list"}
_RESNET_DEPTHS = tuple(int(n[len("resnet"):]) for n in archs.ARCH_NAMES if n.startswith("resnet"))
_SPLIT_WORDS = ("train", "val", "test")
_PROTOCOL = "original"  # the protocol recorded for imported networks


@dataclass(frozen=True)
class OriginalEntry:
    """One network of an original list file."""

    list_file: Path
    line: int
    arch: str
    dataset: str  # ours
    class_id: int
    path: Path  # the .pt file, absolute
    split: str

    @property
    def where(self) -> str:
        return f"{self.list_file}:{self.line}"


# ---------------------------------------------------------------------------------------------
# parsing


def split_of_list(list_file: str | os.PathLike) -> str:
    """The split a list file holds, from its name: it must contain exactly one of train/val/test."""
    name = Path(list_file).name
    found = [w for w in _SPLIT_WORDS if w in name.lower()]
    if len(found) != 1:
        what = "none of them" if not found else f"{' and '.join(repr(w) for w in found)}"
        raise ValueError(f"lists: cannot tell the split of {str(list_file)!r}: expected a file name containing "
                         f"exactly one of 'train', 'val', 'test' (as the original's train.txt, val.txt, test.txt), "
                         f"found {what} in {name!r}")
    return found[0]


def _typed(token: str, where: str) -> tuple[str, Any]:
    """(type prefix, value) of one typed parameter of the original's list format."""
    if len(token) < 2:
        raise ValueError(f"{where}: expected a typed parameter (a type prefix d, f, s or l and its value), found "
                         f"{token!r}")
    t, v = token[0], token[1:]
    if t not in _TYPES:
        raise ValueError(f"{where}: bad type prefix {t!r} in parameter {token!r}; expected one of d (int), f (float), "
                         f"s (string), l (list)")
    try:
        if t == "d":
            return t, int(v)
        if t == "f":
            return t, float(v)
        if t == "l":
            if not (v.startswith("[") and v.endswith("]")):
                raise ValueError
            inner = v[1:-1]
            items = inner.split("*") if "*" in inner else inner.split(",")
            return t, [_typed(item, where)[1] for item in items if item]
    except ValueError as e:
        if str(e).startswith(where):
            raise
        raise ValueError(f"{where}: parameter {token!r}: expected {_TYPES[t]} after the prefix {t!r}, found "
                         f"{v!r}") from None
    return t, v


def _parse_line(text: str, list_file: Path, lineno: int, base: Path, split: str) -> OriginalEntry:
    where = f"{list_file}:{lineno}"
    fields = [f.strip() for f in text.split(";")]
    if len(fields) < 2:
        raise ValueError(f"{where}: expected 'class;<typed params>;path/to/file.pt', found {text!r}")
    cls, params, path = fields[0], fields[1:-1], fields[-1]
    if cls not in ORIGINAL_CLASSES:
        raise ValueError(f"{where}: unknown class {cls!r}; expected one of {', '.join(ORIGINAL_CLASSES)}")
    slots = ORIGINAL_CLASSES[cls]
    wanted = ", ".join(f"{n} ({t})" for n, t in slots)
    if len(params) != len(slots):
        raise ValueError(f"{where}: class {cls!r} expects {len(slots)} parameters between the class and the path "
                         f"({wanted}), found {len(params)}: {params}")
    values: dict[str, Any] = {}
    for (name, want), token in zip(slots, params):
        t, v = _typed(token, where)
        if t != want:
            raise ValueError(f"{where}: parameter {name} of {cls!r}: expected {_TYPES[want]} (prefix {want!r}), found "
                             f"{token!r}")
        values[name] = v
    ds = values["dataset"]
    if ds not in ORIGINAL_DATASETS:
        raise ValueError(f"{where}: unknown dataset {ds!r}; expected one of {', '.join(ORIGINAL_DATASETS)}")
    if cls == "resnet_fusedbn":
        if values["depth"] not in _RESNET_DEPTHS:
            raise ValueError(f"{where}: ResNet depth {values['depth']} is not built by netspace_fast; expected one of "
                             f"{', '.join(map(str, _RESNET_DEPTHS))}")
        arch = f"resnet{values['depth']}"
    else:
        arch = {"lenetlike": "lenetlike", "vanilla_cnn": "vanillacnn"}[cls]
    expected_id = archs.CLASS_IDS.get(arch)  # None (resnet56): the original defines no ClassId to check
    if expected_id is not None and values["ClassId"] != expected_id:
        raise ValueError(f"{where}: ClassId {values['ClassId']} disagrees with the architecture: expected "
                         f"{expected_id} for {arch}, found {values['ClassId']}")
    if not path:
        raise ValueError(f"{where}: expected the path of a .pt file as the last field, found nothing")
    p = Path(path).expanduser()
    resolved = p if p.is_absolute() else base / p
    if not resolved.is_file():
        raise ValueError(f"{where}: network file {path!r} does not exist: expected a file at {str(resolved)!r}"
                         + ("" if p.is_absolute() else f" (relative paths resolve against --base {str(base)!r})"))
    return OriginalEntry(list_file, lineno, arch, ORIGINAL_DATASETS[ds], values["ClassId"], resolved.resolve(),
                         split)


def parse_list(list_file: str | os.PathLike, base: str | os.PathLike | None = None) -> list[OriginalEntry]:
    """The networks of one original list file (blank lines skipped); relative paths against ``base``."""
    if not isinstance(list_file, (str, os.PathLike)):
        raise TypeError(f"lists: expected paths of list files, got {type(list_file).__name__}")
    lf = Path(list_file)
    if not lf.is_file():
        raise ValueError(f"lists: list file {str(lf)!r} does not exist")
    split = split_of_list(lf)
    base_dir = _base_dir(base)
    try:
        text = lf.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"lists: {str(lf)!r} is not a text file ({e})") from None
    return [_parse_line(line.strip(), lf, i, base_dir, split)
            for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def _base_dir(base: str | os.PathLike | None) -> Path:
    if base is None:
        return Path.cwd()
    if not isinstance(base, (str, os.PathLike)):
        raise TypeError(f"base: expected a directory path, got {type(base).__name__}")
    b = Path(base).expanduser()
    if not b.is_dir():
        raise ValueError(f"base: {str(b)!r} is not a directory")
    return b.resolve()


# ---------------------------------------------------------------------------------------------
# loading


def _names(keys: Sequence[str], limit: int = 4) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_original(entry: OriginalEntry) -> archs.SpecNet:
    """The network of ``entry`` (BN form, eval mode), its state dict loaded strictly."""
    where = f"{entry.where}: {str(entry.path)!r}"
    state = load_state_dict_file(entry.path, where)
    model = archs.build(entry.arch, entry.dataset)
    expected = model.state_dict()
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    shapes = [k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected {_names(unexpected)}")
        if shapes:
            k = sorted(shapes)[0]
            parts.append(f"wrong shapes for {_names(shapes)} (e.g. {k}: expected {tuple(expected[k].shape)}, "
                         f"found {tuple(state[k].shape)})")
        raise ValueError(f"{where}: state dict does not load strictly into {entry.arch}/{entry.dataset} "
                         f"(BN form): {'; '.join(parts)}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{where}: state dict does not load into {entry.arch}/{entry.dataset}: "
                         f"{' '.join(str(e).split())[:300]}") from None
    return model.eval()


# ---------------------------------------------------------------------------------------------
# ids


_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def _instance_ids(entries: list[OriginalEntry], base: Path) -> list[str]:
    """Ids from the .pt paths: relative to base, leading directories shared by all dropped (at least
    the file's directory and stem kept), '/' -> '-'."""
    parts = []
    for e in entries:
        try:
            rel = e.path.relative_to(base)
        except ValueError:
            rel = Path(*e.path.parts[1:])
        parts.append(rel.with_suffix("").parts)
    common = 0
    while parts and all(len(p) > common + 2 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    ids = []
    for p in parts:
        s = _BAD_ID_CHARS.sub("_", "-".join(p[common:]))
        s = s[-200:].lstrip("._-") or "net"
        ids.append(s)
    first: dict[str, OriginalEntry] = {}
    for i, e in zip(ids, entries):
        if i in first:
            raise ValueError(f"{e.where}: network {str(e.path)!r} would get the instance id {i!r} of "
                             f"{str(first[i].path)!r} ({first[i].where}); expected distinct file paths")
        first[i] = e
    return ids


# ---------------------------------------------------------------------------------------------
# the import


def _lists(lists: object) -> list[Path]:
    if isinstance(lists, (str, os.PathLike)):
        lists = [lists]
    if not isinstance(lists, Sequence):
        raise TypeError(f"lists: expected a list of list-file paths, got {type(lists).__name__}")
    if not lists:
        raise ValueError("lists: expected one or more list files, got none")
    for x in lists:
        if not isinstance(x, (str, os.PathLike)):
            raise TypeError(f"lists: expected paths of list files, got an element of type {type(x).__name__}")
    return [Path(x) for x in lists]


def _evaluate(entries: list[OriginalEntry], root, seed: int, device: str, chunk: int,
              log: Callable[[str], None]) -> list[dict[str, float]]:
    """Train/val/test accuracy of every entry (batched per architecture, ``chunk`` networks at a time)."""
    from .. import data
    from .loop import evaluate
    from .model import BatchedZooNet

    accs: list[dict[str, float]] = [{} for _ in entries]
    groups: dict[tuple[str, str], list[int]] = {}
    for i, e in enumerate(entries):
        groups.setdefault((e.arch, e.dataset), []).append(i)
    for dataset in dict.fromkeys(ds for _, ds in groups):
        splits = {s: data.tensors(dataset, s, root=root, seed=seed) for s in _SPLIT_WORDS}
        splits = {s: (x.to(device), y.to(device)) for s, (x, y) in splits.items()}
        for (arch, ds), idx in groups.items():
            if ds != dataset:
                continue
            for start in range(0, len(idx), chunk):
                part = idx[start:start + chunk]
                net = BatchedZooNet([load_original(entries[i]) for i in part]).to(device)
                for s, (x, y) in splits.items():
                    for i, a in zip(part, evaluate(net, x, y, batch_size=256).tolist()):
                        accs[i][s] = float(a)
                log(f"{arch}/{ds}: evaluated {min(start + chunk, len(idx))} of {len(idx)}")
    return accs


def import_original_zoo(lists, out, *, root=None, base=None, seed: int = 0, device: str = "cpu", chunk: int = 16,
                        log: Callable[[str], None] | None = None, download: bool = False):
    """Turn the original code's zoo (its list files ``lists``) into the netspace_fast zoo ``out``.

    Returns the opened :class:`netspace_fast.zoo.format.Zoo`. See the module docstring for the
    list format, ids, accuracies (evaluated only with ``root``) and resuming. ``download``: fetch the
    datasets the lists name (CIFAR-10) into ``root`` before evaluating.
    """
    from .format import MANIFEST_NAME, Zoo, init_zoo, write_instances

    list_files = _lists(lists)
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out: expected a directory path, got {type(out).__name__}")
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root: expected a dataset folder path, got {type(root).__name__}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk: expected a positive int, got {chunk!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device: expected a str or torch.device, got {type(device).__name__}")
    log = log or (lambda msg: None)
    base_dir = _base_dir(base)
    out = Path(out)

    entries: list[OriginalEntry] = []
    for lf in list_files:
        entries += parse_list(lf, base_dir)
    if not entries:
        raise ValueError(f"lists: no networks in {', '.join(str(p) for p in list_files)}")
    seen: dict[Path, OriginalEntry] = {}
    for e in entries:
        if e.path in seen:
            raise ValueError(f"{e.where}: network {str(e.path)!r} is listed twice (first at {seen[e.path].where}); "
                             f"expected every network once")
        seen[e.path] = e
    ids = _instance_ids(entries, base_dir)
    for e in entries:  # every file loads strictly before anything is written
        load_original(e)

    config = {"import": "netspace-original", "lists": [str(p.resolve()) for p in list_files],
              "base": str(base_dir), "root": None if root is None else str(Path(root).expanduser().resolve()),
              "seed": seed if root is not None else None,
              "sources": {i: str(e.path) for i, e in zip(ids, entries)}}
    done: set[str] = set()
    if (out / MANIFEST_NAME).is_file():  # resume: the config guard runs before any evaluation
        done = {x["id"] for x in init_zoo(out, config)["instances"]}
    pending = [k for k, i in enumerate(ids) if i not in done]
    accs = [{} for _ in entries]
    if root is not None and pending:
        from .. import data

        for ds in dict.fromkeys(entries[k].dataset for k in pending):
            data.fetch(ds, root, download)
        for k, a in zip(pending, _evaluate([entries[k] for k in pending], root, seed, device, chunk, log)):
            accs[k] = a
    init_zoo(out, config)
    write_instances(out, ({"model": load_original(entries[k]), "id": ids[k], "arch": entries[k].arch,
                           "dataset": entries[k].dataset, "protocol": _PROTOCOL, "seed": None, "epoch": None,
                           "acc": accs[k], "split": entries[k].split} for k in pending))
    return Zoo.open(out)
