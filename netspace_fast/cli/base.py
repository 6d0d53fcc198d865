"""The root ``netspace`` group and the one-line error convention (described in
:mod:`netspace_fast.cli`): :class:`CliError` and :func:`user_errors`, used by every command module."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

__all__ = ["CliError", "check_device", "cli", "config_option", "device_option", "download_option", "load_config",
           "output_option", "tensorboard_option", "user_errors"]

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
    """``device`` if usable here: 'cuda' without a CUDA device is a CliError (exit 2). A CUDA device
    gets cuDNN's autotuner by the one rule (:func:`netspace_fast.settings.cudnn_benchmark`)."""
    from ..settings import apply_cudnn_benchmark, check_device as _check

    try:
        name = _check(device)
        if name != "cpu":
            apply_cudnn_benchmark()
        return name
    except ValueError as e:
        msg = str(e)
        raise CliError(msg if msg.startswith("NETSPACE_") else f"--{msg}", 2) from None


def download_option(f):
    """``--download``: fetch the dataset into ``--root`` first (CIFAR-10, Fashion-MNIST, MNIST, with
    torchvision's checksums). Never a download without it."""
    return click.option("--download", is_flag=True,
                        help="Fetch the dataset (cifar10, fashion-mnist, mnist) into --root first, checksummed "
                             "(needs a network; nothing is ever downloaded without this flag).")(f)


def _device_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return value if value is None else check_device(value)


def device_option(f=None, *, default: str | None = "cpu", help: str = "Where to decode and evaluate."):
    """``--device cpu|cuda`` (default cpu), the one option every command takes: 'cuda' on a machine
    without a usable CUDA device is refused while the command line is read, before any work.
    ``default=None``: left to the library (``zoo train``)."""
    def deco(g):
        return click.option("--device", type=click.Choice(["cpu", "cuda"]), default=default,
                            show_default=default is not None, callback=_device_callback, help=help)(g)

    return deco if f is None else deco(f)


class _Output(click.Path):
    """A path a command writes (a folder or a file): :func:`netspace_fast.outputs.check_output` while the
    command line is read, so a run or a zoo is never written over (one ``error:`` line, exit 2)."""

    def __init__(self, folder: bool, may_be: tuple[str, ...], sub: str) -> None:
        super().__init__(file_okay=not folder, dir_okay=folder, path_type=Path)
        self.folder, self.may_be, self.sub = folder, may_be, sub

    def convert(self, value, param, ctx):
        path = super().convert(value, param, ctx)
        from ..outputs import check_output

        name = next((o for o in getattr(param, "opts", ()) if o.startswith("--")), None) or (
            (param.human_readable_name if param is not None else "out"))
        try:
            check_output(path, folder=self.folder, name=name, may_be=self.may_be, sub=self.sub)
        except ValueError as e:
            raise CliError(str(e), 2) from None
        return path


def output_option(*decls: str, folder: bool, may_be: tuple[str, ...] = (), sub: str = "outputs", **kwargs):
    """An option naming what a command writes (``--out``, ``--csv``, ``--tensorboard``): checked by the
    one output rule (:mod:`netspace_fast.outputs`) before any work. ``folder``: a folder (else a
    file); ``may_be``: the kinds of folder the command creates or resumes (``("run",)``, ``("zoo",)``);
    ``sub``: the subfolder of a run the refusal suggests."""
    return click.option(*decls, type=_Output(folder, tuple(may_be), sub), **kwargs)


def tensorboard_option(f):
    """``--tensorboard LOGDIR`` of the training commands (an output folder: never a run or a zoo)."""
    return output_option("--tensorboard", folder=True, sub="tensorboard", default=None, metavar="LOGDIR",
                         help="Also write per-epoch scalars for TensorBoard to LOGDIR (needs the tensorboard "
                              "package).")(f)


# ---------------------------------------------------------------------------------------------
# the command tree


class _Group(click.Group):
    """The root group: a usage mistake (a missing or unknown option, a bad value, a number out of
    range) is one ``error: ...`` line naming the argument and where the help is, exit 2, as every
    other mistake; click's own layout (usage, a hint, a blank line, the error) would be four."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:
            where = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            click.echo(f"error: {' '.join(e.format_message().split())}{where}", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)  # as click's standalone mode: SystemExit on success too


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="netspace_fast", prog_name="netspace", message="%(prog)s %(version)s")
def cli() -> None:
    """NetSpace: model zoos, PReps and the space of deep models."""


