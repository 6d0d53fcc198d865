"""``netspace train single|multi`` and ``netspace eval``: NetSpace runs."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path

import click

from .base import (CliError, cli, config_option, device_option, download_option, output_option, tensorboard_option,
                   user_errors)

__all__ = ["eval_run", "train"]

ROW_FIELDS = ("network", "arch", "class_id", "predicted_class_id", "input_acc", "decoded_acc")


@cli.group()
def train() -> None:
    """Train a NetSpace on a zoo (resumable: rerun the same command after a kill)."""


def _train(protocol: str, zoo_dir: Path, out_dir: Path, preset, seed: int, epochs, device: str, root, download,
           no_progress: bool, tensorboard) -> None:
    from .. import settings
    from ..space.train import train_space

    if settings.tune_malloc_in_cli():
        settings.tune_malloc()
    try:
        with user_errors():
            train_space(out_dir, zoo_dir, protocol, preset, seed=seed, epochs=epochs, device=device, root=root,
                        progress=not no_progress, tensorboard=tensorboard, download=download)
    except KeyboardInterrupt:
        click.echo(f"interrupted; the last completed epoch is kept in {str(out_dir)!r}", err=True)
        sys.exit(130)
    click.echo(f"done: run written to {str(out_dir)!r}")


def _train_options(f):
    f = click.option("--zoo", "zoo_dir", required=True, type=click.Path(path_type=Path), help="The zoo to learn.")(f)
    f = output_option("--out", "out_dir", folder=True, may_be=("run",), required=True,
                      help="Run folder to create, or to resume with the same configuration.")(f)
    f = click.option("--preset", default=None, metavar="NAME",
                     help="Training preset (default: the one for the zoo's dataset).")(f)
    f = click.option("--seed", type=int, default=0, help="Seed of the initialization and the data order.")(f)
    f = click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs (default: the preset's).")(f)
    f = device_option(f, help="Training device.")
    f = click.option("--root", type=click.Path(path_type=Path), default=None,
                     help="Dataset root folder (CIFAR-10, Tiny-ImageNet, Fashion-MNIST, MNIST).")(f)
    f = download_option(f)
    f = click.option("--no-progress", is_flag=True, help="No progress lines.")(f)
    f = tensorboard_option(f)
    return config_option(f)


@train.command("single")
@_train_options
def train_single(zoo_dir, out_dir, preset, seed, epochs, device, root, download, no_progress, tensorboard) -> None:
    """Single-Architecture NetSpace (the input networks distil their own decoded networks)."""
    _train("single", zoo_dir, out_dir, preset, seed, epochs, device, root, download, no_progress, tensorboard)


@train.command("multi")
@_train_options
def train_multi(zoo_dir, out_dir, preset, seed, epochs, device, root, download, no_progress, tensorboard) -> None:
    """Multi-Architecture NetSpace (teacher: the zoo's ResNet56; ClassId head; L_gamma)."""
    _train("multi", zoo_dir, out_dir, preset, seed, epochs, device, root, download, no_progress, tensorboard)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


@cli.command("eval")
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--split", type=click.Choice(["train", "val", "test", "all"]), default="test",
              help="Which networks of the zoo (accuracies are always on the dataset's test images).")
@output_option("--csv", "csv_path", folder=False, sub="eval", default=None,
               help="Also write the rows to this CSV file (and the summary to FILE.summary.json).")
@device_option
@config_option
def eval_run(run_dir: Path, split: str, csv_path: Path | None, device: str) -> None:
    """Evaluate the best weights of RUN: one row per network (input vs decoded accuracy on the test
    images), then per-architecture means, the mean absolute gap and the Spearman correlation."""
    from ..space.evaluate import evaluate_networks, summarize
    from ..space.presets import SpacePreset
    from ..space.run import Run
    from ..space.train import build_space, load_space_data

    with user_errors():
        run = Run.open(run_dir)
        if not run.command.startswith("train "):
            raise ValueError(f"run: {str(run_dir)!r} is a {run.command!r} run, not a NetSpace training run")
        if run.command == "train sdf":
            raise ValueError(f"run: {str(run_dir)!r} is an SDF run: its metric is the fraction of points within 0.01 "
                             f"(recorded in its state.json and best.json); eval is for classification runs")
        cfg = run.config
        if cfg.get("zoo") is None:
            raise ValueError(f"run: {str(run_dir)!r} names no zoo to evaluate on (import it with --zoo ZOO)")
        p = SpacePreset.from_json(cfg["recipe"])
        splits = ("train", "val", "test") if split == "all" else (split,)
        d = load_space_data(cfg["zoo"], p, root=cfg["root"], splits=splits, images_split="test", device=device,
                            allow_empty=split == "all")
        enc, dec = build_space(p, d.height, cfg["seed"], device)
        info = run.load_weights(enc, dec)
        enc.eval(), dec.eval()
        rows = []
        for s in splits:
            x, y = d.images[s]
            rows += evaluate_networks(enc, dec, d.groups[s], x, y, d.specs if p.protocol == "multi" else None)
    if not rows:
        raise CliError(f"run {str(run_dir)!r}: the zoo has no networks in split {split!r}")
    click.echo(f"run {str(run_dir)!r}, weights of epoch {info.get('epoch')}; accuracies on the test images")
    click.echo(",".join(ROW_FIELDS))
    for r in rows:
        click.echo(",".join(_fmt(r[k]) for k in ROW_FIELDS))
    s = summarize(rows)
    for arch, a in s["per_arch"].items():
        click.echo(f"{arch}: {a['networks']} networks, mean input acc {a['input_acc']:.4f}, mean decoded acc "
                   f"{a['decoded_acc']:.4f}, mean |input - decoded| {a['mean_abs_gap']:.4f}")
    click.echo(f"mean |input - decoded| {s['mean_abs_gap']:.4f}; spearman {_fmt(s['spearman'])}; slope of decoded on "
               f"input {_fmt(s['slope'])} (intercept {_fmt(s['intercept'])}, span ratio {_fmt(s['span_ratio'])})"
               + (f"; ClassId accuracy {s['class_id_acc']:.4f}" if "class_id_acc" in s else ""))
    if csv_path is not None:
        from ..storage import atomic_write_bytes, strict_json

        with user_errors():
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=ROW_FIELDS, lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
            csv_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(csv_path, buf.getvalue().encode())
            summary = json.dumps(strict_json(s), indent=1, sort_keys=True, allow_nan=False)
            atomic_write_bytes(Path(str(csv_path) + ".summary.json"), (summary + "\n").encode())


@cli.command("import-checkpoint")
@click.argument("file", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path))
@output_option("--out", "out_dir", folder=True, may_be=("run",), required=True, help="The run folder to create.")
@click.option("--arch", "arch", required=True, metavar="NAME[,NAME...]",
              help="The checkpoint's architecture(s), in ClassId order for a Multi checkpoint.")
@click.option("--dataset", required=True, help="The dataset of its networks (cifar10, tinyimagenet, digits).")
@click.option("--zoo", "zoo_dir", type=click.Path(path_type=Path), default=None,
              help="A zoo of the same architectures, for netspace eval.")
def import_checkpoint(file: Path, out_dir: Path, arch: str, dataset: str, zoo_dir: Path | None) -> None:
    """Import a checkpoint of the original NetSpace code (its torch.save dict with 'epoch', 'best_score',
    '0' encoder, '1' decoder, '2' optimizer; read with weights_only=True) as a run of ours."""
    from ..space.importer import import_original_checkpoint

    with user_errors(2):  # a bad --arch is a bad argument: exit 2, before any work
        from ..archs import resolve

        names = [resolve(a.strip()) for a in arch.split(",") if a.strip()]
    with user_errors():
        run = import_original_checkpoint(file, out_dir, names, dataset, zoo=zoo_dir)
    click.echo(f"done: {run.command.split()[1]} checkpoint imported into {str(out_dir)!r}")
