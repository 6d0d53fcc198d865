"""The root ``netspace`` group and the one-line error convention (described in
:mod:`netspace_fast.cli`): :class:`CliError` and :func:`user_errors`, used by every command module."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

__all__ = ["CliError", "cli", "user_errors"]

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
# the command tree


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="netspace_fast", prog_name="netspace", message="%(prog)s %(version)s")
def cli() -> None:
    """NetSpace: model zoos, PReps and the space of deep models."""


