"""The root ``netspace`` group and the one-line error convention (described in
:mod:`netspace_fast.cli`): :class:`CliError` and :func:`user_errors`, used by every command module."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

__all__ = ["CliError", "check_device", "cli", "config_option", "device_option", "download_option", "load_config",
           "user_errors"]

# exceptions that mean "the user asked for something that cannot be done", not a bug
_USER_ERRORS = (ValueError, OSError)  # OSError covers FileNotFoundError, NotADirectoryError, PermissionError


class CliError(click.ClickException):
    """One ``error: <message>`` line on stderr and ``exit_code`` (1 unless given)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", file=file, err=True)


def _message(e: BaseException) -> str:
    return str(e) or type(e).__name__


@contextmanager
def user_errors(exit_code: int = 1) -> Iterator[None]:
    """Turn the library's ValueError / OSError into a one-line CLI error (no traceback)."""
    try:
        yield
    except click.ClickException:
        raise
    except _USER_ERRORS as e:
        raise CliError(_message(e), exit_code) from e


# ---------------------------------------------------------------------------------------------
# options shared by the commands: --config FILE (YAML), --device


def load_config(path: Path) -> dict:
    """A YAML file holding one mapping (option name -> value), as a dict; a CliError otherwise."""
    try:
        import yaml
    except ImportError as e:  # pragma: no cover - pyyaml is a dependency
        raise CliError(f"config: reading {str(path)!r} needs the pyyaml package: {e}", 2) from None
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise CliError(f"config: cannot read {str(path)!r}: {e.strerror or e}", 2) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CliError(f"config: {str(path)!r} is not valid YAML: {' '.join(str(e).split())}", 2) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CliError(f"config: {str(path)!r} must hold a mapping of option names to values, got a "
                       f"{type(data).__name__}", 2)
    return data


def _config_callback(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    """Make the YAML file's values the command's defaults (``ctx.default_map``): click then takes a
    value from the command line first, from the file second, from the option's own default last."""
    if value is None:
        return
    data = load_config(value)
    params, shown = {}, []  # key -> parameter: its flag names (out for --out) and its own name (out_dir)
    for p in ctx.command.params:
        if not p.name or p.name == param.name:
            continue
        names = [o.lstrip("-") for o in getattr(p, "opts", []) if o.startswith("--")]
        if isinstance(p, click.Argument):
            names.append((p.metavar or p.name).lower())
        shown.append(names[0] if names else p.name)
        for n in names + [p.name]:
            params[n.replace("-", "_")] = p
    mapped = {}
    for key, v in data.items():
        name = str(key).lstrip("-").replace("-", "_")
        if name not in params:
            raise CliError(f"config: {str(value)!r}: unknown key {key!r} for 'netspace {ctx.command_path.split(' ', 1)[-1]}'"
                           f"; valid keys: {', '.join(sorted(shown))}", 2)
        p = params[name]
        name = p.name
        if isinstance(p, click.Option) and p.multiple and not isinstance(v, list):
            v = [v]
        mapped[name] = v
    ctx.default_map = {**(ctx.default_map or {}), **mapped}


def config_option(f):
    """``--config FILE``: a YAML mapping of the command's option names (``steps: 50``, ``out: dir``;
    dashes or underscores) to values, overriding the command's defaults (a preset's included);
    options given on the command line override the file. Unknown keys are an error."""
    return click.option("--config", type=click.Path(dir_okay=False, path_type=Path), default=None, is_eager=True,
                        expose_value=False, callback=_config_callback, metavar="FILE",
                        help="YAML file of option values (keys: the option names); command-line flags win.")(f)


def check_device(device: str) -> str:
    """``device`` if usable here: 'cuda' without a CUDA device is a CliError."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise CliError("device: 'cuda' was asked for, but this machine has no usable CUDA device "
                           "(use --device cpu)", 2)
    return device


def download_option(f):
    """``--download``: fetch the dataset into ``--root`` first (CIFAR-10, Fashion-MNIST, MNIST, with
    torchvision's checksums). Never a download without it."""
    return click.option("--download", is_flag=True,
                        help="Fetch the dataset (cifar10, fashion-mnist, mnist) into --root first, checksummed "
                             "(needs a network; nothing is ever downloaded without this flag).")(f)


def device_option(f):
    """``--device cpu|cuda`` (default cpu)."""
    return click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
                        help="Where to decode and evaluate.")(f)


# ---------------------------------------------------------------------------------------------
# the command tree


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="netspace_fast", prog_name="netspace", message="%(prog)s %(version)s")
def cli() -> None:
    """NetSpace: model zoos, PReps and the space of deep models."""


