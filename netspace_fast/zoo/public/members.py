"""The members of an imported public zoo: which checkpoints (epochs), which are left out (non-finite or
diverged), which split each goes to, and writing them as one of our zoos. Both importers
(:mod:`.modelzoo`, :mod:`.smallcnnzoo`) read their source into :class:`Member` records and hand them
here; the rules below are the ones both document.

- **Epochs** (``epochs``): ``"last"`` (each trial's or run's last checkpoint, the default), ``"all"``,
  or a list of epochs (``"0,10,50"``; each must exist in every trial or run).
- **Left out**, counted and said in one line: a checkpoint holding NaN or Inf, and a *diverged* one:
  the source recorded a non-finite loss or accuracy for it, or (with ``max_weight``) a weight's
  magnitude exceeds ``max_weight`` (their loader's ``weight_threshold``). Nothing left: an error.
- **Splits** (``split``): ``"theirs"``, the source's own rule over trials or runs (every checkpoint of
  one trial in one split; :mod:`.modelzoo`, :mod:`.smallcnnzoo` say which), or ``"ours"``, the rule
  of our own zoos (:mod:`netspace_fast.zoo.job`): a permutation of the members drawn from ``seed``,
  val and test ``max(1, round(n * 16 / 132))`` each (the paper's 100:16:16), the rest train.
- **Writing**: everything is read and checked first; then the zoo is created with its config (the
  source, the options, the geometry, every trial's or run's configuration, where every member comes
  from) and each member's file is written atomically, then the manifest.
  Rerunning the same import into the same folder resumes it (members already there are skipped); an
  import with another source or other options is refused. The members are recorded
  :data:`WRITE_BATCH` at a time, one manifest update each (:func:`netspace_fast.zoo.format.write_instances`):
  updating it per member costs ever more as the manifest grows (a Small CNN Zoo import of 1,998
  members on 2 shared cores: 74 ms a member one at a time, 6.2 ms in batches; BENCHMARKS.md,
  "Public model zoos").
"""

from __future__ import annotations

import math
import os
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ... import archs, data
from ..format import MANIFEST_NAME, Zoo, _expected_shapes, _tensors_problem, init_zoo, write_instances

__all__ = ["EPOCHS_RULE", "PUBLIC_DATASETS", "Member", "check_options", "check_out", "check_source_dir", "choose_epochs",
           "finish_import", "jsonable", "ours_split", "register_archs", "safe_id", "screen", "state_problem",
           "their_fractions_split"]

EPOCHS_RULE = "'last', 'all' or a comma-separated list of epochs such as 0,10,50"
#: our datasets that the public zoos were trained on and this package reads (``--dataset``)
PUBLIC_DATASETS = ("fashion-mnist", "mnist", "cifar10")
_EPOCH_LIST = re.compile(r"^\s*\d+(\s*,\s*\d+)*\s*$")
_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]")
#: members recorded per manifest update (:func:`netspace_fast.zoo.format.write_instances`; a progress line each)
WRITE_BATCH = 1000


@dataclass(frozen=True)
class Member:
    """One checkpoint to import: our id, its architecture, where it comes from (``group``: the trial
    or run, which a split of "theirs" keeps together; ``source``: its file or row, for messages and the
    config) and what the source recorded for it."""

    id: str
    arch: str
    group: str
    source: str
    epoch: int
    seed: int | None
    acc: Mapping[str, float | None]  #: train / val / test accuracy as recorded (None: not recorded)
    diverged: bool = False  #: the source recorded a non-finite loss or accuracy for it


def safe_id(text: str, limit: int = 180) -> str:
    """``text`` as (the start of) an instance id: characters other than letters, digits, '.', '_', '-'
    become '_'."""
    s = _BAD_ID_CHARS.sub("_", text)[:limit].lstrip("._-")
    return s or "net"


def check_options(epochs, split: str, seed: int, max_weight, dataset: str | None) -> str | tuple[int, ...]:
    """The importers' options checked before anything is read; returns the epochs as ``"last"``,
    ``"all"`` or a tuple of ints. Each problem is one ValueError/TypeError naming the option."""
    if split not in ("theirs", "ours"):
        raise ValueError(f"split: expected 'theirs' or 'ours', got {split!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    if max_weight is not None and (isinstance(max_weight, bool) or not isinstance(max_weight, (int, float))
                                   or not max_weight > 0 or math.isnan(max_weight)):
        raise ValueError(f"max_weight: expected a positive number (or None: no threshold), got {max_weight!r}")
    if dataset is not None and dataset not in PUBLIC_DATASETS:
        raise ValueError(f"dataset: expected one of {', '.join(PUBLIC_DATASETS)}, got {dataset!r}")
    if isinstance(epochs, str):
        if epochs in ("last", "all"):
            return epochs
        if _EPOCH_LIST.match(epochs):
            return tuple(sorted({int(e) for e in epochs.split(",")}))
    elif isinstance(epochs, Sequence) and epochs and all(
            isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in epochs):
        return tuple(sorted(set(epochs)))
    raise ValueError(f"epochs: expected {EPOCHS_RULE}, got {epochs!r}")


def choose_epochs(available: Iterable[int], epochs: str | tuple[int, ...], where: str) -> list[int]:
    """The epochs of one trial or run to import, of those it has (``available``)."""
    have = sorted(set(available))
    if epochs == "last":
        return have[-1:]
    if epochs == "all":
        return have
    missing = [e for e in epochs if e not in have]
    if missing:
        shown = ", ".join(map(str, have[:12])) + (", ..." if len(have) > 12 else "")
        raise ValueError(f"{where}: no checkpoint of epoch {', '.join(map(str, missing))} (it has {shown or 'none'}); "
                         f"choose --epochs among them, or 'last' / 'all'")
    return list(epochs)


def ours_split(n: int, seed: int) -> list[str]:
    """Our zoos' split of ``n`` members (module doc), in member order."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = max(1, round(n * 16 / 132))
    where = [""] * n
    for pos, i in enumerate(perm):
        where[i] = "val" if pos < k else "test" if pos < 2 * k else "train"
    return where


def their_fractions_split(groups: Sequence[str], fractions: tuple[float, float], seed: int) -> dict[str, str]:
    """``groups`` shuffled by Python's ``random.Random(seed)`` and cut at ``int(f_train * n)`` and
    ``int(f_val * n)`` more: the HSG-AIML Model Zoos' rule (70/15/15, seed 42)."""
    order = list(groups)
    random.Random(seed).shuffle(order)
    n_train = int(fractions[0] * len(order))
    n_val = int(fractions[1] * len(order))
    return {g: "train" if i < n_train else "val" if i < n_train + n_val else "test" for i, g in enumerate(order)}


def state_problem(state: Mapping[str, torch.Tensor], arch: str, dataset: str) -> str | None:
    """How a state dict fails to fit ``arch`` (one line: the first tensor missing, extra, or of another
    shape or dtype, and how many more), None when it fits."""
    return _tensors_problem(state, _expected_shapes(arch, dataset))


def screen(state: Mapping[str, torch.Tensor], max_weight: float | None) -> str | None:
    """``"nonfinite"`` (a NaN or Inf anywhere), ``"diverged"`` (a weight above ``max_weight`` in
    magnitude) or None: keep."""
    floats = [t for t in state.values() if t.is_floating_point()]
    if not all(bool(torch.isfinite(t).all()) for t in floats):
        return "nonfinite"
    if max_weight is not None and any(t.numel() and float(t.abs().max()) > max_weight for t in floats):
        return "diverged"
    return None


def jsonable(value: Any) -> Any:
    """``value`` with non-finite floats written as strings ('nan', 'inf'): a manifest holds finite JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def register_archs(names: Iterable[str], dataset: str, geometry: data.ImageGeometry) -> None:
    """Make each architecture available by name (its factory in :mod:`.nets`); each takes the
    geometry's images and gives the dataset's classes."""
    from . import nets

    classes = data.dataset_info(dataset)[2]
    for arch in sorted(set(names)):
        archs.resolve(f"{nets.__name__}:{arch}")
        spec = archs.spec(arch, dataset)
        assert spec.input_shape == (geometry.channels, geometry.size, geometry.size), (arch, spec, geometry)
        if spec.num_outputs != classes:
            raise ValueError(f"{arch}: {spec.num_outputs} outputs, but {dataset} has {classes} classes")


def finish_import(out, members: Sequence[Member], load: Callable[[Member], dict], *, config: dict,
                  record: Callable[[Member], dict], theirs: Mapping[str, str], split: str, seed: int,
                  max_weight: float | None, protocol: str, log: Callable[[str], None]) -> Zoo:
    """What both importers do once their source is read: ``load`` every member (which checks it),
    leave out the non-finite and the diverged (one line), split the rest (``theirs``: group -> split),
    complete ``config`` (``record``: what the config says of a member) and write the zoo (module doc)."""
    kept, counts = [], {"nonfinite": 0, "diverged": 0}
    for m in members:  # every member read and checked before anything is written
        state = load(m)
        why = "diverged" if m.diverged else screen(state, max_weight)
        if why:
            counts[why] += 1
        else:
            kept.append(m)
    left_out = (f"left out {counts['nonfinite'] + counts['diverged']} of {len(members)} checkpoints: "
                f"{counts['nonfinite']} with NaN/Inf weights, {counts['diverged']} diverged (non-finite recorded loss "
                f"or accuracy{f', or |w| > {max_weight:g}' if max_weight else ''})")
    if not kept:
        raise ValueError(f"{config['source']!r}: every selected checkpoint was left out ({left_out})")
    if len(kept) < len(members):
        log(left_out)
    where = [theirs[m.group] for m in kept] if split == "theirs" else ours_split(len(kept), seed)
    dataset = config["dataset"]
    config = {**config, "split": split, "split_seed": seed if split == "ours" else None, "max_weight": max_weight,
              "left_out": counts, "members": {m.id: record(m) for m in kept},
              "user_archs": _user_archs(sorted({m.arch for m in kept}), dataset)}
    out = Path(out)
    done: set[str] = set()
    if (out / MANIFEST_NAME).is_file():  # resume: the config guard first
        done = {x["id"] for x in init_zoo(out, config)["instances"]}
    init_zoo(out, config)
    pending = [(m, s) for m, s in zip(kept, where) if m.id not in done]

    def instances(part):
        for m, split_of in part:
            model = archs.build(m.arch, dataset)
            model.load_state_dict(load(m), strict=True)
            yield {"model": model.eval(), "id": m.id, "arch": m.arch, "dataset": dataset, "protocol": protocol,
                   "seed": m.seed, "epoch": m.epoch, "acc": dict(m.acc), "split": split_of}

    for start in range(0, len(pending), WRITE_BATCH):  # one manifest update per batch
        write_instances(out, instances(pending[start:start + WRITE_BATCH]))
        if len(pending) > WRITE_BATCH:
            log(f"{min(start + WRITE_BATCH, len(pending))} of {len(pending)} networks written")
    return Zoo.open(out)


def _user_archs(names: list[str], dataset: str) -> dict:
    from ..job import user_archs

    return user_archs(names, dataset)


def check_source_dir(src, what: str) -> Path:
    """``src`` as an existing folder (``what`` names the format in the message)."""
    if not isinstance(src, (str, os.PathLike)):
        raise TypeError(f"src: expected the folder of {what}, got {type(src).__name__}")
    p = Path(src).expanduser()
    if not p.is_dir():
        raise ValueError(f"src: {str(p)!r} is not a folder; expected the folder of {what}")
    return p.resolve()


def check_out(out) -> Path:
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out: expected a directory path, got {type(out).__name__}")
    return Path(out)
