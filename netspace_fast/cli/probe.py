"""``netspace probe RUN --target test_acc --out DIR``: predict what a zoo records about its networks
(test accuracy, the generalization gap, a hyper-parameter) from their NetSpace embeddings, next to
StatNN and a linear model on the flattened weights (:mod:`netspace_fast.explore.probe`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .base import CliError, check_device, cli, config_option, device_option, output_option, user_errors

__all__ = ["probe_cmd"]


@cli.command("probe")
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--target", default="test_acc", show_default=True, metavar="NAME",
              help="What to predict: test_acc, train_acc, val_acc, gap (train_acc - test_acc), epoch, seed, or a "
                   "hyper-parameter an imported zoo records (as its source names it).")
@output_option("--out", "out_dir", folder=True, sub="probe", required=True,
               help="Folder for predictions.csv, summary.json and scatter.png.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (what summary.json holds).")
@click.option("--chunk", type=click.IntRange(min=1), default=16, show_default=True,
              help="Networks per packing / encoder call.")
@device_option(help="Where to pack and encode the networks.")
@config_option
def probe_cmd(run_dir, target, out_dir, as_json, chunk, device) -> None:
    """Fit small regressors on the zoo's training networks and score them on its test networks (Kendall
    tau, R^2): the NetSpace embedding (ridge or boosted trees, chosen on the validation split), StatNN
    (per-layer weight statistics + boosted trees) and ridge on the flattened weights."""
    from ..explore.probe import plan_probe, run_probe, summary_lines

    try:  # everything the arguments decide is checked before any work: a bad argument, exit 2
        plan = plan_probe(run_dir, target, check_device(device))
    except (ValueError, OSError) as e:
        msg = str(e) or type(e).__name__
        raise CliError(f"--{msg}" if msg.startswith("target:") else msg, 2) from None
    with user_errors():
        p = run_probe(plan, out=out_dir, chunk=chunk)
    if as_json:
        click.echo(json.dumps(json.loads(p.files["summary"].read_text()), indent=1))
        return
    click.echo("\n".join(summary_lines(p)))
    click.echo(f"done: {p.files['csv']}, {p.files['summary']} and {p.files['png']}")
