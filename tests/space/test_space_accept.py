"""NetSpace training's acceptance on the digits presets (`make accept`, not `make test`: tens of minutes on 2 CPU
cores). Each builds its zoo with the zoo preset, trains NetSpace with the space preset through the
CLI, evaluates the test split with ``netspace eval`` and checks the goals below; the times are
printed (and recorded in BENCHMARKS.md), never asserted.

- Single: mean |input - decoded| accuracy <= 2.0 points and Spearman >= 0.9 on the test networks.
- Multi: the predicted ClassId right for every test network, and per architecture the decoded
  networks' mean accuracy at most 3 points below the inputs' mean.

``NETSPACE_ACCEPT_DIR`` keeps the zoos and runs in a folder (a rerun resumes them) instead of a
temporary one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from netspace_fast.cli import cli
from netspace_fast.space import Space
from netspace_fast.space.evaluate import summarize
from netspace_fast.zoo.job import train_zoo

pytestmark = pytest.mark.accept


def _dir(tmp_path) -> Path:
    d = os.environ.get("NETSPACE_ACCEPT_DIR")
    return Path(d) if d else tmp_path


def _train_and_eval(base: Path, protocol: str, zoo_preset: str) -> tuple[dict, list, float, float]:
    zoo = base / f"zoo-{zoo_preset}"
    t0 = time.perf_counter()
    train_zoo(zoo, zoo_preset, progress=False)
    t_zoo = time.perf_counter() - t0
    run = base / f"run-{protocol}"
    t0 = time.perf_counter()
    r = CliRunner().invoke(cli, ["train", protocol, "--zoo", str(zoo), "--out", str(run), "--no-progress"])
    t_space = time.perf_counter() - t0
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["eval", str(run), "--split", "test", "--csv", str(base / f"{protocol}-test.csv")])
    assert r.exit_code == 0, r.output
    print(r.output)
    rows = Space.load(run).evaluate("test")
    print(f"{protocol}: zoo {t_zoo:.0f} s, NetSpace {t_space:.0f} s")
    return summarize(rows), rows, t_zoo, t_space


def test_single_acceptance(tmp_path):
    s, rows, _, _ = _train_and_eval(_dir(tmp_path), "single", "digits-single")
    assert len(rows) >= 10
    assert s["spearman"] >= 0.9, s
    assert s["mean_abs_gap"] <= 0.02, s


def test_multi_acceptance(tmp_path):
    s, rows, _, _ = _train_and_eval(_dir(tmp_path), "multi", "digits-multi")
    assert {r["arch"] for r in rows} == {"lenetlike", "vanillacnn", "resnet8", "resnet32"}
    wrong = [r["network"] for r in rows if r["predicted_class_id"] != r["class_id"]]
    assert not wrong, wrong
    for arch, m in s["per_arch"].items():
        assert m["decoded_acc"] >= m["input_acc"] - 0.03, (arch, m)
