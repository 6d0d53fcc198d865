"""The ``netspace`` command line (click): the root group and the one-line error convention; each
capability's commands live in their own module (:mod:`.zoo`; next ``space``, ``sdf``, ``explore``).

::

    netspace zoo info DIR [--json]      summary of a zoo: schema, config, counts, accuracy ranges
    netspace zoo verify DIR             check every file against the manifest; exit 0 clean, 1 problems
    netspace zoo train --preset NAME --out DIR [--root PATH] [--seed INT] [--device cpu|cuda] [--no-progress]
                       [--tensorboard LOGDIR]
    torchrun --nproc_per_node=K -m netspace_fast.cli zoo train ...   the same, instances sharded over K ranks

Also runnable as ``python -m netspace_fast.cli``. A user mistake (missing folder, no manifest,
unknown preset, a ValueError / OSError raised by the library) is reported as one ``error: ...``
line on stderr with a non-zero exit status, never a traceback: exit 1 for a failed operation,
exit 2 for a bad argument (click's convention). Library modules are imported inside the commands,
so ``netspace --help`` stays cheap and a broken optional module only affects its own command.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
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


