"""``netspace layout show|clear|retune`` (netspace_fast/cli/layout.py): the measured convolution
layouts of this machine, in the cache folder NETSPACE_CACHE_DIR names (a tmp_path here). Timings
are mocked (``layout._time_layouts``); the command line's mistakes are one ``error:`` line."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from netspace_fast.cli import cli
from netspace_fast.engine import layout
from netspace_fast.engine.layout import ConvShape, LayoutTuner, Timing

R = layout.MIN_REPS
BIG = ConvShape.make(16, 16, 3, 1, 1, (32, 32), 8, 128, threads=2)
SMALL = ConvShape.make(64, 64, 3, 1, 1, (8, 8), 8, 128, threads=2)
OLD = ConvShape.make(3, 16, 3, 1, 1, (32, 32), 8, 128, threads=2, shared=True)


def timing(grouped_ms, split_ms, load=0.0):
    return Timing({"grouped": [grouped_ms] * R, "split": [split_ms] * R, "switch": [9.0] * R}, load, 0.2, 2)


def one_line_error(r, code: int, contains: str = "") -> str:
    assert r.exit_code == code, (r.exit_code, r.output)
    assert "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and contains in lines[0], r.stderr
    return lines[0]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """NETSPACE_CACHE_DIR in tmp_path, auto mode; ``cache.fill()`` writes three entries: measured
    (BIG: split), loaded (SMALL: the rule's split), and one of an older version without a verdict
    (OLD: grouped)."""
    monkeypatch.setenv("NETSPACE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "auto")
    t = LayoutTuner(layout.device_name("cpu"), directory=tmp_path / "cache")

    def fill():
        t.timer = lambda s: timing(75.0, 55.0) if s == BIG else timing(40.0, 60.0, load=1.9)
        t.layout(BIG), t.layout(SMALL)
        data = json.loads(t.path.read_text())
        data["entries"][OLD.key()] = {"layout": "grouped", "grouped_ms": 360.0, "split_ms": 410.0}
        t.path.write_text(json.dumps(data))
        return t

    t.fill = fill
    return t


def run(*args):
    return CliRunner().invoke(cli, ["layout", *args])


def test_show(cache):
    r = run("show")
    assert r.exit_code == 0 and "no choices measured yet" in r.output and str(cache.path) in r.output
    cache.fill()
    r = run("show")
    assert r.exit_code == 0, r.output
    rows = {ln.split("  ")[-1].strip(): ln.split() for ln in r.output.splitlines()[2:5]}
    assert rows[BIG.key()][:7] == ["split", "measured", "75", "55", "9", str(R), "0.0%"]
    assert rows[SMALL.key()][:3] == ["split", "loaded", f"1/{layout.MAX_ATTEMPTS}"]  # the rule
    assert rows[SMALL.key()][8] == "1.90/2"  # the load when timed: cores other processes held / cores
    assert rows[OLD.key()][:6] == ["grouped", "unjudged", "360", "410", "-", "-"]
    assert "note:" not in r.output
    data = json.loads(run("show", "--json").output)
    assert data["path"] == str(cache.path) and data["conv_layout"] == "auto"
    assert {k: e["status"] for k, e in data["entries"].items()} == {
        BIG.key(): "measured", SMALL.key(): f"loaded 1/{layout.MAX_ATTEMPTS}", OLD.key(): "unjudged"}


def test_show_says_when_the_engine_does_not_use_the_cache(cache, monkeypatch):
    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "rule")
    r = run("show")
    assert r.exit_code == 0 and "note: NETSPACE_CONV_LAYOUT=rule: the engine does not use these choices" in r.output


def test_retune(cache, monkeypatch):
    timed = []
    monkeypatch.setattr(layout, "_time_layouts", lambda s: (timed.append(s), timing(40.0, 60.0))[1])
    r = run("retune")
    assert r.exit_code == 0 and "nothing to time: no cached shapes" in r.output
    cache.fill()
    r = run("retune")
    assert r.exit_code == 0, r.output
    assert sorted(s.key() for s in timed) == sorted([SMALL.key(), OLD.key()])  # not the final one
    assert f"split (loaded 1/{layout.MAX_ATTEMPTS}) -> grouped (measured; grouped 40 ms, split 60 ms, {R} rounds, " \
           f"load 0.00/2): {SMALL.key()}" in r.output
    assert "2 shapes timed again: 2 measured, 0 close, 0 noisy, 0 loaded" in r.output
    entries = cache.entries()
    assert {k: e["decision"] for k, e in entries.items()} == {BIG.key(): "measured", SMALL.key(): "measured",
                                                              OLD.key(): "measured"}
    r = run("retune")
    assert r.exit_code == 0 and "nothing to time again: all 3 entries are final (--all times them too)" in r.output
    monkeypatch.setattr(layout, "_time_layouts", lambda s: timing(50.0, 60.0, load=1.9))
    r = run("retune", "--all")
    assert r.exit_code == 0 and "3 shapes timed again: 0 measured, 0 close, 0 noisy, 3 loaded" in r.output
    assert "note: noisy or loaded shapes use the static rule" in r.output
    assert cache.entries()[BIG.key()]["layout"] == "split"  # the rule


def test_retune_reports_shapes_it_cannot_time(cache, monkeypatch):
    cache.fill()

    def timer(s):
        if s == OLD:
            raise RuntimeError("out of memory")
        return timing(50.0, 60.0)

    monkeypatch.setattr(layout, "_time_layouts", timer)
    r = run("retune")
    one_line_error(r, 1, "could not time 1 of the shapes")
    assert f"not timed (RuntimeError: out of memory): {OLD.key()}" in r.stdout
    assert cache.entries()[OLD.key()]["layout"] == "grouped" and "decision" not in cache.entries()[OLD.key()]


def test_clear(cache, tmp_path):
    r = run("clear")
    assert r.exit_code == 0 and f"nothing to clear: no cache file at {cache.path}" in r.output
    cache.fill()
    other = LayoutTuner("Other CPU", directory=cache.directory, timer=lambda s: timing(1.0, 2.0))
    other.layout(BIG)
    r = run("clear")
    assert r.exit_code == 0 and r.output.strip() == f"removed {cache.path}"
    assert not cache.path.exists() and other.path.exists()
    r = run("clear", "--all")
    assert r.exit_code == 0 and r.output.strip() == f"removed {other.path}"
    r = run("clear", "--all")
    assert r.exit_code == 0 and "nothing to clear: no conv layout caches in" in r.output


@pytest.mark.parametrize("args,contains", [
    (["nope"], "No such command 'nope'"),
    (["show", "extra"], "unexpected extra argument"),
    (["show", "--device", "tpu"], "'tpu' is not one of"),
    (["clear", "--everything"], "--everything"),
    (["retune", "--device"], "--device"),
])
def test_argument_mistakes(cache, args, contains):
    one_line_error(run(*args), 2, contains)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
@pytest.mark.parametrize("command", ["show", "clear", "retune"])
def test_cuda_without_a_gpu(cache, command):
    one_line_error(run(command, "--device", "cuda"), 2, "no usable CUDA device")


@pytest.mark.parametrize("command", [["show"], ["show", "--json"], ["retune"]])
def test_a_corrupt_cache_is_one_error_line(cache, command):
    cache.path.parent.mkdir(parents=True)
    cache.path.write_text("{not json")
    one_line_error(run(*command), 1, f"the conv layout cache {str(cache.path)!r} is corrupt")
    r = run("clear")  # the way out
    assert r.exit_code == 0 and not cache.path.exists()


def test_a_bad_layout_setting_is_one_error_line(cache, monkeypatch):
    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "fastest")
    one_line_error(run("show"), 1, "NETSPACE_CONV_LAYOUT")
