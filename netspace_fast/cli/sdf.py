"""``netspace train sdf``: NetSpace on a zoo of SIREN SDF MLPs (:mod:`netspace_fast.sdf.space`), on the
``train`` group of :mod:`netspace_fast.cli.space`; ``netspace shapes extract-chairs``: real chair meshes
from Sweet Home 3D furniture catalogs (:mod:`netspace_fast.sdf.catalog`) for ``zoo fit-sdf --shapes DIR``."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import click

from .base import CliError, cli, device_option, output_option, tensorboard_option, user_errors
from .space import train

__all__ = ["extract_chairs_command", "shapes", "train_sdf"]

#: the library's default (netspace_fast.sdf.catalog.MAX_AMBIGUOUS; not imported here: --help stays cheap)
_MAX_AMBIGUOUS = 0.03


@train.command("sdf")
@click.option("--zoo", "zoo_dir", required=True, type=click.Path(path_type=Path),
              help="An SDF zoo (SIREN MLPs, netspace zoo fit-sdf).")
@output_option("--out", "out_dir", folder=True, may_be=("run",), required=True,
               help="Run folder to create, or to resume with the same configuration.")
@click.option("--preset", default=None, metavar="NAME", help="Training preset (default: sdf-small; sdf-chairs: "
              "real chairs from furniture catalogs; sdf-paper: the paper's).")
@click.option("--seed", type=int, default=0, help="Seed of the initialization, the meta-batches and the points.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epoch budget (default: the preset's).")
@click.option("--target", type=click.FloatRange(0.0, 1.0, min_open=True), default=None,
              help="Stop when this fraction of points is within 0.01 on the training MLPs (default: the preset's, "
                   "0.8 as the paper).")
@device_option(help="Training device.")
@click.option("--no-progress", is_flag=True, help="No progress lines.")
@tensorboard_option
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


@cli.group()
def shapes() -> None:
    """Shape sources for SDF zoos (zoo fit-sdf --shapes DIR)."""


@shapes.command("extract-chairs")
@click.argument("source", type=click.Path(path_type=Path))
@output_option("--out", "out_dir", folder=True, sub="chairs", required=True,
               help="Folder to write the chairs (.ply) and shapes.json into: new, empty, or a previous extraction.")
@click.option("--license", "licence", default="cc0,cc-by", show_default=True, metavar="cc0|cc0,cc-by",
              help="Licences to keep (comma-separated: cc0, cc-by); models under any other licence are never kept.")
@click.option("--max-ambiguous", type=click.FloatRange(0.0, 1.0), default=_MAX_AMBIGUOUS, show_default=True,
              help="Largest fraction of near-surface points whose winding number is in [0.2, 0.8]; a chair over it "
                   "has unreliable signs and is dropped.")
@click.option("--keep-unreliable", is_flag=True, help="Keep the chairs over --max-ambiguous, flagged in shapes.json.")
def extract_chairs_command(source: Path, out_dir: Path, licence: str, max_ambiguous: float,
                           keep_unreliable: bool) -> None:
    """Extract the chairs of the Sweet Home 3D furniture catalog SOURCE (a .sh3f file, or a folder of
    them) as meshes plus shapes.json (creator and licence of each): one line per chair dropped and why,
    then a summary."""
    from ..sdf.catalog import extract_chairs, parse_licence_filter

    if not source.exists():
        raise CliError(f"SOURCE: {str(source)!r} does not exist", 2)
    try:
        parse_licence_filter(licence)
    except ValueError as e:
        raise CliError(f"--{e}", 2) from None
    dropped: list[str] = []

    def on_drop(model, why: str) -> None:
        dropped.append(model.name)
        click.echo(f"dropped {model.label}: {why}")

    with user_errors(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # every warning of extract_chairs is a drop line or a flagged chair below
        records = extract_chairs(source, out_dir, license=licence, max_ambiguous=max_ambiguous,
                                 keep_unreliable=keep_unreliable, on_drop=on_drop)
    for r in records:
        if r["flagged"]:
            click.echo(f"flagged {r['catalog']}:{r['model']} ({r['name']!r}): signs unreliable, "
                       f"{r['ambiguous_fraction']:.1%} of near-surface points ambiguous (kept: --keep-unreliable)")
    per = {}
    for r in records:
        per[r["licence"]] = per.get(r["licence"], 0) + 1
    flagged = sum(r["flagged"] for r in records)
    click.echo(f"kept {len(records)} of {len(records) + len(dropped)} chairs ("
               + ", ".join(f"{k} {v}" for k, v in sorted(per.items()))
               + (f"; {flagged} flagged" if flagged else "") + f"): written to {str(out_dir)!r} with shapes.json")
