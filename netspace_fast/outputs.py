"""Who owns a path: the one rule every command that writes follows, so that no command writes over a
run or a zoo it was not asked to create or resume.

A **run** is a folder holding ``run.json`` (``netspace train ...``, ``import-checkpoint``); a **zoo**
is a folder holding ``manifest.json`` (``netspace zoo train|import|fit-sdf``). Each owns its folder:
every file directly in it (a run's checkpoints and best weights, a zoo's members and manifest, files
to come as much as files already there) and its hidden subfolders (``.checkpoints``, caches). An
output is refused, before any work, when it is

- a run or zoo folder itself (unless the command creates or resumes that kind: ``train`` resumes a
  run, ``zoo train`` a zoo);
- a file directly in a run or zoo folder, or anything inside one of their hidden subfolders.

A subfolder of a run for a command's own outputs (``run/interp``, ``run/exports/net.safetensors``) is
fine. :func:`check_output` is the rule; the CLI's output options (:func:`netspace_fast.cli.base.
output_option`) apply it while parsing the command line, and the library's output helpers
(:func:`netspace_fast.explore.common.check_out_dir`, :func:`netspace_fast.explore.export.save_network`,
the figures) apply it again, so a Python caller gets the same protection. Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["RUN_MARK", "ZOO_MARK", "check_output", "describe", "owner"]

RUN_MARK = "run.json"
ZOO_MARK = "manifest.json"
_KINDS = ("run", "zoo")


def _absolute(path) -> Path:
    """``path`` made absolute with symbolic links resolved (as far as it exists)."""
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def _kind(folder: Path) -> str | None:
    if (folder / RUN_MARK).is_file():
        return "run"
    if (folder / ZOO_MARK).is_file():
        return "zoo"
    return None


def owner(path) -> tuple[str, Path] | None:
    """The nearest run or zoo folder that ``path`` is or lies inside: ``("run" | "zoo", folder)``, or
    None. The folder is absolute, symbolic links resolved."""
    p = _absolute(path)
    for d in (p, *p.parents):
        k = _kind(d)
        if k is not None:
            return k, d
    return None


def describe(kind: str, folder: Path) -> str:
    """What the folder is, for a message: 'a NetSpace run (train single)', 'a model zoo (12 networks)'."""
    try:
        if kind == "run":
            command = json.loads((folder / RUN_MARK).read_text()).get("command")
            return f"a NetSpace run ({command})" if isinstance(command, str) else "a NetSpace run"
        n = len(json.loads((folder / ZOO_MARK).read_text()).get("instances", []))
        return f"a model zoo ({n} network{'s' if n != 1 else ''})"
    except (OSError, ValueError, AttributeError, TypeError):
        return "a NetSpace run" if kind == "run" else "a model zoo"


def check_output(path, *, folder: bool, name: str = "out", may_be: tuple[str, ...] = (), sub: str = "outputs") -> Path:
    """``path`` (an output ``folder`` or file), or a ValueError of one line when writing there would
    write over a run or a zoo (module doc). ``name``: the argument, for the message (``--out``);
    ``may_be``: the kinds of folder this command creates or resumes (``("run",)`` for ``train``);
    ``sub``: the subfolder name the message suggests (``run/<sub>``)."""
    for k in may_be:
        if k not in _KINDS:
            raise ValueError(f"may_be: expected kinds among {_KINDS}, got {k!r}")
    found = owner(path)
    if found is None:
        return Path(path)
    kind, root = found
    given, what = Path(os.fspath(path)), describe(kind, root)
    rel = _absolute(path).relative_to(root).parts
    if not rel:  # the run or zoo folder itself
        if folder and kind in may_be:
            return given
        if folder:
            raise ValueError(f"{name}: {str(given)!r} is {what}, which no other command writes into; give a new "
                             f"folder (a subfolder such as {str(given / sub)!r} is fine)")
        raise ValueError(f"{name}: {str(given)!r} is {what}; expected a file path outside it")
    hidden = rel[0].startswith(".")
    if hidden or (len(rel) == 1 and (not folder or (root / rel[0]).is_file())):
        where = "a hidden folder of" if hidden else "a file of"
        suggestion = f"a folder outside {str(root)!r}" if hidden else str(given.parent / sub / given.name)
        raise ValueError(f"{name}: {str(given)!r} is {where} {str(root)!r}, {what}, which only its own command "
                         f"writes; write elsewhere (e.g. {suggestion!r})")
    return given
