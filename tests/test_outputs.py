"""The one output rule (netspace_fast.outputs.check_output): a run or a zoo, their files and their
hidden folders are refused as outputs; subfolders of a run for a command's own outputs, and
everything outside runs and zoos, are fine; the command that creates or resumes a kind may name it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from netspace_fast.outputs import check_output, describe, owner


@pytest.fixture
def tree(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"schema": 1, "command": "train single", "config": {}}))
    (run / "best.safetensors").write_bytes(b"x")
    zoo = tmp_path / "zoo"
    (zoo / ".checkpoints").mkdir(parents=True)
    (zoo / "manifest.json").write_text(json.dumps({"schema_version": 2, "instances": [{"id": "a"}, {"id": "b"}]}))
    (zoo / "a.safetensors").write_bytes(b"y")
    return run, zoo


def test_owner_and_description(tree, tmp_path):
    run, zoo = tree
    assert owner(run / "best.safetensors") == ("run", run.resolve())
    assert owner(zoo / ".checkpoints" / "x") == ("zoo", zoo.resolve())
    assert owner(tmp_path / "elsewhere") is None
    assert describe("run", run) == "a NetSpace run (train single)"
    assert describe("zoo", zoo) == "a model zoo (2 networks)"


@pytest.mark.parametrize("rel,folder", [
    ("run", True), ("zoo", True),                                           # the folders themselves
    ("run/best.safetensors", False), ("run/state.json", False),            # a run's files, present or to come
    ("zoo/a.safetensors", False), ("zoo/manifest.json", False), ("zoo/c.safetensors", False),
    ("zoo/.checkpoints", True), ("zoo/.checkpoints/job.safetensors", False),  # hidden folders
    ("zoo/.cache/new", True),
    ("run/best.safetensors", True),                                         # a file of the run as a folder
])
def test_refused(tree, tmp_path, rel, folder):
    with pytest.raises(ValueError) as e:
        check_output(tmp_path / rel, folder=folder, name="--out")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("--out: ")
    assert ("run" in msg) if rel.startswith("run") else ("zoo" in msg)


@pytest.mark.parametrize("rel,folder", [
    ("run/interp", True), ("run/exports/net.safetensors", False), ("run/a/b/c", True),
    ("elsewhere", True), ("elsewhere/x.png", False), ("zoo/notes/n.csv", False),
])
def test_allowed(tree, tmp_path, rel, folder):
    assert check_output(tmp_path / rel, folder=folder) == tmp_path / rel


def test_the_creating_command_may_name_its_kind(tree):
    run, zoo = tree
    assert check_output(run, folder=True, may_be=("run",)) == run
    assert check_output(zoo, folder=True, may_be=("zoo",)) == zoo
    with pytest.raises(ValueError, match="model zoo"):
        check_output(zoo, folder=True, may_be=("run",))  # train --out ZOO
    with pytest.raises(ValueError, match="may_be"):
        check_output(run, folder=True, may_be=("runs",))


def test_symbolic_links_and_relative_paths(tree, tmp_path, monkeypatch):
    run, _ = tree
    (tmp_path / "link").symlink_to(run)
    with pytest.raises(ValueError, match="NetSpace run"):
        check_output(tmp_path / "link" / "best.safetensors", folder=False)
    with pytest.raises(ValueError, match="NetSpace run"):
        check_output(tmp_path / "link", folder=True)
    monkeypatch.chdir(run)
    with pytest.raises(ValueError, match="NetSpace run"):
        check_output("best.safetensors", folder=False)
    with pytest.raises(ValueError, match="NetSpace run"):
        check_output(".", folder=True)
    assert check_output(Path("sub") / "x.csv", folder=False) == Path("sub") / "x.csv"  # a run's subfolder


def test_a_suggestion_where_to_write(tree):
    run, _ = tree
    with pytest.raises(ValueError) as e:
        check_output(run, folder=True, sub="optimize")
    assert repr(str(run / "optimize")) in str(e.value)
    with pytest.raises(ValueError) as e:
        check_output(run / "best.safetensors", folder=False, sub="exports")
    assert repr(str(run / "exports" / "best.safetensors")) in str(e.value)
