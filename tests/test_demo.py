"""`netspace demo` (`make demo`) at its smoke size (every stage at its smallest: seconds). The full
size is measured by `make accept` (tests/test_explore_accept.py) and recorded in BENCHMARKS.md, "Demo (`make demo`)".

What must hold whatever the numbers: every stage runs and writes its files; the report states the
figures of summary.json, which are those of the stage outputs (evaluate.csv, the interpolation and
optimization CSVs); a second run reuses the zoo and the space (files untouched) and reports the
same figures; a fresh run with the same seed reproduces the zoo bit for bit and the same figures."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import spearmanr

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _demo(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netspace_fast.cli", "demo", "--size", "smoke", "--out", str(out),
                           "--no-progress", *extra], capture_output=True, text=True, timeout=600, env=ENV)


def _sha(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.safetensors"))}


def _figures(summary: dict) -> dict:
    """summary.json without the timings and the stage notes that legitimately change between runs."""
    s = {k: v for k, v in summary.items() if k not in ("times_s", "reused")}
    for k in ("first", "best", "last"):
        s["optimize"][k] = {kk: vv for kk, vv in s["optimize"][k].items() if kk != "seconds"}
    return s


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "runs" / "demo"
    r = _demo(out)
    assert r.returncode == 0, r.stdout + r.stderr
    return out, r


def test_demo_writes_every_stage(first):
    out, r = first
    for f in ("report.md", "summary.json", "evaluate.csv", "evaluate.png", "interpolate/interpolation.csv",
              "interpolate/interpolation.png", "optimize/curve.csv", "optimize/curve.png",
              "optimize/best.safetensors", "prep_images.png", "selfcheck/prep_resnet8_digits.png",
              "zoo/manifest.json", "space/best.safetensors", "audit/audit.csv", "audit/audit.png"):
        assert (out / f).is_file(), f
    for png in ("evaluate.png", "interpolate/interpolation.png", "optimize/curve.png", "prep_images.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.size[0] > 100
    assert "report: " in r.stdout and "decoded vs input: mean |gap| (test)" in r.stdout
    assert "decoded vs input: slope" in r.stdout and "decoded vs input: Spearman" in r.stdout


def _undefined_or(v) -> str | None:
    return None if v is None or math.isnan(v) else v


def test_demo_report_states_slope_and_spearman_of_the_scatter(first):
    """The slope (least squares, decoded on input test accuracy) and Spearman correlation in summary.json are
    numpy's and scipy's on evaluate.csv; the report and the printed summary state them, and show the scatter."""
    out, r = first
    s = json.loads((out / "summary.json").read_text())
    rows = list(csv.DictReader((out / "evaluate.csv").open()))
    x = np.array([float(r["input_acc"]) for r in rows])
    y = np.array([float(r["decoded_acc"]) for r in rows])
    assert np.ptp(x) > 0  # the smoke zoo's test networks differ: the slope is defined
    slope, intercept = np.polyfit(x, y, 1)
    ev = s["evaluate"]
    assert ev["slope"] == pytest.approx(slope, rel=1e-9, abs=1e-12)
    assert ev["intercept"] == pytest.approx(intercept, rel=1e-9, abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant side: scipy warns and returns NaN, the demo writes null
        rho = float(spearmanr(x, y).statistic)
    assert _undefined_or(ev["spearman"]) == (pytest.approx(rho, abs=1e-12) if not math.isnan(rho) else None)
    report = (out / "report.md").read_text()
    assert f"slope of decoded on input accuracy **{slope:.2f}**" in report
    shown = "undefined" if math.isnan(rho) else f"{rho:.3f}"
    assert f"Spearman correlation of input and decoded accuracy **{shown}**" in report
    assert re.search(rf"decoded vs input: slope +{slope:.2f}\n", r.stdout)
    assert re.search(rf"decoded vs input: Spearman +{shown}\n", r.stdout)
    assert ev["png"] == "evaluate.png" and "![decoded vs input accuracy](evaluate.png)" in report
    assert ev["keeps_differences"] == (slope >= 0.6 and not math.isnan(rho) and rho >= 0.9)


@pytest.mark.parametrize("decoded, keeps", [((0.5, 0.6, 0.7, 0.8), True), ((0.5, 0.55, 0.6, 0.65), False),
                                            ((0.8, 0.8, 0.8, 0.8), False), ((0.8, 0.5, 0.7, 0.6), False)])
def test_demo_verdict_on_slope_and_spearman(tmp_path, decoded, keeps):
    """The report's verdict and figure from slope and Spearman alone: tracking inputs (slope 1), a slope of 0.5,
    one network for all (Spearman undefined) and a shuffled ranking."""
    from netspace_fast.demo import _eval_verdict, _plot_scatter, keeps_differences
    from netspace_fast.space.evaluate import summarize

    rows = [{"network": f"n{i}", "arch": "lenetlike", "class_id": None, "predicted_class_id": None,
             "input_acc": a, "decoded_acc": d} for i, (a, d) in enumerate(zip((0.5, 0.6, 0.7, 0.8), decoded))]
    stats = summarize(rows)
    assert stats["slope"] == pytest.approx(np.polyfit([r["input_acc"] for r in rows], decoded, 1)[0])
    assert keeps_differences(stats) is keeps
    assert ("The space keeps its inputs' differences (" in _eval_verdict(rows, stats)) is keeps
    with Image.open(_plot_scatter(rows, stats, tmp_path / "s.png")) as im:
        assert im.format == "PNG" and im.size[0] > 100


def test_demo_report_states_the_measured_figures(first):
    out, _ = first
    s = json.loads((out / "summary.json").read_text())
    rows = list(csv.DictReader((out / "evaluate.csv").open()))
    assert len(rows) == s["evaluate"]["networks"] == s["zoo"]["test"]["networks"] >= 2
    gap = sum(abs(float(r["input_acc"]) - float(r["decoded_acc"])) for r in rows) / len(rows)
    assert s["evaluate"]["mean_abs_gap"] == pytest.approx(gap, abs=1e-12)
    interp = list(csv.DictReader((out / "interpolate/interpolation.csv").open()))
    assert len(interp) == 5
    assert s["interpolate"]["min_embedding_acc"] == pytest.approx(min(float(r["embedding_acc"]) for r in interp))
    assert s["interpolate"]["min_weight_acc"] == pytest.approx(min(float(r["weights_acc"]) for r in interp))
    curve = list(csv.DictReader((out / "optimize/curve.csv").open()))
    assert min(abs(s["optimize"]["best_acc"] - float(r["test_acc"])) for r in curve) < 1e-6
    # a and b are the weakest and the strongest test networks
    accs = {r["network"]: float(r["input_acc"]) for r in rows}
    assert accs[s["interpolate"]["a"]] == min(accs.values()) and accs[s["interpolate"]["b"]] == max(accs.values())
    report = (out / "report.md").read_text()
    assert f"**{100 * gap:.2f} points**" in report
    # the audit: one decoded row per test network, the optimized embedding, the summary in the report
    audit = list(csv.DictReader((out / "audit/audit.csv").open()))
    assert sum(r["kind"] == "decoded" for r in audit) == len(rows)
    assert sum(r["kind"] == "embedding" for r in audit) == 1
    assert "## Memorization audit" in report and s["audit"]["lines"][0] in report
    for r in rows:
        assert f"| {r['network']} | {100 * float(r['input_acc']):.1f}% | {100 * float(r['decoded_acc']):.1f}% |" in report
    for k in ("selfcheck", "zoo", "space", "evaluate", "interpolate", "optimize", "images", "total"):
        assert f"| {k} | {s['times_s'][k]:.1f} |" in report
    assert "all checks passed" in report and s["machine"] in report


def test_demo_second_run_reuses_and_fresh_reproduces(first, tmp_path):
    out, _ = first
    s1 = json.loads((out / "summary.json").read_text())
    zoo_sha = _sha(out / "zoo")
    stamps = {p: p.stat().st_mtime_ns for p in [*(out / "zoo").iterdir(), *(out / "space").iterdir()]}
    r = _demo(out)
    assert r.returncode == 0, r.stdout + r.stderr
    s2 = json.loads((out / "summary.json").read_text())
    assert s2["reused"] == {"zoo": True, "space": True} and s1["reused"] == {"zoo": False, "space": False}
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing of the zoo or the space rewritten
    assert _figures(s2) == _figures(s1)
    # --fresh in the same folder: starts over (nothing reused) and, with the same seed, the same zoo
    # bit for bit and the same figures
    r = _demo(out, "--fresh")
    assert r.returncode == 0, r.stdout + r.stderr
    s3 = json.loads((out / "summary.json").read_text())
    assert s3["reused"] == {"zoo": False, "space": False}
    assert _sha(out / "zoo") == zoo_sha
    assert _figures(s3) == _figures(s1)


def test_demo_of_another_recipe_says_fresh(tmp_path):
    """A folder holding an earlier demo's zoo of another configuration (another preset, as after the demo's
    recipe changed) is not resumed: one error line that names --fresh, and nothing of the zoo rewritten."""
    from netspace_fast.zoo.job import train_zoo

    out = tmp_path / "demo"
    train_zoo(out / "zoo", "digits-tiny", progress=False)
    manifest = (out / "zoo" / "manifest.json").read_bytes()
    r = _demo(out)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "different configuration" in r.stderr and f"netspace demo --fresh --out {out}" in r.stderr
    assert (out / "zoo" / "manifest.json").read_bytes() == manifest


def test_demo_bad_arguments(tmp_path):
    r = _demo(tmp_path / "d", "--seed", "-1")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--seed" in r.stderr
    r = subprocess.run([sys.executable, "-m", "netspace_fast.cli", "demo", "--size", "huge"], capture_output=True,
                       text=True, env=ENV)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--size" in r.stderr
    with pytest.raises(ValueError, match="size"):
        from netspace_fast.demo import run_demo

        run_demo(tmp_path / "d", size="huge")
