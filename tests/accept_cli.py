"""Helpers of the acceptance tests that run the ``netspace`` commands end to end (`make accept`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from click.testing import CliRunner

from netspace_fast.cli import cli


def run_cli(*args) -> str:
    """Run ``netspace ARGS`` in-process; a non-zero exit fails the test with the command's output. Prints
    the command and its wall time; returns the output."""
    t0 = time.perf_counter()
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    print(f"$ netspace {' '.join(map(str, args))}   ({time.perf_counter() - t0:.0f} s)")
    return r.output


def record(path: Path, key: str, value) -> None:
    """Set ``key`` of the JSON summary file ``path`` (created if missing) to ``value``."""
    s = json.loads(path.read_text()) if path.is_file() else {}
    s[key] = value
    path.write_text(json.dumps(s, indent=1, sort_keys=True, default=str) + "\n")
