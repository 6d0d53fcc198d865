"""``netspace train sdf``: NetSpace on a zoo of SIREN SDF MLPs (:mod:`netspace_fast.sdf.space`), on the
``train`` group of :mod:`netspace_fast.cli.space`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .base import user_errors
from .space import train

__all__ = ["train_sdf"]


@train.command("sdf")
@click.option("--zoo", "zoo_dir", required=True, type=click.Path(path_type=Path),
              help="An SDF zoo (SIREN MLPs, netspace zoo fit-sdf).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder to create, or to resume with the same configuration.")
@click.option("--preset", default=None, metavar="NAME", help="Training preset (default: sdf-small; sdf-paper: the "
              "paper's).")
@click.option("--seed", type=int, default=0, help="Seed of the initialization, the meta-batches and the points.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epoch budget (default: the preset's).")
@click.option("--target", type=click.FloatRange(0.0, 1.0, min_open=True), default=None,
              help="Stop when this fraction of points is within 0.01 on the training MLPs (default: the preset's, "
                   "0.8 as the paper).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu")
@click.option("--no-progress", is_flag=True, help="No progress lines.")
@click.option("--tensorboard", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="LOGDIR",
              help="Also write per-epoch scalars for TensorBoard (needs the tensorboard package).")
def train_sdf(zoo_dir, out_dir, preset, seed, epochs, target, device, no_progress, tensorboard) -> None:
    """NetSpace on SDF MLPs: decoded and input MLP queried at the same random points (MSE); stops at the
    target fraction of points within 0.01 or after the epoch budget."""
    from .. import settings
    from ..sdf.space import train_sdf_space

    if settings.tune_malloc_in_cli():
        settings.tune_malloc()
    try:
        with user_errors():
            run = train_sdf_space(out_dir, zoo_dir, preset, seed=seed, epochs=epochs, target=target, device=device,
                                  progress=not no_progress, tensorboard=tensorboard)
    except KeyboardInterrupt:
        click.echo(f"interrupted; the last completed epoch is kept in {str(out_dir)!r}", err=True)
        sys.exit(130)
    state = run.state() or {}
    last = next((r for r in reversed(state.get("history", [])) if "train_within" in r), None)
    if last is not None:
        click.echo(f"epoch {state['epoch']}: within 0.01 on training MLPs {last['train_within']:.4f}, on validation "
                   f"MLPs {last['val_within']:.4f}" + (" (target reached)" if state.get("stopped") else ""))
    click.echo(f"done: run written to {str(out_dir)!r}")
