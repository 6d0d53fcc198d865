"""``netspace interpolate | sample-unseen | optimize | export | visualize | audit``: exploring a trained space
(:mod:`netspace_fast.explore`). Each takes a run folder (RUN); instance ids are those of the zoo the run
records. Every command takes ``--config FILE`` (YAML option values) and ``--device``."""

from __future__ import annotations

from pathlib import Path

import click

from .base import CliError, check_device, cli, config_option, device_option, output_option, user_errors
from .space import _fmt

__all__ = ["audit_cmd", "export_cmd", "interpolate_cmd", "optimize_cmd", "sample_unseen_cmd", "visualize_cmd"]

_RUN = click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
_NO_PROGRESS = click.option("--no-progress", is_flag=True, help="No progress bar.")
_CHUNK = click.option("--chunk", type=click.IntRange(min=1), default=16, show_default=True,
                      help="Networks per decoder / batched call.")


def _check_steps(ctx: click.Context, param: click.Parameter, value: int) -> int:
    """``--steps`` of an interpolation by the library's rule (its limit, and what more would need)."""
    from ..interpolation import check_steps

    try:
        return check_steps(value)
    except ValueError as e:
        raise CliError(f"--{e}", 2) from None


@cli.command("interpolate")
@_RUN
@click.option("--a", "a", required=True, metavar="ID", help="First network (zoo instance id).")
@click.option("--b", "b", required=True, metavar="ID", help="Second network (zoo instance id).")
@click.option("--steps", type=int, default=100, show_default=True, callback=_check_steps,
              help="Evenly spaced positions, ends included (at most 100000).")
@output_option("--out", "out_dir", folder=True, sub="interpolate", required=True,
               help="Folder for interpolation.csv and interpolation.png.")
@_CHUNK
@device_option
@_NO_PROGRESS
@config_option
def interpolate_cmd(run_dir, a, b, steps, out_dir, chunk, device, no_progress) -> None:
    """Decode evenly spaced embeddings between networks A and B and evaluate each (test accuracy), next
    to the linear interpolation of their raw weights (PReps); Multi runs add the predicted ClassId of
    each step; SDF runs write meshes and a picture."""
    from ..explore.interpolate import Interpolation, interpolate, summary_lines

    with user_errors():
        r = interpolate(run_dir, a, b, steps=steps, out=out_dir, device=check_device(device), chunk=chunk,
                        progress=not no_progress)
    if isinstance(r, Interpolation):
        for line in summary_lines(r):
            click.echo(line)
        click.echo(f"done: {r.files['csv']} and {r.files['png']}")
    else:  # an SDF run: meshes, a picture and a CSV (netspace_fast.sdf.mesh.ShapeInterpolation)
        for line in r.summary_lines():
            click.echo(line)
        click.echo(f"done: SDF interpolation (meshes, interpolation.png, interpolation.csv) written to {str(out_dir)!r}")


@cli.command("sample-unseen")
@_RUN
@output_option("--out", "out_dir", folder=True, sub="unseen", required=True,
               help="Folder for samples.csv, table.csv and unseen.png.")
@click.option("--alphas", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9", show_default=True, metavar="A,B,...",
              help="Interpolation positions between each LeNetLike and ResNet32 training instance.")
@_CHUNK
@device_option
@_NO_PROGRESS
@config_option
def sample_unseen_cmd(run_dir, out_dir, alphas, chunk, device, no_progress) -> None:
    """On a Multi space trained without VanillaCNN and ResNet8 (digits-unseen zoo), decode interpolations
    between LeNetLike and ResNet32 training instances, keep those read as VanillaCNN or ResNet8, evaluate
    them and compare with the zoo's real instances (count, mean, min, max test accuracy)."""
    from ..explore.unseen import TABLE_FIELDS, sample_unseen

    try:
        al = [float(v) for v in str(alphas).split(",") if v.strip()]
    except ValueError:
        al = []
    if not al or not all(0.0 <= a <= 1.0 for a in al):
        raise CliError(f"--alphas: expected comma-separated numbers in [0, 1], got {alphas!r}", 2)
    with user_errors():
        r = sample_unseen(run_dir, alphas=al, out=out_dir, device=check_device(device), chunk=chunk,
                          progress=not no_progress)
    kept = sum(s["kept"] for s in r.samples)
    click.echo(f"{len(r.samples)} interpolated embeddings decoded, {kept} read as an unseen architecture")
    if r.seen:
        click.echo(f"note: the run's training split holds {', '.join(r.seen)}: these are not unseen in this space")
    click.echo(",".join(TABLE_FIELDS))
    for row in r.table:
        click.echo(",".join(_fmt(row[k]) for k in TABLE_FIELDS))
    click.echo(f"done: {r.files['samples']}, {r.files['table']} and {r.files['png']}")


@cli.command("audit")
@_RUN
@output_option("--out", "out_dir", folder=True, sub="audit", required=True,
               help="Folder for audit.csv, audit.png and summary.md.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True,
              help="The zoo split whose networks are decoded (and interpolated between).")
@click.option("--steps", type=click.IntRange(min=0), default=5, show_default=True,
              help="Inner interpolation points between the split's weakest and strongest network.")
@click.option("--embedding", "embeddings", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              metavar="FILE", help="Also audit the network decoded from this embedding file (repeatable; e.g. "
                                   "netspace optimize's best_embedding.safetensors).")
@click.option("--images", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Test images the networks' predictions are compared on.")
@_CHUNK
@device_option
@config_option
def audit_cmd(run_dir, out_dir, split, steps, embeddings, images, chunk, device) -> None:
    """Memorization audit: for the decoded networks of a split, an interpolation, decoded embeddings and
    (unseen spaces) unseen-architecture samples, the nearest training network by PRep L2 distance and by
    prediction agreement on the test images; the same for two baselines (an input plus noise of matched
    norm, the average of the two training networks nearest to it)."""
    from ..explore.audit import audit, summary_lines

    with user_errors():
        a = audit(run_dir, out=out_dir, split=split, steps=steps, embeddings=list(embeddings), images=images,
                  device=check_device(device), chunk=chunk)
    click.echo("\n".join(summary_lines(a)))
    click.echo(f"done: {a.files['csv']}, {a.files['png']} and {a.files['summary']}")


@cli.command("optimize")
@_RUN
@click.option("--from", "from_id", default=None, metavar="ID", help="Start from this zoo instance's embedding.")
@click.option("--random", "random_start", is_flag=True,
              help="Start from a seeded random embedding: N(mean, std^2) per dimension of the training embeddings.")
@click.option("--arch", default=None, metavar="NAME|PKG.MOD:FACTORY",
              help="Wanted architecture (Multi; default: the start's).")
@click.option("--steps", type=click.IntRange(min=1), default=3000, show_default=True, help="Adam steps on the embedding.")
@click.option("--lr", type=click.FloatRange(min=0.0, min_open=True), default=1e-4, show_default=True,
              help="Adam learning rate.")
@click.option("--eval-every", type=click.IntRange(min=1), default=None,
              help="Evaluate every N steps (default: steps / 20).")
@click.option("--image-batch", type=click.IntRange(min=1), default=128, show_default=True,
              help="Training images per step.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random start and image order.")
@click.option("--teacher", default=None, metavar="ID",
              help="Teacher instance (default: the zoo's ResNet56, else its best training network).")
@output_option("--out", "out_dir", folder=True, sub="optimize", required=True,
               help="Folder for curve.csv, curve.png, best.safetensors, best_embedding.safetensors, summary.json.")
@device_option
@_NO_PROGRESS
@config_option
def optimize_cmd(run_dir, from_id, random_start, arch, steps, lr, eval_every, image_batch, seed, teacher, out_dir,
                 device, no_progress) -> None:
    """Latent space optimization: the decoder frozen, Adam on one embedding, the decoded network
    distilled from the teacher on the training images (Multi: plus L_class towards --arch); an
    accuracy curve and the best network (by validation accuracy) saved as a plain state dict."""
    from ..explore.optimize import optimize

    if (from_id is None) == (not random_start):
        raise CliError("optimize: give exactly one of --from ID and --random", 2)
    if arch is not None:
        with user_errors(2):  # a bad --arch is a bad argument: exit 2, before any work
            from ..archs import resolve

            arch = resolve(arch)  # a name, or a user architecture's package.module:factory
    with user_errors():
        r = optimize(run_dir, start="random" if random_start else from_id, arch=arch, steps=steps, lr=lr,
                     eval_every=eval_every, image_batch=image_batch, seed=seed, teacher=teacher, out=out_dir,
                     device=check_device(device), progress=not no_progress)
    first, last, best = r.rows[0], r.rows[-1], r.best
    click.echo(f"teacher {r.teacher}; architecture {r.arch}")
    for name, row in (("start", first), ("best", best), ("last", last)):
        click.echo(f"{name}: step {row['step']}, distillation loss {row['distill_loss']:.4f}, val acc "
                   f"{row['val_acc']:.4f}, test acc {row['test_acc']:.4f}"
                   + (f", predicted {row['predicted_arch']}" if row["predicted_arch"] else "")
                   + f" ({row['seconds']:.1f} s)")
    click.echo(f"done: {r.files['csv']}, {r.files['png']}, {r.files['network']}")


@cli.command("export")
@_RUN
@click.option("--id", "id_", default=None, metavar="ID", help="Decode this zoo instance's embedding.")
@click.option("--embedding", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="Decode this embedding (safetensors with the key 'embedding').")
@output_option("--out", "out_file", folder=False, sub="exports", required=True, help="The .safetensors file to write.")
@device_option
@config_option
def export_cmd(run_dir, id_, embedding, out_file, device) -> None:
    """Write a decoded network as a plain state dict: archs.build(arch, dataset, batchnorm=False)
    loads it (arch and dataset are in the file's metadata; netspace_fast.explore.load_network)."""
    from ..explore.export import export_network

    if (id_ is None) == (embedding is None):
        raise CliError("export: give exactly one of --id ID and --embedding FILE", 2)
    with user_errors():
        info = export_network(run_dir, out_file, id=id_, embedding=embedding, device=check_device(device))
    click.echo(f"done: {info['arch']} ({info['dataset']}) written to {str(info['path'])!r}")


@cli.command("visualize")
@_RUN
@click.option("--id", "id_", required=True, metavar="ID", help="The zoo instance to show.")
@output_option("--out", "out_file", folder=False, sub="images", required=True, help="The PNG file to write.")
@device_option
@config_option
def visualize_cmd(run_dir, id_, out_file, device) -> None:
    """Input and decoded PRep of a network as images side by side (near-square layout, viridis, colour
    range clipped to the 1st-99th percentiles)."""
    from ..explore.visualize import visualize

    with user_errors():
        info = visualize(run_dir, id_, out_file, device=check_device(device))
    click.echo(f"input {info['arch']} test acc {info['input_acc']:.4f}; decoded {info['decoded_arch']} test acc "
               f"{info['decoded_acc']:.4f}")
    click.echo(f"done: {str(info['path'])!r}")
