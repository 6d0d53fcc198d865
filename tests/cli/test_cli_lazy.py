"""The command line starts without the library: importing ``netspace_fast.cli``, every command's
``--help`` and argument errors leave torch (and with it Triton and the native kernels) unimported;
the package's public names load on first access and are the objects of their home modules."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import click

import netspace_fast
from netspace_fast.cli import cli

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "triton", "netspace_fast._C", "netspace_fast.archs", "netspace_fast.ops", "netspace_fast.engine")

# each public name of netspace_fast and the module it comes from (None: the name is that module)
HOMES = {
    "LayoutEntry": "netspace_fast.prep.layout",
    "PRepLayout": "netspace_fast.prep.layout",
    "PRepPacker": "netspace_fast.prep.pack",
    "archs": None,
    "space": None,
    "backends": "netspace_fast.ops.backend",
    "batched_forward": "netspace_fast.engine.batched",
    "fold_bn": "netspace_fast.prep.fold",
    "load_prep": "netspace_fast.prep.layout",
    "pack_preps": "netspace_fast.prep.pack",
    "prep_shape": "netspace_fast.prep.layout",
    "tune_malloc": "netspace_fast.settings",
    "unpack_prep": "netspace_fast.prep.layout",
}


def command_paths(group: click.Group = cli, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command of the tree, as the words that name it (the root: ())."""
    out = [prefix]
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            out += command_paths(cmd, prefix + (name,))
        else:
            out.append(prefix + (name,))
    return out


def _fresh(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object, returned here."""
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


_INVOKE = """
import json, sys
from click.testing import CliRunner
import netspace_fast.cli
after_import = sorted(m for m in {heavy!r} if m in sys.modules)
results = []
for args in {calls!r}:
    r = CliRunner().invoke(netspace_fast.cli.cli, args)
    results.append([args, r.exit_code, r.output, repr(r.exception) if r.exit_code not in (0, 2) else None])
print(json.dumps({{"after_import": after_import, "results": results,
                  "loaded": sorted(m for m in {heavy!r} if m in sys.modules)}}))
"""


def test_command_tree_is_walked():
    paths = command_paths()
    assert () in paths and ("train", "single") in paths and ("zoo", "train") in paths and ("eval",) in paths
    assert len(paths) > 10


def test_help_of_every_command_leaves_torch_unimported():
    calls = [[*p, "--help"] for p in command_paths()]
    got = _fresh(_INVOKE.format(heavy=HEAVY, calls=calls))
    assert got["after_import"] == []
    for args, code, output, exc in got["results"]:
        assert code == 0, (args, output, exc)
        assert "Usage: " in output and "--help" in output, (args, output)
    assert got["loaded"] == [], "--help imported the library"


def test_argument_errors_leave_torch_unimported():
    calls = [["train", "single"],  # --zoo and --out missing
             ["eval", "RUN", "--split", "bogus"],
             ["zoo", "train", "--out", "x"],  # --preset missing
             ["optimize", "RUN", "--random", "--steps", "many", "--out", "x"],
             ["no-such-command"]]
    got = _fresh(_INVOKE.format(heavy=HEAVY, calls=calls))
    for args, code, output, exc in got["results"]:
        assert code == 2, (args, output, exc)
        assert "error:" in output.lower(), (args, output)
    assert "Missing option" in got["results"][0][2]
    assert "bogus" in got["results"][1][2] and "--split" in got["results"][1][2]
    assert got["loaded"] == []


def test_public_names_load_on_first_access_in_a_fresh_interpreter():
    got = _fresh(f"""
import json, sys
import netspace_fast
before = sorted(m for m in {HEAVY!r} if m in sys.modules)
from netspace_fast import pack_preps
from netspace_fast.prep.pack import pack_preps as home
print(json.dumps({{"before": before, "same": pack_preps is home, "archs": netspace_fast.archs.__name__,
                  "torch": "torch" in sys.modules}}))
""")
    assert got == {"before": [], "same": True, "archs": "netspace_fast.archs", "torch": True}


def test_public_names_are_their_home_modules_objects():
    assert sorted(netspace_fast.__all__) == sorted(HOMES)
    for name, home in HOMES.items():
        got = getattr(netspace_fast, name)
        want = importlib.import_module(f"netspace_fast.{name}") if home is None else \
            getattr(importlib.import_module(home), name)
        assert got is want, name
    assert netspace_fast.__version__


def test_dir_lists_the_public_names_and_unknown_names_raise():
    assert set(HOMES) <= set(dir(netspace_fast))
    try:
        netspace_fast.no_such_name  # noqa: B018
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("netspace_fast.no_such_name resolved")
