"""``netspace zoo ...``: create, inspect, check and import model zoos."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .base import (CliError, cli, config_option, device_option, download_option, output_option, tensorboard_option,
                   user_errors)

__all__ = ["zoo"]


def _open_zoo(path: Path, check_fields: bool = True):
    from ..zoo.format import Zoo

    with user_errors():
        return Zoo.open(path, check_fields=check_fields)


@cli.group()
def zoo() -> None:
    """Create, inspect and check model zoos."""


def _acc_stats(values: list[float]) -> dict[str, float] | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None
    return {"min": min(vals), "mean": sum(vals) / len(vals), "max": max(vals), "n": len(vals)}


def _summary(z) -> dict:
    from ..zoo.format import SPLITS

    entries = z.instances()
    per_split = {s: len(z.manifest["splits"][s]) for s in SPLITS}
    archs: dict[str, dict] = {}
    for e in entries:
        a = archs.setdefault(e["architecture"], {"instances": 0, "datasets": set(),
                                                 "splits": {s: 0 for s in SPLITS}, "test_acc": [], "sdf": []})
        a["instances"] += 1
        a["datasets"].add(e["dataset"] if e["dataset"] is not None else "-")  # SIREN MLPs have no image dataset
        a["splits"][e["split"]] += 1
        a["test_acc"].append(e["test_acc"])
        if e.get("sdf_within_0.01") is not None:
            a["sdf"].append(e["sdf_within_0.01"])
    return {
        "path": str(z.path),
        "schema_version": z.manifest["schema_version"],
        "config": z.config,
        "instances": len(entries),
        "splits": per_split,
        "architectures": {
            name: {"instances": a["instances"], "datasets": sorted(a["datasets"]), "splits": a["splits"],
                   "test_acc": _acc_stats(a["test_acc"]),
                   **({"sdf_within_0.01": _acc_stats(a["sdf"])} if a["sdf"] else {})}
            for name, a in sorted(archs.items())
        },
    }


@zoo.command("info")
@click.argument("zoo_dir", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def zoo_info(zoo_dir: Path, as_json: bool) -> None:
    """Summarize the zoo in DIR: schema, config, instances per split and architecture, test accuracy."""
    s = _summary(_open_zoo(zoo_dir))
    if as_json:
        click.echo(json.dumps(s, indent=1, sort_keys=True))
        return
    click.echo(f"zoo: {s['path']}")
    click.echo(f"schema version: {s['schema_version']}")
    click.echo(f"config: {json.dumps(s['config'], sort_keys=True)}")
    click.echo(f"instances: {s['instances']} ("
               + ", ".join(f"{k} {v}" for k, v in s["splits"].items()) + ")")
    if not s["architectures"]:
        click.echo("architectures: none")
    for name, a in s["architectures"].items():
        click.echo(f"  {name} [{', '.join(a['datasets'])}]: {a['instances']} instances ("
                   + ", ".join(f"{k} {v}" for k, v in a["splits"].items()) + ")")
        if "sdf_within_0.01" in a:
            w = a["sdf_within_0.01"]
            click.echo(f"    held-out points within 0.01 of the SDF: min {w['min']:.4f}  mean {w['mean']:.4f}  "
                       f"max {w['max']:.4f}")
            continue
        acc = a["test_acc"]
        if acc is None:
            click.echo("    test_acc: none recorded")
        else:
            click.echo(f"    test_acc: min {acc['min']:.4f}  mean {acc['mean']:.4f}  max {acc['max']:.4f}"
                       f"  ({acc['n']} of {a['instances']} recorded)")


@zoo.command("verify")
@click.argument("zoo_dir", metavar="DIR", type=click.Path(path_type=Path))
def zoo_verify(zoo_dir: Path) -> None:
    """Check the zoo in DIR: every manifest entry's fields and instance file (existence, sha256, tensors, no
    NaN/Inf); exit 1 on any problem."""
    z = _open_zoo(zoo_dir, check_fields=False)  # list every field problem, not only the first
    with user_errors():
        problems = z.verify()
    if problems:
        for p in problems:
            click.echo(p)
        click.echo(f"error: {len(problems)} problem{'s' if len(problems) != 1 else ''} in zoo {str(z.path)!r}",
                   err=True)
        sys.exit(1)
    click.echo(f"ok: {len(z)} instances verified")


def _load_trainer() -> tuple[Callable[..., Any], dict[str, Any] | None]:
    """``netspace_fast.zoo.train_zoo`` and its ``PRESETS`` (None if the module has no such table)."""
    try:
        from .. import zoo as zoo_mod
    except ImportError as e:
        raise CliError(f"zoo training is unavailable: {e}") from e
    train_zoo = getattr(zoo_mod, "train_zoo", None)
    if not callable(train_zoo):
        raise CliError("zoo training is unavailable: netspace_fast.zoo has no train_zoo()")
    presets = getattr(zoo_mod, "PRESETS", None)
    return train_zoo, (dict(presets) if presets is not None else None)


@zoo.command("train")
@click.option("--preset", required=True, metavar="NAME", help="Training preset (an unknown name lists the valid ones).")
@output_option("--out", "out_dir", folder=True, may_be=("zoo",), required=True,
               help="Zoo directory to create, or to resume into with the same configuration.")
@click.option("--root", type=click.Path(path_type=Path), default=None, help="Dataset root folder.")
@download_option
@click.option("--seed", type=int, default=None, help="Base seed (default: the preset's).")
@device_option(default=None, help="Training device (default: the trainer's choice).")
@click.option("--no-progress", is_flag=True, help="Do not show progress.")
@tensorboard_option
@click.option("--arch", default=None, metavar="NAME|PKG.MOD:FACTORY",
              help="Train this architecture instead of the preset's (a preset with several gets it as one more): "
                   "a built-in name or a user architecture's factory, package.module:factory (it must be "
                   "importable: PYTHONPATH).")
@config_option
def zoo_train(preset: str, out_dir: Path, root: Path | None, download: bool, seed: int | None, device: str | None,
              no_progress: bool, tensorboard: Path | None, arch: str | None) -> None:
    """Train a zoo of networks from a preset into --out (resumable: completed instances are kept).

    Under ``torchrun --nproc_per_node=K`` the instances are sharded over the K ranks (gloo on CPU,
    NCCL on CUDA) and written into one zoo."""
    train_zoo, presets = _load_trainer()
    if presets is not None and preset not in presets:
        valid = ", ".join(sorted(presets)) or "(none)"
        raise CliError(f"unknown preset {preset!r}; valid presets: {valid}", exit_code=2)
    kwargs: dict[str, Any] = {"progress": not no_progress}
    # options left out are not passed, so the trainer's own defaults apply
    if root is not None:
        kwargs["root"] = root
    if seed is not None:
        kwargs["seed"] = seed
    if device is not None:
        kwargs["device"] = device
    if tensorboard is not None:
        kwargs["tensorboard"] = tensorboard
    if download:
        kwargs["download"] = True
    if arch is not None:
        with user_errors(2):  # a bad --arch is a bad argument: exit 2, before any work
            from ..archs import resolve

            resolve(arch)
        kwargs["arch"] = arch
    # a training command: keep freed activation memory for reuse (see netspace_fast.settings; NETSPACE_TUNE_MALLOC=0 turns it off)
    from .. import settings

    if settings.tune_malloc_in_cli():
        settings.tune_malloc()
    try:
        with user_errors():
            train_zoo(out_dir, preset, **kwargs)
    except KeyboardInterrupt:
        click.echo(f"interrupted; instances completed so far are kept in {str(out_dir)!r}", err=True)
        sys.exit(130)
    if os.environ.get("RANK", "0") == "0":  # once, not once per torchrun rank
        click.echo(f"done: zoo written to {str(out_dir)!r}")


_PUBLIC_OPTIONS = ("epochs", "split", "seed", "max_weight", "dataset")  # --format modelzoo|smallcnnzoo only
_NETSPACE_OPTIONS = ("root", "download", "base")  # --format netspace only


@zoo.command("import")
@click.argument("sources", metavar="LIST [LIST ...] | SRC", nargs=-1, required=True, type=click.Path(path_type=Path))
@output_option("--out", "out_dir", folder=True, may_be=("zoo",), required=True,
               help="Zoo directory to create (or to resume an interrupted import into).")
@click.option("--format", "fmt", type=click.Choice(["netspace", "modelzoo", "smallcnnzoo"]), default="netspace",
              show_default=True,
              help="netspace: the original NetSpace code's list files; modelzoo: an HSG-AIML Model Zoo folder (Ray "
                   "Tune trial folders); smallcnnzoo: a Small CNN Zoo folder (weights.npy, metrics.csv.gz, "
                   "layout.csv).")
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help="netspace: dataset root folder: evaluate train/val/test accuracy (default: not recorded).")
@download_option
@click.option("--base", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="netspace: directory that relative .pt paths resolve against (default: the current directory).")
@click.option("--epochs", default=None, metavar="last|all|E,E,...",
              help="modelzoo/smallcnnzoo: which checkpoints of each trial or run (default: last).")
@click.option("--split", type=click.Choice(["theirs", "ours"]), default=None,
              help="modelzoo/smallcnnzoo: the source's split (Model Zoos: 70/15/15 of the trials; Small CNN Zoo: "
                   "NFN's) or ours (100:16:16 of the networks, from --seed). Default: theirs.")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="modelzoo/smallcnnzoo: seed of --split ours.")
@click.option("--max-weight", type=click.FloatRange(min=0, min_open=True), default=None,
              help="modelzoo/smallcnnzoo: leave out checkpoints with a weight of larger magnitude (diverged).")
@click.option("--dataset", type=click.Choice(["fashion-mnist", "mnist", "cifar10"]), default=None,
              help="modelzoo/smallcnnzoo: our dataset for theirs, where the source does not tell it.")
def zoo_import(sources: tuple[Path, ...], out_dir: Path, fmt: str, root: Path | None, download: bool,
               base: Path | None, **public) -> None:
    """Import a zoo made elsewhere: the original NetSpace code's list files (train.txt, val.txt,
    test.txt; one network a line, 'class;<typed params>;path/to/file.pt'), an HSG-AIML Model Zoo or
    the Small CNN Zoo (the folder SRC).

    Everything is validated before anything is written; a problem is one error line naming the file
    (and line). State dicts are read with torch.load(weights_only=True): nothing is unpickled."""
    given = {"root": root is not None, "download": download, "base": base is not None,
             **{k: v is not None for k, v in public.items()}}
    wrong = [k for k in (_PUBLIC_OPTIONS if fmt == "netspace" else _NETSPACE_OPTIONS) if given[k]]
    if wrong:
        other = "modelzoo and smallcnnzoo" if fmt == "netspace" else "netspace"
        raise CliError(f"--{wrong[0].replace('_', '-')}: applies to --format {other}, not {fmt}", exit_code=2)

    def log(msg: str) -> None:
        click.echo(msg, err=True)

    if fmt == "netspace":
        from ..zoo.importer import import_original_zoo

        with user_errors():
            if download and root is None:
                raise ValueError("download: --download needs --root (the folder to fetch the dataset into)")
            z = import_original_zoo(list(sources), out_dir, root=root, base=base, download=download, log=log)
    else:
        if len(sources) != 1:
            raise CliError(f"SRC: --format {fmt} imports one zoo folder, got {len(sources)} paths", exit_code=2)
        from ..zoo.public import FORMATS
        from ..zoo.public.members import check_options

        options = {k: v for k, v in public.items() if v is not None}
        try:  # a bad option value is a bad argument: exit 2, before any work
            check_options(options.get("epochs", "last"), options.get("split", "theirs"), options.get("seed", 0),
                          options.get("max_weight"), options.get("dataset"))
        except ValueError as e:
            name, _, why = str(e).partition(":")
            raise CliError(f"--{name.replace('_', '-')}:{why}", exit_code=2) from None
        with user_errors():
            z = FORMATS[fmt](sources[0], out_dir, log=log, **options)
    counts = ", ".join(f"{s} {len(v)}" for s, v in z.splits.items())
    click.echo(f"done: {len(z)} networks in zoo {str(out_dir)!r} ({counts})")


@zoo.command("fit-sdf")
@click.option("--shapes", required=True, metavar="procedural|DIR",
              help="'procedural' (the embedded chairs), a folder of meshes (.obj/.off/.ply) or of DeepSDF .npz "
                   "sample files.")
@output_option("--out", "out_dir", folder=True, may_be=("zoo",), required=True,
               help="Zoo directory to create, or to resume into with the same configuration.")
@click.option("--preset", default="small", show_default=True, metavar="NAME",
              help="Fitting preset: small (minutes on 2 CPU cores), chairs (real chair meshes: twice the small "
                   "preset's steps), paper (1,000 shapes, the original protocol), "
                   "tiny (smoke test).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of shapes, initializations and samples.")
@click.option("--init", type=click.Choice(["shared", "per-shape"]), default=None,
              help="Initialization of the networks: one random SIREN for all (shared; the small preset: NetSpace "
                   "learns such a zoo much faster) or one per shape (per-shape; the original code, the paper "
                   "preset). Default: the preset's.")
@device_option(help="Fitting device.")
@click.option("--no-progress", is_flag=True, help="Do not show progress.")
@config_option
def zoo_fit_sdf(shapes: str, out_dir: Path, preset: str, seed: int, init: str | None, device: str,
                no_progress: bool) -> None:
    """Fit one SIREN MLP per shape to its signed distances (K networks at once) into the zoo --out.

    Resumable after a kill (rerun the same command); the manifest records each network's shape,
    sdf_mse and sdf_within_0.01 (on held-out points)."""
    from ..sdf.presets import SDF_PRESETS

    if preset not in SDF_PRESETS:
        raise CliError(f"unknown preset {preset!r}; valid SDF presets: {', '.join(SDF_PRESETS)}", exit_code=2)
    if shapes != "procedural" and not Path(shapes).is_dir():
        raise CliError(f"--shapes: expected 'procedural' or a folder of meshes / .npz files, got {shapes!r} "
                       f"(no such folder)", exit_code=2)
    from .. import settings
    from ..sdf.fit import fit_sdf_zoo

    if settings.tune_malloc_in_cli():
        settings.tune_malloc()
    recipe = SDF_PRESETS[preset] if init is None else dataclasses.replace(SDF_PRESETS[preset], init=init)
    try:
        with user_errors():
            fit_sdf_zoo(out_dir, shapes, recipe, seed=seed, device=device, progress=not no_progress)
    except KeyboardInterrupt:
        click.echo(f"interrupted; networks completed so far are kept in {str(out_dir)!r}", err=True)
        sys.exit(130)
    z = _open_zoo(out_dir)
    within = sorted(e["sdf_within_0.01"] for e in z.instances() if "sdf_within_0.01" in e)
    med = within[len(within) // 2] if within else float("nan")
    click.echo(f"done: {len(z)} SIREN networks in zoo {str(out_dir)!r}; held-out fraction within 0.01: median "
               f"{med:.3f}")
