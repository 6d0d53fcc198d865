"""A Fashion-MNIST zoo in the HSG-AIML Model Zoos' layout, made as their uniform zoo was made, imported
and encoded by a Single space, end to end through the commands a user runs (`make accept`, not `make
test`: about 1.5 hours on 2 CPU cores, the zoo ~1 hour of them; BENCHMARKS.md, "Public model zoos: a
Fashion-MNIST Model Zoo, imported"):

1. ``python scripts/make_modelzoo.py --root R --out mz-fmnist-uniform --trials 24 --epochs 10``: 24
   trials of their CNN-s (seeds 1..24) trained by their recipe, in their layout;
2. ``netspace zoo import --format modelzoo mz-fmnist-uniform --out mz-zoo --epochs 1,2,...,10`` (their
   70/15/15 split of the trials: 16 / 3 / 5 trials, 160 / 30 / 50 networks; epoch 0, the untrained
   network, is left out: nothing to encode), then ``netspace zoo verify mz-zoo``;
3. ``netspace train single --zoo mz-zoo --root R --out mz-space`` (the zoo's dataset picks the preset:
   fmnist-single), ``netspace eval mz-space --split test``.

The goal asserted is the Single goal of our own zoos (tests/space/test_space_accept.py): on the test
networks, mean |input - decoded| accuracy <= 2.0 points and Spearman >= 0.9. The figures and times are
printed and written to ``<dir>/realdata-summary.json`` (key ``modelzoo``). The data and the folder:
``NETSPACE_FMNIST_ROOT`` and ``NETSPACE_ACCEPT_DIR`` as in tests/test_realdata_accept.py (skipped
without the data; a rerun with the folder resumes: a finished zoo is not made again, the import and
the space resume).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from accept_cli import run_cli
from test_realdata_accept import _record, base, root  # noqa: F401 (fixtures)

pytestmark = pytest.mark.accept

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "make_modelzoo.py"
TRIALS, EPOCHS = 24, 10


def _made(src: Path) -> bool:
    return src.is_dir() and not (src / ".partial").exists() and len(
        [p for p in src.iterdir() if p.name.startswith("NN_tune_trainable_")]) == TRIALS


def test_modelzoo_fmnist_single(root, base):  # noqa: F811 (fixtures)
    src, zoo, run = base / "mz-fmnist-uniform", base / "mz-zoo", base / "mz-space"
    times = {}
    if not _made(src):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(SCRIPT), "--root", str(root), "--out", str(src), "--trials", str(TRIALS),
                        "--epochs", str(EPOCHS)], check=True)
        times["make_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_cli("zoo", "import", "--format", "modelzoo", src, "--out", zoo, "--epochs",
            ",".join(str(e) for e in range(1, EPOCHS + 1)))
    times["import_s"] = time.perf_counter() - t0
    assert run_cli("zoo", "verify", zoo).strip() == f"ok: {TRIALS * EPOCHS} instances verified"
    t0 = time.perf_counter()
    run_cli("train", "single", "--zoo", zoo, "--root", root, "--out", run, "--no-progress")
    times["space_s"] = time.perf_counter() - t0
    out = run_cli("eval", run, "--split", "test", "--csv", base / "mz-test.csv")
    print(out)
    s = json.loads((base / "mz-test.csv.summary.json").read_text())
    accs = [json.loads(line)["test_acc"] for p in sorted(src.glob("NN_tune_trainable_*"))
            for line in (p / "result.json").read_text().splitlines()[1:]]
    _record(base, "modelzoo", {"summary": s, "times": times, "zoo_test_acc": [min(accs), max(accs)]})
    assert s["networks"] == 50, s  # 5 of their 24 trials x 10 epochs
    assert s["spearman"] >= 0.9, s
    assert s["mean_abs_gap"] <= 0.02, s
