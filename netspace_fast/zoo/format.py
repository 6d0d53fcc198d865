"""The on-disk model zoo format.

A zoo is a directory holding

- ``manifest.json``: the schema version, the ``config`` the producing job was given (the resume
  guard), one entry per instance (id, architecture, dataset, class_id, protocol, seed, epoch,
  train/val/test accuracy, parameter count, file, sha256, split) and the train/val/test split as
  lists of instance ids;
- optional per-instance fields of SDF zoos (``netspace zoo fit-sdf``, :mod:`netspace_fast.sdf`):
  ``shape`` (the shape the SIREN was fitted to, as named at its source), ``sdf_mse`` and
  ``sdf_within_0.01`` (MSE and fraction of held-out points with |prediction - sdf| <= 0.01). Entries
  without them (every classification zoo) are unchanged; when present, all three are.
- one ``<id>.safetensors`` file per instance: the state dict of the network *as trained* (the
  BatchNorm form, buffers such as running statistics and ``num_batches_tracked`` included). The
  folded (BN-free) form is derived on load (:meth:`Zoo.model` with ``folded=True``).

Schema versions: 2 (written now) stores the state dicts under the original NetSpace code's names
(torchvision's ``downsample`` in the ResNets, ``layers.0`` .. ``layers.5`` in VanillaCNN; see
:mod:`netspace_fast.archs`). Version 1 zoos (``shortcut`` and ``conv1`` .. ``conv5``/``fc``) stay
readable: their keys are mapped to today's names on load. Writing into a version 1 zoo is refused
(it would mix the two namings); write a new zoo instead.

Every file is written atomically: a temporary file in the same directory is written, flushed and
fsynced, moved over the target with :func:`os.replace`, and the directory is fsynced. A crash at
any point leaves either the previous or the new version of each file, never a partial one.
Manifest updates are read-modify-write under an advisory lock (``flock`` on the zoo directory), so
concurrent writers on one machine do not lose each other's entries.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load, save as st_save
from torch import nn

from .. import archs
from ..prep import fold_bn, pack_preps
from ..storage import TMP_PREFIX, config_differences, atomic_write_bytes, locked, sha256_bytes, sha256_file

__all__ = [
    "MANIFEST_NAME",
    "READABLE_SCHEMA_VERSIONS",
    "SCHEMA_VERSION",
    "SDF_FIELDS",
    "SPLITS",
    "Zoo",
    "init_zoo",
    "write_instance",
    "write_instances",
]

SCHEMA_VERSION = 2
#: versions this module reads (older ones are mapped to today's parameter names on load)
READABLE_SCHEMA_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val", "test")
_SUFFIX = ".safetensors"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
#: optional fields of an SDF zoo's entries: all three or none
SDF_FIELDS = ("shape", "sdf_mse", "sdf_within_0.01")
_ENTRY_KEYS = ("id", "architecture", "dataset", "class_id", "protocol", "seed", "epoch", "train_acc", "val_acc",
               "test_acc", "num_params", "file", "sha256", "split")


# ---------------------------------------------------------------------------------------------
# manifest reading / validation


def _normalize_json(value: Any, name: str) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, ...); TypeError if not representable."""
    try:
        return json.loads(json.dumps(value, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: must be JSON-serializable (finite numbers, str keys): {e}") from None


def _empty_manifest(config: Any) -> dict:
    return {"schema_version": SCHEMA_VERSION, "config": config, "instances": [],
            "splits": {s: [] for s in SPLITS}}


def _manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=1, sort_keys=False, allow_nan=False) + "\n").encode()


def _validate_manifest(manifest: Any, path: Path, check_fields: bool = True) -> dict:
    """``manifest`` if it is a readable zoo manifest, else one ValueError line naming ``path`` and
    what is wrong. ``check_fields=False``: the structure only (ids, files, splits), not the fields'
    types and ranges (:func:`_entry_field_problems`; for :meth:`Zoo.verify` to list them all)."""

    def bad(msg: str) -> ValueError:
        return ValueError(f"{path}: malformed zoo manifest: {msg}")

    if not isinstance(manifest, dict):
        raise bad(f"expected a JSON object, got {type(manifest).__name__}")
    if "schema_version" not in manifest:
        raise bad("no 'schema_version' field")
    version = manifest["schema_version"]
    if isinstance(version, bool) or version not in READABLE_SCHEMA_VERSIONS:
        raise ValueError(f"{path}: unknown zoo schema version {version!r}; this netspace_fast reads versions "
                         f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))}")
    for key in ("config", "instances", "splits"):
        if key not in manifest:
            raise bad(f"no {key!r} field")
    instances = manifest["instances"]
    if not isinstance(instances, list):
        raise bad("'instances' must be a list")
    ids: set[str] = set()
    for i, entry in enumerate(instances):
        if not isinstance(entry, dict):
            raise bad(f"instances[{i}] is not an object")
        missing = [k for k in _ENTRY_KEYS if k not in entry]
        if missing:
            raise bad(f"instances[{i}] lacks {', '.join(missing)}")
        if not isinstance(entry["id"], str) or not _ID_RE.match(entry["id"]):
            raise bad(f"instances[{i}] has an invalid id {entry['id']!r}")
        if entry["id"] in ids:
            raise bad(f"duplicate instance id {entry['id']!r}")
        if entry["file"] != entry["id"] + _SUFFIX:
            raise bad(f"instance {entry['id']!r}: file {entry['file']!r} is not {entry['id'] + _SUFFIX!r}")
        if entry["split"] not in SPLITS:
            raise bad(f"instance {entry['id']!r}: split {entry['split']!r} is not one of {SPLITS}")
        if check_fields:
            problems = _entry_field_problems(entry)
            if problems:
                raise bad(f"instance {entry['id']!r}: {problems[0]}"
                          + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
        ids.add(entry["id"])
    splits = manifest["splits"]
    if not isinstance(splits, dict) or set(splits) != set(SPLITS):
        raise bad(f"'splits' must be an object with exactly the keys {SPLITS}")
    seen: set[str] = set()
    for s in SPLITS:
        if not isinstance(splits[s], list) or not all(isinstance(x, str) for x in splits[s]):
            raise bad(f"splits[{s!r}] must be a list of instance ids")
        for x in splits[s]:
            if x not in ids:
                raise bad(f"splits[{s!r}] names {x!r}, which is not an instance")
            if x in seen:
                raise bad(f"instance {x!r} appears in more than one split (or twice)")
            seen.add(x)
    by_id = {e["id"]: e for e in instances}
    for s in SPLITS:
        for x in splits[s]:
            if by_id[x]["split"] != s:
                raise bad(f"instance {x!r} is listed in split {s!r} but its entry says {by_id[x]['split']!r}")
    if seen != ids:
        raise bad(f"instances missing from 'splits': {sorted(ids - seen)}")
    return manifest


def _expected_number(kind: str, low: float | None, high: float | None) -> str:
    """How :func:`_check_finite_number` / :func:`_check_int` name what they accept ("an int >= 0", ...)."""
    what = "a finite number" if kind == "number" else "an int"
    if low is not None and high is not None:
        return f"{what} in [{low:g}, {high:g}]"
    if low is not None:
        return f"{what} >= {low:g}"
    return f"{what} <= {high:g}" if high is not None else what


def _check_finite_number(value: Any, name: str, *, low: float | None = None, high: float | None = None) -> float:
    """``value`` as a float; TypeError if it is no finite number, ValueError if outside [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name}: expected {_expected_number('number', low, high)}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name}: expected {_expected_number('number', low, high)}, got {value!r}")
    return float(value)


def _check_int(value: Any, name: str, *, low: int | None = None) -> int:
    """``value`` (an int, not a bool); TypeError if it is none, ValueError if below ``low``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected {_expected_number('int', low, None)}, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name}: expected {_expected_number('int', low, None)}, got {value!r}")
    return value


#: the numeric fields of a manifest entry: (check, its bounds, may it be null: not recorded). The one
#: rule for them: opening a zoo refuses an entry that breaks it, :meth:`Zoo.verify` lists every
#: break, and :func:`write_instance` writes no entry that breaks it.
_NUMERIC_FIELDS: dict[str, tuple[Any, dict, bool]] = {
    "class_id": (_check_int, {"low": 0}, True),
    "seed": (_check_int, {"low": 0}, True),
    "epoch": (_check_int, {"low": 0}, True),
    "num_params": (_check_int, {"low": 0}, False),
    "train_acc": (_check_finite_number, {"low": 0, "high": 1}, True),
    "val_acc": (_check_finite_number, {"low": 0, "high": 1}, True),
    "test_acc": (_check_finite_number, {"low": 0, "high": 1}, True),
    "sdf_mse": (_check_finite_number, {"low": 0}, False),  # SDF entries only (see SDF_FIELDS)
    "sdf_within_0.01": (_check_finite_number, {"low": 0, "high": 1}, False),
}
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def _number_field_problem(entry: dict, field: str) -> str | None:
    check, bounds, nullable = _NUMERIC_FIELDS[field]
    value = entry[field]
    if value is None and nullable:
        return None
    try:
        check(value, field, **bounds)
    except (TypeError, ValueError):
        kind = "int" if check is _check_int else "number"
        expected = _expected_number(kind, bounds.get("low"), bounds.get("high")) + (" or null" if nullable else "")
        return f"field {field!r}: expected {expected}, got {value!r}"
    return None


def _entry_field_problems(entry: dict) -> list[str]:
    """What is wrong with the typed fields of a manifest entry (the structural ones, id, file and
    split, are checked by :func:`_validate_manifest`): one message per field, naming the field,
    what it must hold and what it holds; empty when all is well."""
    problems = []
    for field in ("architecture", "protocol"):
        if not isinstance(entry[field], str) or not entry[field]:
            problems.append(f"field {field!r}: expected a non-empty string, got {entry[field]!r}")
    if entry["dataset"] is not None and (not isinstance(entry["dataset"], str) or not entry["dataset"]):
        problems.append(f"field 'dataset': expected a non-empty string or null, got {entry['dataset']!r}")
    if not isinstance(entry["sha256"], str) or not _SHA256_RE.match(entry["sha256"]):
        problems.append(f"field 'sha256': expected 64 lowercase hex digits, got {entry['sha256']!r}")
    for field in _NUMERIC_FIELDS:
        if field in _ENTRY_KEYS:
            problem = _number_field_problem(entry, field)
            if problem:
                problems.append(problem)
    problem = _sdf_fields_problem(entry)
    if problem:
        problems.append(problem)
    return problems


def _sdf_fields_problem(entry: dict) -> str | None:
    """What is wrong with the optional SDF fields of a manifest entry (None: absent, or all fine)."""
    present = [k for k in SDF_FIELDS if k in entry]
    if not present:
        return None
    if len(present) != len(SDF_FIELDS):
        return f"has {present} but not {[k for k in SDF_FIELDS if k not in entry]} (SDF fields come together)"
    if not isinstance(entry["shape"], str) or not entry["shape"]:
        return f"field 'shape': expected a non-empty string, got {entry['shape']!r}"
    for field in ("sdf_mse", "sdf_within_0.01"):
        problem = _number_field_problem(entry, field)
        if problem:
            return problem
    return None


def _read_manifest(zoo_dir: Path, check_fields: bool = True) -> dict:
    if not zoo_dir.exists():
        raise FileNotFoundError(f"zoo directory {str(zoo_dir)!r} does not exist")
    if not zoo_dir.is_dir():
        raise NotADirectoryError(f"zoo path {str(zoo_dir)!r} is not a directory")
    path = zoo_dir / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"zoo directory {str(zoo_dir)!r} has no {MANIFEST_NAME} (expected {str(path)!r}); "
                                f"not a zoo, or one whose first instance was never written")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: malformed zoo manifest: not valid JSON ({e})") from None
    return _validate_manifest(manifest, path, check_fields)


# ---------------------------------------------------------------------------------------------
# older schema versions


def _v1_key(arch: str, key: str) -> str:
    """Today's name of state-dict key ``key`` of an ``arch`` instance stored by schema version 1."""
    if arch.startswith("resnet"):
        return key.replace(".shortcut.", ".downsample.")
    if arch == "vanillacnn":
        head, _, rest = key.partition(".")
        if head == "fc":
            return f"layers.5.{rest}"
        if head.startswith("conv") and head[4:].isdigit() and 1 <= int(head[4:]) <= 5:
            return f"layers.{int(head[4:]) - 1}.{rest}"
    return key


def _upgrade_state_dict(state: dict[str, torch.Tensor], arch: str, version: int) -> dict[str, torch.Tensor]:
    """``state`` as stored by schema ``version``, under today's names (keys of schema 1 mapped)."""
    if version >= 2:
        return state
    return {_v1_key(arch, k): v for k, v in state.items()}


def _writable_manifest(zoo: Path) -> dict | None:
    """The zoo's manifest for an update (call under :func:`locked`), None if there is none yet;
    refuses a manifest of an older schema."""
    if not (zoo / MANIFEST_NAME).exists():
        return None
    manifest = _read_manifest(zoo)
    _refuse_old_schema(manifest, zoo)
    return manifest


def _refuse_old_schema(manifest: dict, zoo: Path) -> None:
    version = manifest["schema_version"]
    if version != SCHEMA_VERSION:
        raise ValueError(f"zoo {str(zoo)!r} has schema version {version} (older parameter names); this "
                         f"netspace_fast reads it but writes only version {SCHEMA_VERSION}, and will not mix the "
                         f"two in one zoo: write into a new directory")


# ---------------------------------------------------------------------------------------------
# writing


def init_zoo(zoo_dir: str | os.PathLike, config: Mapping[str, Any] | None = None) -> dict:
    """Create the zoo at ``zoo_dir`` for a job given ``config``, or resume the existing one.

    Creates the directory and an empty manifest recording ``config`` if there is no manifest. If
    there is one, its config must equal ``config`` (compared as JSON): then the existing manifest is
    returned (resume). A different config raises ValueError showing both: rerunning a job with a
    different configuration into the same directory would mix incompatible instances.
    """
    zoo = Path(zoo_dir)
    config = _normalize_json(config, "config")
    zoo.mkdir(parents=True, exist_ok=True)
    with locked(zoo):
        manifest = _writable_manifest(zoo)
        if manifest is not None:
            if manifest["config"] != config:
                diff = config_differences(manifest["config"], config, "the zoo's")
                shown = "; ".join(diff[:3]) + (f"; and {len(diff) - 3} more" if len(diff) > 3 else "")
                raise ValueError(f"zoo {str(zoo)!r} was created with a different configuration, so it is not resumed "
                                 f"({shown}); use a new folder, or the zoo's own configuration to resume")
            return manifest
        manifest = _empty_manifest(config)
        atomic_write_bytes(zoo / MANIFEST_NAME, _manifest_bytes(manifest))
        return manifest


def _expected_shapes(arch: str, dataset: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    ref = archs.build(arch, dataset)
    return {k: (tuple(v.shape), v.dtype) for k, v in ref.state_dict().items()}


def _tensors_problem(tensors: Mapping[str, torch.Tensor],
                     expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]]) -> str | None:
    """The first way (in key order) stored ``tensors`` differ from the ``expected`` (shape, dtype)
    per key, in one line naming the tensor, what was expected and what is stored; None if they fit."""
    problems = []
    for k in sorted(set(expected) | set(tensors)):
        if k not in tensors:
            problems.append(f"tensor {k!r} is missing (expected shape {expected[k][0]})")
        elif k not in expected:
            problems.append(f"tensor {k!r} of shape {tuple(tensors[k].shape)} is not one of the architecture's")
        elif tuple(tensors[k].shape) != expected[k][0]:
            problems.append(f"tensor {k!r} has shape {tuple(tensors[k].shape)}, expected {expected[k][0]}")
        elif tensors[k].dtype != expected[k][1]:
            problems.append(f"tensor {k!r} has dtype {tensors[k].dtype}, expected {expected[k][1]}")
    if not problems:
        return None
    return problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")


def write_instance(zoo_dir: str | os.PathLike, model: nn.Module, *, id: str, arch: str, dataset: str,
                   protocol: str, seed: int | None, epoch: int | None, acc: Mapping[str, float | None],
                   split: str, sdf: Mapping[str, Any] | None = None) -> dict:
    """Write one trained instance into the zoo and record it in the manifest; returns its entry.

    ``seed``, ``epoch`` and any accuracy may be None: not recorded (networks imported from the
    original code's zoo). ``sdf``: the fit quality of an SDF network, a mapping with exactly the
    keys ``shape`` (str), ``sdf_mse`` (finite, >= 0) and ``sdf_within_0.01`` (in [0, 1]), recorded
    as fields of the entry (SDF zoos store ``epoch`` = Adam steps).

    The state dict (BN form, buffers included) is stored as ``<id>.safetensors``, atomically; then
    the manifest is updated atomically. The zoo directory and manifest are created (config None)
    if absent. An id already in the manifest is refused with ValueError unless the new entry is
    identical (same file sha256 and metadata): then nothing changes and the entry is returned.
    Many instances at once: :func:`write_instances` (one manifest update for all).
    """
    zoo = Path(zoo_dir)
    entry, data = _prepared(model, id=id, arch=arch, dataset=dataset, protocol=protocol, seed=seed, epoch=epoch,
                            acc=acc, split=split, sdf=sdf)
    return _record(zoo, [(entry, data)])[0]


def write_instances(zoo_dir: str | os.PathLike, instances: Iterable[Mapping[str, Any]], *,
                    batch_bytes: int = 256 << 20) -> list[dict]:
    """Write many instances, each a mapping of :func:`write_instance`'s keyword arguments (``model``
    included), with one manifest update per batch instead of one per instance; returns their entries
    in order. What :func:`write_instance` checks is checked for each, and an id already in the zoo is
    refused or kept as there. A batch holds instances until their files reach ``batch_bytes`` (the
    serialized weights are kept in memory until the batch is recorded); within a batch every instance
    is checked against the manifest before any file is written, then the files are written
    (atomically, each), then the manifest once. A crash mid-batch leaves files the manifest does not
    name (a resume writes them again, the same bytes), never an entry without its file.

    An import of tens of thousands of small networks is bound by the manifest's rewrite and
    validation when each member updates it (both grow with the zoo): batches make it linear."""
    if isinstance(batch_bytes, bool) or not isinstance(batch_bytes, int) or batch_bytes < 1:
        raise ValueError(f"batch_bytes: expected a positive int, got {batch_bytes!r}")
    zoo = Path(zoo_dir)
    out: list[dict] = []
    batch: list[tuple[dict, bytes]] = []
    size = 0
    for kw in instances:
        if not isinstance(kw, Mapping) or "model" not in kw:
            raise TypeError(f"instances: expected mappings of write_instance's arguments (model, id, arch, ...), "
                            f"got {type(kw).__name__}")
        kw = dict(kw)
        entry, data = _prepared(kw.pop("model"), **kw)
        batch.append((entry, data))
        size += len(data)
        if size >= batch_bytes:
            out += _record(zoo, batch)
            batch, size = [], 0
    if batch:
        out += _record(zoo, batch)
    return out


def _prepared(model: nn.Module, *, id: str, arch: str, dataset: str, protocol: str, seed: int | None,
              epoch: int | None, acc: Mapping[str, float | None], split: str,
              sdf: Mapping[str, Any] | None = None) -> tuple[dict, bytes]:
    """One instance checked and serialized: its manifest entry and its file's bytes."""
    if not isinstance(id, str) or not _ID_RE.match(id):
        raise ValueError(f"id: {id!r} is not a valid instance id (letters, digits, '.', '_', '-'; starting with a "
                         f"letter or digit; at most 200 characters)")
    if split not in SPLITS:
        raise ValueError(f"split: {split!r} is not one of {SPLITS}")
    spec = archs.spec(arch, dataset)
    arch, dataset = spec.name, spec.dataset
    if not isinstance(protocol, str):
        raise TypeError(f"protocol: expected a str, got {type(protocol).__name__}")
    seed = None if seed is None else _check_int(seed, "seed", low=0)
    epoch = None if epoch is None else _check_int(epoch, "epoch", low=0)
    if not isinstance(acc, Mapping):
        raise TypeError(f"acc: expected a mapping with keys among {SPLITS}, got {type(acc).__name__}")
    unknown = set(acc) - set(SPLITS)
    if unknown:
        raise ValueError(f"acc: unknown keys {sorted(map(str, unknown))}; expected keys among {SPLITS}")
    accs = {s: (_check_finite_number(acc[s], f"acc[{s!r}]", low=0, high=1) if acc.get(s) is not None else None)
            for s in SPLITS}
    if sdf is not None:
        if not isinstance(sdf, Mapping):
            raise TypeError(f"sdf: expected a mapping with keys {SDF_FIELDS}, got {type(sdf).__name__}")
        if set(sdf) != set(SDF_FIELDS):
            raise ValueError(f"sdf: expected exactly the keys {SDF_FIELDS}, got {sorted(map(str, sdf))}")
        sdf = {k: (float(v) if k != "shape" and isinstance(v, (int, float)) and not isinstance(v, bool) else v)
               for k, v in sdf.items()}
        problem = _sdf_fields_problem(dict(sdf))
        if problem:
            raise ValueError(f"sdf: {problem}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if isinstance(model, archs.SpecNet) and (model.spec.name, model.spec.dataset) != (arch, dataset):
        raise ValueError(f"model: is a {model.spec.name}/{model.spec.dataset} network, not {arch}/{dataset}")

    state = model.state_dict()
    expected = _expected_shapes(arch, dataset)
    got = {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
    if got != expected:
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
        raise ValueError(f"model: state dict does not match archs.build({arch!r}, {dataset!r}) (BN form): "
                         f"missing {missing}, unexpected {extra}, wrong shape/dtype {wrong}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    # one metadata key only: safetensors writes a multi-key metadata map in hash order, which would
    # make the bytes (and the sha256) of identical re-writes differ
    meta = json.dumps({"id": id, "architecture": arch, "dataset": dataset, "schema_version": SCHEMA_VERSION},
                      sort_keys=True)
    data = st_save(tensors, metadata={"netspace_zoo": meta})
    sha = sha256_bytes(data)
    num_params = sum(p.numel() for p in model.parameters())
    entry = {
        "id": id, "architecture": arch, "dataset": dataset, "class_id": archs.CLASS_IDS.get(arch),
        "protocol": protocol, "seed": seed, "epoch": epoch,
        "train_acc": accs["train"], "val_acc": accs["val"], "test_acc": accs["test"],
        "num_params": num_params, "file": id + _SUFFIX, "sha256": sha, "split": split,
    }
    if sdf is not None:
        entry.update({k: sdf[k] for k in SDF_FIELDS})
    entry = _normalize_json(entry, "entry")
    problems = _entry_field_problems(entry)  # what opening the zoo would refuse
    if problems:
        raise ValueError(f"instance {id!r}: {problems[0]}")
    return entry, data


def _record(zoo: Path, prepared: list[tuple[dict, bytes]]) -> list[dict]:
    """Record checked instances (:func:`_prepared`) in the zoo under its lock: every id checked against
    the manifest (and the earlier ones of ``prepared``) first, then the new files, then one manifest
    update (none when nothing is new); an id already there with the same file and metadata is kept
    (its file repaired if lost or damaged)."""
    zoo.mkdir(parents=True, exist_ok=True)
    with locked(zoo):
        manifest = _writable_manifest(zoo)
        if manifest is None:
            manifest = _empty_manifest(None)
        index = {e["id"]: e for e in manifest["instances"]}
        result, new, repair, fresh = [], [], [], set()
        for entry, data in prepared:
            id, sha = entry["id"], entry["sha256"]
            existing = index.get(id)
            if existing is not None:
                if existing["sha256"] != sha:
                    raise ValueError(f"instance {id!r} is already in zoo {str(zoo)!r} with different weights "
                                     f"(sha256 {existing['sha256']} != {sha}); refusing to overwrite it")
                if existing != entry:
                    diff = sorted(k for k in entry if existing.get(k) != entry[k])
                    raise ValueError(f"instance {id!r} is already in zoo {str(zoo)!r} with the same weights but "
                                     f"different metadata ({', '.join(diff)}); refusing to overwrite it")
                if id not in fresh:  # in the zoo before this call (else written below)
                    repair.append((existing, data))
                result.append(dict(existing))
                continue
            index[id] = entry
            fresh.add(id)
            new.append((entry, data))
            result.append(dict(entry))
        for existing, data in repair:
            path = zoo / existing["file"]
            if not path.is_file() or sha256_file(path) != existing["sha256"]:  # repair a lost/damaged file
                atomic_write_bytes(path, data)
        if not new:
            return result
        # the weights first: a crash before the manifest update leaves orphan files, never an entry
        # without its file
        for entry, data in new:
            atomic_write_bytes(zoo / entry["file"], data)
            manifest["instances"].append(entry)
            manifest["splits"][entry["split"]].append(entry["id"])
        atomic_write_bytes(zoo / MANIFEST_NAME, _manifest_bytes(manifest))
    return result


# ---------------------------------------------------------------------------------------------
# reading


def register_user_archs(config: Any, where, dataset: str | None = None) -> None:
    """Makes the user architectures a zoo (or run) config records available by name: each one's
    factory is imported by its recorded path and its spec must have the recorded digest; else one
    line saying what is missing."""
    user = config.get("user_archs") if isinstance(config, dict) else None
    if not user:
        return
    if not isinstance(user, dict):
        raise ValueError(f"{str(where)!r}: config user_archs: expected an object, got {type(user).__name__}")
    dataset = dataset or config.get("dataset")
    for name, rec in user.items():
        path = rec.get("factory") if isinstance(rec, dict) else None
        if archs.registered(name) is None:
            try:
                got = archs.resolve(path) if isinstance(path, str) else None
            except ValueError as e:
                msg = str(e)
                if not msg.startswith("arch: cannot import"):  # imported, but the factory fails: its own line
                    raise ValueError(f"{str(where)!r}: architecture {name!r}: {msg}") from None
                why = msg.split(" (", 1)[-1].rsplit(")", 1)[0] if " (" in msg else msg
                raise ValueError(f"{str(where)!r}: architecture {name!r} comes from the factory {path!r}, which "
                                 f"cannot be imported here ({why}); put its package on PYTHONPATH") from None
            if got != name:
                if got is not None and archs.registered(got) is not None:
                    archs.register(name, archs.registered(got).factory)
                else:
                    raise ValueError(f"{str(where)!r}: architecture {name!r} has no factory path")
        if isinstance(dataset, str) and rec.get("spec") != archs.spec_hash(archs.spec(name, dataset)):
            raise ValueError(f"{str(where)!r}: architecture {name!r} from {path!r} has changed since it "
                             f"was recorded (spec digest {archs.spec_hash(archs.spec(name, dataset))}, recorded "
                             f"{rec.get('spec')})")


class Zoo:
    """A zoo on disk, opened read-only: :meth:`open` it, then list, load and check instances."""

    def __init__(self, zoo_dir: Path, manifest: dict) -> None:
        self.path = Path(zoo_dir)
        self.manifest = manifest
        self._by_id = {e["id"]: e for e in manifest["instances"]}

    @classmethod
    def open(cls, zoo_dir: str | os.PathLike, *, check_fields: bool = True) -> "Zoo":
        """The zoo in ``zoo_dir``; a manifest that is no zoo manifest is one ValueError line, and so is
        an entry whose fields have the wrong type or range (a string where a number belongs, a
        negative epoch, an accuracy outside [0, 1], ...) unless ``check_fields`` is False (then
        :meth:`verify` lists them all, as ``netspace zoo verify`` does)."""
        zoo = Path(zoo_dir)
        manifest = _read_manifest(zoo, check_fields)
        register_user_archs(manifest.get("config"), zoo)
        return cls(zoo, manifest)

    @property
    def config(self) -> Any:
        return self.manifest["config"]

    @property
    def splits(self) -> dict[str, list[str]]:
        return {s: list(v) for s, v in self.manifest["splits"].items()}

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, id: object) -> bool:
        return id in self._by_id

    def entry(self, id: str) -> dict:
        try:
            return dict(self._by_id[id])
        except (KeyError, TypeError):
            raise KeyError(f"zoo {str(self.path)!r} has no instance {id!r}") from None

    def instances(self, split: str | None = None, arch: str | None = None) -> list[dict]:
        """Entries (copies), in the split's order (or manifest order), filtered by split and architecture."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"split: {split!r} is not one of {SPLITS}")
        if arch is not None:
            if not isinstance(arch, str):
                raise TypeError(f"arch: expected a str, got {type(arch).__name__}")
            arch = arch.lower()
        ids = self.manifest["splits"][split] if split is not None else [e["id"] for e in self.manifest["instances"]]
        return [dict(self._by_id[i]) for i in ids if arch is None or self._by_id[i]["architecture"] == arch]

    @property
    def schema_version(self) -> int:
        return self.manifest["schema_version"]

    def state_dict(self, id: str) -> dict[str, torch.Tensor]:
        """The instance's stored state dict (BN form) under today's parameter names.

        The bytes read are checked against the manifest's sha256 first (every load of an instance,
        for training, evaluation or exploring, comes through here): a file changed or corrupted
        since it was written is a ValueError naming the zoo, the instance and its file. The hash
        runs at about 1 GB/s on one CPU core (measured, 80 LeNetLike/digits instances of 249 KB:
        about 0.2 ms each, 12 to 19 ms in all; :meth:`model` of all 80 from about 85 to 103 ms,
        +10 to 20%, reading and parsing alone from 11 to 24 ms): little beside what the networks
        are loaded for.
        """
        entry = self.entry(id)
        path = self.path / entry["file"]
        if not path.is_file():
            raise FileNotFoundError(f"instance {id!r}: file {str(path)!r} is missing")
        data = path.read_bytes()
        if sha256_bytes(data) != entry["sha256"]:
            raise ValueError(f"zoo {str(self.path)!r}: instance {id!r}: the contents of {entry['file']} do not match "
                             f"the manifest's sha256 (the file was changed or corrupted after it was written); "
                             f"check the zoo with: netspace zoo verify {shlex.quote(str(self.path))}")
        try:
            state = st_load(data)
        except (SafetensorError, ValueError, RuntimeError) as e:
            raise ValueError(f"instance {id!r}: {entry['file']} is not a readable safetensors file: {e}") from None
        return _upgrade_state_dict(state, entry["architecture"], self.schema_version)

    def model(self, id: str, *, folded: bool = False) -> nn.Module:
        """The instance as an eval-mode network (BN form), or its folded BN-free form. Stored tensors
        that do not fit the architecture (a missing or extra key, another shape or dtype) are one
        ValueError line naming the instance, the tensor, the expected and the stored shape."""
        entry = self.entry(id)
        model = archs.build(entry["architecture"], entry["dataset"])
        state = self.state_dict(id)
        problem = _tensors_problem(state, {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()})
        if problem:
            raise ValueError(f"zoo {str(self.path)!r}: instance {id!r} ({entry['file']}) does not fit its architecture "
                             f"{entry['architecture']}/{entry['dataset']}: {problem}")
        model.load_state_dict(state, strict=True)
        model.eval()
        return fold_bn(model) if folded else model

    def models(self, split: str, arch: str | None = None, folded: bool = False) -> list[nn.Module]:
        ids = [e["id"] for e in self.instances(split, arch)]
        models = [self.model(i) for i in ids]
        if folded and models:
            return fold_bn(models)  # one native call per architecture
        return models

    def preps(self, split: str, arch: str, width: int = 10_000, height: int | None = None) -> torch.Tensor:
        """The (B, H, W) PReps of the split's instances of ``arch`` (BN folded while packing)."""
        if arch is None:
            raise ValueError("arch: PReps are packed per architecture; name one")
        ids = [e["id"] for e in self.instances(split, arch)]
        models = [self.model(i) for i in ids]
        if not models:
            raise ValueError(f"zoo {str(self.path)!r} has no {arch!r} instances in split {split!r}")
        try:
            with torch.no_grad():  # stored networks: data, not parameters being trained
                return pack_preps(models, width, height)
        except ValueError as e:
            if "non-finite" not in str(e):
                raise
            for id, model in zip(ids, models):  # the member, named as the zoo names it
                for key, t in model.state_dict().items():
                    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                        raise ValueError(f"zoo {str(self.path)!r}: member {id!r} holds NaN or Inf in {key!r} (its "
                                         f"file matches the manifest: it was saved so); leave it out of the zoo "
                                         f"(netspace zoo verify lists such members)") from None
            raise

    def verify(self) -> list[str]:
        """Problems found on disk, one message each naming the file; empty when all is well.

        Checks every manifest entry's fields (types and ranges, the rule opening a zoo applies: open
        it with ``check_fields=False`` to see them all here), that its file exists, matches its
        sha256, parses as safetensors, has the tensors of its architecture and holds no NaN or Inf
        values; also reports safetensors files the manifest does not name (orphans, e.g. from a
        crash between writing a file and recording it) and leftover temp files.
        """
        problems: list[str] = []
        shapes_cache: dict[tuple[str, str], dict] = {}
        for entry in self.manifest["instances"]:
            name = entry["file"]
            fields = _entry_field_problems(entry)
            problems += [f"{MANIFEST_NAME}: instance {entry['id']!r}: {p}" for p in fields]
            path = self.path / name
            if not path.is_file():
                problems.append(f"{name}: missing (instance {entry['id']!r} is in the manifest)")
                continue
            data = path.read_bytes()
            sha = sha256_bytes(data)
            if sha != entry["sha256"]:
                problems.append(f"{name}: sha256 mismatch (manifest {entry['sha256']}, file {sha})")
            if any(p.startswith(("field 'architecture'", "field 'dataset'")) for p in fields):
                continue  # no architecture to compare the tensors with
            try:
                tensors = _upgrade_state_dict(st_load(data), entry["architecture"], self.schema_version)
            except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt file
                problems.append(f"{name}: corrupt or truncated safetensors file ({type(e).__name__}: {e})")
                continue
            key = (entry["architecture"], entry["dataset"])
            try:
                if key not in shapes_cache:
                    shapes_cache[key] = _expected_shapes(*key)
            except (TypeError, ValueError) as e:
                problems.append(f"{name}: unknown architecture/dataset {key} ({e})")
                continue
            problem = _tensors_problem(tensors, shapes_cache[key])
            if problem:
                problems.append(f"{name}: tensors do not match architecture {key[0]}/{key[1]}: {problem}")
            for k in sorted(tensors):
                t = tensors[k]
                if t.is_floating_point() or t.is_complex():
                    bad = [what for what, found in (("NaN", torch.isnan(t).any()), ("Inf", torch.isinf(t).any()))
                           if found]
                    if bad:
                        problems.append(f"{name}: instance {entry['id']!r}: tensor {k!r} holds "
                                        f"{' and '.join(bad)} values")
        named = {e["file"] for e in self.manifest["instances"]}
        for p in sorted(self.path.iterdir()):
            if p.name.startswith(TMP_PREFIX):
                problems.append(f"{p.name}: leftover temporary file (an interrupted write)")
            elif p.name.endswith(_SUFFIX) and p.name not in named:
                problems.append(f"{p.name}: not in the manifest (orphan)")
        return problems

    def __repr__(self) -> str:
        return f"Zoo({str(self.path)!r}, {len(self)} instances)"
