"""Import an HSG-AIML Model Zoo (Schuerholt et al., "Model Zoos", NeurIPS 2022 Datasets and
Benchmarks; ModelZoos/ModelZooDataset) into one of our zoos: ``netspace zoo import --format modelzoo``.

The layout, as their Ray Tune trainable (``code/model_definitions/def_NN_experiment.py``) writes it
and their loader (``code/checkpoints_to_datasets/dataset_base.py``) reads it: the zoo is a folder of
trial folders (with the experiment's own files beside them: ``config.json``, ``dataset.pt``, Ray's
state files; none of them is read here), and a trial folder holds

- ``params.json``: the trial's config, ``model::type`` (``CNN``, ``CNN2``, ``CNN3``, ``Resnet18``),
  ``model::channels_in``, ``model::nlin``, ``model::dropout``, ``model::o_dim``, ``seed``, the
  optimizer's and training's settings, and ``dataset::dump``, the path of the dataset file it was
  trained on (``.../zoos/F_MNIST/tune_zoo_f_mnist_uniform/dataset.pt``);
- ``result.json``: one JSON object a line, one line per epoch: ``training_iteration`` (0 for the
  untrained network, then 1, 2, ...), ``train_acc``, ``test_acc``, ``train_loss``, ``test_loss``, and
  ``val_acc`` / ``val_loss`` where the trial had a validation set;
- ``checkpoint_<epoch>`` or ``checkpoint_<epoch:06d>`` folders (the plain name first, as their
  loader) holding ``checkpoints``: ``torch.save`` of the network's state dict (keys
  ``module_list.<i>.weight`` ..., :mod:`.nets`), read with ``torch.load(weights_only=True)``.
  Nothing is ever unpickled: a file that needs more (``params.pkl``, ``.tune_metadata``, a pickled
  object) is never read, or refused in one line naming it.

A subfolder with none of the three is not a trial (and ignored); a trial lacking one of them, a line
of ``result.json`` that is not a JSON object (truncated), an epoch without its line, a checkpoint that
does not fit the architecture its ``params.json`` names: each is one error naming the file, before
anything is written.

Each member's architecture comes from its trial's config (:func:`netspace_fast.zoo.public.nets.
modelzoo_name`), its accuracies (``train_acc``, ``val_acc``, ``test_acc``) from the ``result.json``
line whose ``training_iteration`` is its epoch, its seed from ``seed``; its id is the trial folder's
name (characters other than letters, digits, '.', '_', '-' made '_') and ``-e<epoch>``.

**Their data, as they trained on it**: the dataset is told by the config's ``dataset::dump`` (else
the zoo folder's name): ``F_MNIST`` / fashion is Fashion-MNIST, ``MNIST`` MNIST, ``CIFAR10`` CIFAR-10
(or ``dataset``); other datasets of theirs (SVHN, USPS, STL-10, CIFAR-100, Tiny-ImageNet, EuroSAT) are
refused: this package does not read them. The image geometry is recorded in the zoo's config
(:class:`netspace_fast.data.ImageGeometry`), as their zoo generators (``code/zoo_generators/``) make
the images: ``model::channels_in`` channels, 28x28 for CNN / CNN2 (CIFAR-10 resized to 28 by their
``transforms.Resize``; here: bilinear with antialiasing), 32x32 for CNN3 and Resnet18; normalized
with mean 0.1307 / std 0.3081 for MNIST, 0.5 / 0.5 for Fashion-MNIST and CIFAR-10, and (125.3, 123.0,
113.9) / 255, (63.0, 62.1, 66.7) / 255 for the CIFAR-10 ResNet-18s.

**Their split** (``split="theirs"``): the trial folders, sorted by name, shuffled by
``random.Random(42)`` and cut 70/15/15 (``int(0.7 n)`` train, ``int(0.15 n)`` val, the rest test), as
their loader does (it shuffles ``Path.iterdir()``'s order, which depends on the file system: the
sort makes it one order everywhere). Epochs, filters, ``"ours"`` and writing: :mod:`.members`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ... import data
from ...storage import load_state_dict_file
from . import nets
from .members import (Member, check_options, check_out, check_source_dir, choose_epochs, finish_import, jsonable,
                      register_archs, safe_id, state_problem, their_fractions_split)

__all__ = ["import_modelzoo", "modelzoo_geometry"]

_WHAT = "an HSG-AIML Model Zoo (Ray Tune trial folders with params.json, result.json, checkpoint_<epoch>/)"
_CHECKPOINT = re.compile(r"^checkpoint_(\d+)$")
_STATE_FILE = "checkpoints"
_THEIR_SPLIT = ((0.7, 0.15), 42)
#: the names that tell a dataset in their paths (the first found, in this order, not inside a longer word:
#: 'castle' holds no 'stl', 'emnist' no 'mnist') -> ours, or None: a dataset of theirs not read here
_DATASET_TOKENS = (("cifar100", None), ("cifar10", "cifar10"), ("f_mnist", "fashion-mnist"),
                   ("fashion_mnist", "fashion-mnist"), ("fashion-mnist", "fashion-mnist"),
                   ("fashionmnist", "fashion-mnist"), ("fmnist", "fashion-mnist"), ("mnist", "mnist"), ("svhn", None),
                   ("usps", None), ("stl", None), ("tinyimagenet", None), ("tiny-imagenet", None),
                   ("tiny_imagenet", None), ("eurosat", None))
#: dataset -> per-channel (mean, std) of their zoo generators' transforms.Normalize (ResNet-18: below)
_NORMALIZE = {"mnist": (0.1307, 0.3081), "fashion-mnist": (0.5, 0.5), "cifar10": (0.5, 0.5)}
_RESNET_NORMALIZE = {"cifar10": ((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255))}


# ---------------------------------------------------------------------------------------------
# reading one trial


def _read_params(trial: Path) -> dict:
    path = trial / "params.json"
    if not path.is_file():
        raise ValueError(f"{str(trial)!r}: no params.json (the trial's config); expected {_WHAT}")
    try:
        params = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{str(path)!r}: not a JSON object ({e})") from None
    if not isinstance(params, dict):
        raise ValueError(f"{str(path)!r}: expected a JSON object (the trial's config), found {type(params).__name__}")
    return params


def _arch_of(params: dict, where: str) -> tuple[str, str, int]:
    """(architecture name, model::type, channels) from a trial's config, as their ``NNmodule`` builds it."""
    kind = params.get("model::type")
    kinds = (*nets.MODELZOO_KINDS, "Resnet18")
    if kind not in kinds:
        raise ValueError(f"{where}: model::type {kind!r} is not one of {', '.join(kinds)} (the Model Zoos' networks "
                         f"this importer builds)")
    channels = params.get("model::channels_in")
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ValueError(f"{where}: model::channels_in must be 1 or 3, found {channels!r}")
    if kind == "Resnet18":
        classes = params.get("model::o_dim")
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
            raise ValueError(f"{where}: model::o_dim (the ResNet-18's classes) must be a positive int, found "
                             f"{classes!r}")
        return nets.modelzoo_name(kind, "relu", channels, classes=classes), kind, channels
    nlin = params.get("model::nlin")
    if nlin not in nets.MODELZOO_ACTIVATIONS:
        raise ValueError(f"{where}: model::nlin {nlin!r} is not one of {', '.join(nets.MODELZOO_ACTIVATIONS)}")
    dropout = params.get("model::dropout", 0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"{where}: model::dropout must be a number in [0, 1), found {dropout!r}")
    return nets.modelzoo_name(kind, nlin, channels, dropout > 0), kind, channels


def _dataset_in(text: str) -> tuple[str, str | None] | None:
    """(name, our dataset or None) of the first dataset name in ``text`` (see _DATASET_TOKENS), or None."""
    low = text.lower()
    return next(((tok, ours) for tok, ours in _DATASET_TOKENS
                 if re.search(rf"(?<![a-z]){re.escape(tok)}(?![a-z])", low)), None)


def _read_results(trial: Path) -> dict[int, tuple[dict, str]]:
    """training_iteration -> (the result line, 'result.json:<line>')."""
    path = trial / "result.json"
    if not path.is_file():
        raise ValueError(f"{str(trial)!r}: no result.json (one JSON line per epoch: test_acc, train_acc, "
                         f"training_iteration, ...); expected {_WHAT}")
    out: dict[int, tuple[dict, str]] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{str(path)!r}: not a text file ({e})") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            shown = line if len(line) <= 60 else line[:57] + "..."
            raise ValueError(f"{where}: not a JSON object (a truncated or damaged line): {shown!r}") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object, found {type(row).__name__}")
        it = row.get("training_iteration")
        if isinstance(it, bool) or not isinstance(it, int) or it < 0:
            raise ValueError(f"{where}: training_iteration must be an int >= 0, found {it!r}")
        if it in out:
            raise ValueError(f"{where}: a second line for training_iteration {it} (the first: {out[it][1]})")
        out[it] = (row, where)
    return out


#: what their trainable records for a metric it has not measured (the training metrics of
#: ``training_iteration`` 0, the untrained network): not recorded here
_NOT_MEASURED = -999


def _recorded(row: dict, where: str) -> tuple[dict[str, float | None], bool]:
    """(train / val / test accuracy, diverged) of a result line: a non-finite loss or accuracy is diverged;
    their ``-999`` (not measured) is not recorded (None)."""
    acc: dict[str, float | None] = {}
    diverged = False
    for split, key in (("train", "train_acc"), ("val", "val_acc"), ("test", "test_acc")):
        v = row.get(key)
        if v is None and split != "val":
            raise ValueError(f"{where}: no {key!r} (the accuracies their trainable records every epoch)")
        if v == _NOT_MEASURED and not isinstance(v, bool):
            acc[split] = None
            continue
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ValueError(f"{where}: {key} must be a number, found {v!r}")
        if v is not None and math.isfinite(v) and not 0 <= v <= 1:
            raise ValueError(f"{where}: {key} must be an accuracy in [0, 1], found {v!r}")
        finite = v is not None and math.isfinite(v)
        diverged |= v is not None and not finite
        acc[split] = float(v) if finite else None
    for key in ("train_loss", "val_loss", "test_loss"):
        v = row.get(key)
        diverged |= isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v)
    return acc, diverged


def _checkpoints(trial: Path) -> dict[int, Path]:
    """epoch -> its state dict file (``checkpoint_<e>`` before ``checkpoint_<e:06d>``, as their loader)."""
    found: dict[int, Path] = {}
    for p in sorted(trial.iterdir(), key=lambda q: (len(q.name), q.name)):  # the plain name first
        m = _CHECKPOINT.match(p.name)
        if m and p.is_dir():
            found.setdefault(int(m.group(1)), p / _STATE_FILE)
    if not found:
        raise ValueError(f"{str(trial)!r}: no checkpoint_<epoch> folders; expected {_WHAT}")
    return found


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict saved with ``torch.save``, read with ``weights_only=True``; one line naming the file
    for anything else."""
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is missing: expected the state dict their trainable saves in each "
                         f"checkpoint folder (a file named {_STATE_FILE!r})")
    return load_state_dict_file(path, repr(str(path)))


def _is_trial(p: Path) -> bool:
    return p.is_dir() and ((p / "params.json").exists() or (p / "result.json").exists()
                           or any(_CHECKPOINT.match(q.name) for q in p.iterdir()))


# ---------------------------------------------------------------------------------------------
# the zoo


def modelzoo_geometry(kind: str, channels: int, dataset: str) -> data.ImageGeometry:
    """The images their networks of ``kind`` with ``channels`` inputs were trained on (module doc)."""
    side = 32 if kind == "Resnet18" else nets.MODELZOO_KINDS[kind][2]
    if kind == "Resnet18" and dataset in _RESNET_NORMALIZE:
        mean, std = _RESNET_NORMALIZE[dataset]
        if channels == 3:
            return data.ImageGeometry(3, side, mean, std)
    mean, std = _NORMALIZE[dataset]
    return data.ImageGeometry(channels, side, (mean,) * channels, (std,) * channels)


def _dataset(src: Path, trials: dict[str, dict], dataset: str | None) -> str:
    if dataset is not None:
        return dataset
    told: dict[str, str] = {}
    for name, params in trials.items():
        dump = params.get("dataset::dump")
        text, what = (str(dump), f"{name}/params.json dataset::dump {str(dump)!r}") if dump else (src.name, None)
        hit = _dataset_in(text)
        if hit is None:
            raise ValueError(f"{str(src)!r}: cannot tell the dataset of trial {name!r} from "
                             f"{what or f'the zoo folder name {src.name!r}'}; pass --dataset (fashion-mnist, mnist "
                             f"or cifar10)")
        token, ours = hit
        if ours is None:
            raise ValueError(f"{str(src)!r}: trial {name!r} was trained on {token!r} data "
                             f"({what or f'the zoo folder name {src.name!r}'}); netspace_fast reads Fashion-MNIST, "
                             f"MNIST and CIFAR-10 only")
        told[name] = ours
    found = sorted(set(told.values()))
    if len(found) != 1:
        raise ValueError(f"{str(src)!r}: its trials were trained on different datasets ({', '.join(found)}); expected "
                         f"one zoo of one dataset")
    return found[0]


def import_modelzoo(src, out, *, epochs="last", split: str = "theirs", seed: int = 0, max_weight: float | None = None,
                    dataset: str | None = None, log: Callable[[str], None] | None = None):
    """Import the Model Zoo in folder ``src`` (module doc) into our zoo ``out``; returns the opened
    :class:`netspace_fast.zoo.format.Zoo`. ``epochs``, ``split`` ("theirs" or "ours", ``seed`` for
    ours), ``max_weight``: :mod:`.members`. ``dataset``: ours for their data when their paths do not
    tell it."""
    chosen = check_options(epochs, split, seed, max_weight, dataset)
    out = check_out(out)
    src = check_source_dir(src, _WHAT)
    log = log or (lambda msg: None)
    folders = [p for p in sorted(src.iterdir(), key=lambda q: q.name) if _is_trial(p)]
    if not folders:
        raise ValueError(f"src: {str(src)!r} holds no trial folders; expected {_WHAT}")
    trials = {p.name: _read_params(p) for p in folders}
    ds = _dataset(src, trials, dataset)
    members: list[Member] = []
    kinds: dict[str, tuple[str, int]] = {}
    for p in folders:
        params = trials[p.name]
        arch, kind, channels = _arch_of(params, f"{p / 'params.json'}")
        kinds[arch] = (kind, channels)
        results = _read_results(p)
        checkpoints = _checkpoints(p)
        seed_of = params.get("seed")
        for epoch in choose_epochs(checkpoints, chosen, f"trial {str(p)!r}"):
            if epoch not in results:
                raise ValueError(f"{p / 'result.json'}: no line with training_iteration {epoch} (the epoch of "
                                 f"{checkpoints[epoch].parent.name})")
            acc, diverged = _recorded(*results[epoch])
            members.append(Member(f"{safe_id(p.name)}-e{epoch:03d}", arch, p.name,
                                  str(checkpoints[epoch].relative_to(src)), epoch,
                                  seed_of if isinstance(seed_of, int) and not isinstance(seed_of, bool)
                                  and seed_of >= 0 else None, acc, diverged))
    geometries = {modelzoo_geometry(k, c, ds) for k, c in kinds.values()}
    if len(geometries) != 1:
        raise ValueError(f"{str(src)!r}: its trials take images of different geometries ({sorted(kinds)}); expected "
                         f"one zoo of one input geometry")
    geometry = geometries.pop()
    register_archs(kinds, ds, geometry)
    _refuse_duplicate_ids(members)
    (fractions, their_seed) = _THEIR_SPLIT
    config = {"import": "modelzoo", "source": str(src), "dataset": ds, "geometry": geometry.to_json(),
              "epochs": chosen if isinstance(chosen, str) else list(chosen), "trials": jsonable(trials)}
    return finish_import(out, members, lambda m: _load(src, m, ds), config=config,
                         record=lambda m: {"trial": m.group, "checkpoint": m.source},
                         theirs=their_fractions_split([p.name for p in folders], fractions, their_seed), split=split,
                         seed=seed, max_weight=max_weight, protocol="modelzoo", log=log)


def _refuse_duplicate_ids(members: list[Member]) -> None:
    first: dict[str, Member] = {}
    for m in members:
        if m.id in first:
            raise ValueError(f"trials {first[m.id].group!r} and {m.group!r} would both be instance {m.id!r}; expected "
                             f"trial folder names that differ in more than punctuation")
        first[m.id] = m


def _load(src: Path, m: Member, dataset: str) -> dict[str, Any]:
    path = src / m.source
    state = read_state(path)
    problem = state_problem(state, m.arch, dataset)
    if problem:
        raise ValueError(f"{str(path)!r}: the state dict does not fit {m.arch} (the network trial {m.group!r}'s "
                         f"params.json names): {problem}")
    return state
