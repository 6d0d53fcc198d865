"""``netspace layout show|clear|retune``: the convolution layouts measured on this machine
(:mod:`netspace_fast.engine.layout`; ``NETSPACE_CONV_LAYOUT=auto``, the default)."""

from __future__ import annotations

import click

from .base import CliError, cli, device_option, user_errors

__all__ = ["layout_group"]

_DEVICE_HELP = "Whose choices: this machine's CPU model or its GPU model (each has its own cache file)."


@cli.group("layout")
def layout_group() -> None:
    """The convolution layouts measured on this machine: each layer shape's choice between one
    grouped convolution for all networks and one convolution per network, timed the first time a
    run meets the shape and cached per device model and torch version (NETSPACE_CACHE_DIR)."""


@layout_group.command("show")
@device_option(help=_DEVICE_HELP)
@click.option("--json", "as_json", is_flag=True, help="The cache file's entries as JSON (with each entry's status).")
def show_cmd(device: str, as_json: bool) -> None:
    """Print the cache file and, per layer shape, the layout, the verdict of its timing (measured,
    close, noisy N/MAX, loaded N/MAX, unjudged), both medians, the rounds, the spread and the load
    when timed (cores other processes kept busy / the cores)."""
    import json

    from .. import settings
    from ..engine import layout as L

    with user_errors():
        mode = settings.conv_layout()
        if as_json:
            t = L.LayoutTuner(L.device_name(device))
            entries = t.entries(strict=True)
            click.echo(json.dumps({"path": str(t.path), "device": t.device_name, "torch": t.torch_version,
                                   "conv_layout": mode,
                                   "entries": {k: {**e, "status": L.status(e)} for k, e in entries.items()}},
                                  indent=1))
            return
        text = L.describe_cache(device, strict=True)
    click.echo(text)
    if mode not in ("auto", "tune"):
        click.echo(f"note: NETSPACE_CONV_LAYOUT={mode}: the engine does not use these choices (auto does)")


@layout_group.command("clear")
@device_option(help=_DEVICE_HELP)
@click.option("--all", "everything", is_flag=True,
              help="Every conv layout cache in the cache folder (every device model and torch version).")
def clear_cmd(device: str, everything: bool) -> None:
    """Delete the cached choices: later runs time every layer shape again when they meet it."""
    from .. import settings
    from ..engine import layout as L

    with user_errors():
        if everything:
            removed = L.clear_caches()
            if not removed:
                click.echo(f"nothing to clear: no conv layout caches in {settings.cache_dir()}")
            for p in removed:
                click.echo(f"removed {p}")
            return
        t = L.LayoutTuner(L.device_name(device))
        if t.clear():
            click.echo(f"removed {t.path}")
        else:
            click.echo(f"nothing to clear: no cache file at {t.path}")


def _times(e: dict) -> str:
    load = e.get("load")
    load_s = f", load {load:.2f}/{e.get('cpus')}" if isinstance(load, (int, float)) else ""
    return (f"grouped {e['grouped_ms']:.4g} ms, split {e['split_ms']:.4g} ms, {e.get('reps')} rounds"
            f"{load_s}")


@layout_group.command("retune")
@device_option(help=_DEVICE_HELP)
@click.option("--all", "everything", is_flag=True,
              help="Every cached shape, final verdicts (measured, close) too (default: the others: noisy, "
                   "loaded, or cached by an older version).")
def retune_cmd(device: str, everything: bool) -> None:
    """Time the cached layer shapes again now (on an idle machine: a busy one gives 'loaded' again)
    and write the new verdicts. Runs already going keep the choices they made."""
    from ..engine import layout as L

    failed = 0
    counts: dict[str, int] = {}

    def report(key: str, old: dict, new) -> None:
        nonlocal failed
        if isinstance(new, str):
            failed += 1
            click.echo(f"  not timed ({new}): {key}")
            return
        counts[new["decision"]] = counts.get(new["decision"], 0) + 1
        click.echo(f"  {old['layout']} ({L.status(old)}) -> {new['layout']} ({L.status(new)}; {_times(new)}): {key}")

    with user_errors():
        t = L.LayoutTuner(L.device_name(device))
        click.echo(f"{t.path}  ({t.device_name}, torch {t.torch_version})")
        entries = t.entries(strict=True)
        if not entries:
            click.echo("  nothing to time: no cached shapes (a run times each shape when it first meets it)")
            return
        t.retune(everything, report)
    timed = sum(counts.values())
    if not timed and not failed:
        click.echo(f"  nothing to time again: all {len(entries)} entries are final (--all times them too)")
        return
    click.echo(f"{timed} shapes timed again: " + ", ".join(f"{counts.get(d, 0)} {d}" for d in L.DECISIONS))
    if counts.get("loaded") or counts.get("noisy"):
        click.echo("note: noisy or loaded shapes use the static rule; later runs time them again (or retune when "
                   "the machine is idle)")
    if failed:
        raise CliError(f"could not time {failed} of the shapes (see above)")
