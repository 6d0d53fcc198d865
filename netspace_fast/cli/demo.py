"""``netspace demo``: the whole NetSpace story on the embedded digits data, or on Fashion-MNIST
(``--dataset fashion-mnist --root R``) (:mod:`netspace_fast.demo`)."""

from __future__ import annotations

from pathlib import Path

import click

from .base import check_device, cli, config_option, device_option, download_option, output_option, user_errors

__all__ = ["demo_cmd"]


@cli.command("demo")
@output_option("--out", "out_dir", folder=True, sub="demo", default=Path("runs/demo"), show_default=True,
               help="Folder for the zoo, the run and report.md.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of every stage.")
@click.option("--fresh", is_flag=True, help="Start over: delete OUT first (default: reuse the finished zoo and space).")
@click.option("--size", type=click.Choice(["full", "smoke"]), default="full", show_default=True,
              help="smoke: every stage at its smallest (seconds; for CI, the numbers mean nothing).")
@click.option("--dataset", type=click.Choice(["digits", "fashion-mnist"]), default="digits", show_default=True,
              help="digits: embedded, nothing to fetch; fashion-mnist: real images from --root (presets fmnist-single).")
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help="Dataset root folder (Fashion-MNIST's idx files).")
@download_option
@device_option
@click.option("--no-progress", is_flag=True, help="No stage lines or progress bars.")
@config_option
def demo_cmd(out_dir, seed, fresh, size, dataset, root, download, device, no_progress) -> None:
    """Train a small zoo (batched), train NetSpace Single-Architecture on it, evaluate decoded vs input
    networks, interpolate (embeddings vs raw weights), optimize a random embedding, render PRep images,
    and write OUT/report.md with every figure measured in this run."""
    from .. import settings
    from ..demo import run_demo, summary_table

    if settings.tune_malloc_in_cli():  # as `netspace zoo train` and `netspace train` do
        settings.tune_malloc()
    with user_errors():
        s = run_demo(out_dir, seed=seed, fresh=fresh, device=check_device(device), progress=not no_progress,
                     size=size, dataset=dataset, root=root, download=download)
    click.echo(summary_table(s))
    click.echo(f"report: {out_dir / 'report.md'}")
