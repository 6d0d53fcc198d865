"""``netspace zoo import --format smallcnnzoo`` (netspace_fast/zoo/public/smallcnnzoo.py): the Small CNN
Zoo -> our zoos. The zoos here are written in its layout by public_zoos.py (weights.npy rows of
flattened Keras tensors, layout.csv, metrics.csv.gz); the imported networks are checked against an
independent float64 reference of the Keras network. Covered: the round trip, epochs, NFN's split and
ours, NaN and diverged rows left out with a count, and every bad input (one line, nothing written)."""

from __future__ import annotations

import gzip
import math
import os
import random

import numpy as np
import pytest
import torch

from netspace_fast.zoo.public import import_smallcnnzoo
from public_zoos import STEPS, keras_forward, layout_rows, metrics_bytes, write_layout, write_smallcnnzoo


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_smallcnnzoo(tmp_path_factory.mktemp("scz"))


def test_round_trip(source, tmp_path):
    src, weights, metrics = source
    z = import_smallcnnzoo(src, tmp_path / "z")
    assert z.verify() == []
    last = [i for i, m in enumerate(metrics) if m["step"] == 86]  # each run's last checkpoint
    assert sorted(e["id"] for e in z.instances()) == [f"row{i:06d}-e086" for i in last]
    cfg = z.config
    assert cfg["import"] == "smallcnnzoo" and cfg["dataset"] == "fashion-mnist"
    assert cfg["geometry"] == {"channels": 1, "size": 28, "mean": [0.5], "std": [0.5]}  # grayscale in [-1, 1]
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    for i in last:
        m = metrics[i]
        e = z.entry(f"row{i:06d}-e086")
        assert e["architecture"] == f"smallcnnzoo_{m['config.activation']}_1x28" and e["protocol"] == "smallcnnzoo"
        assert (e["epoch"], e["seed"], e["train_acc"], e["val_acc"], e["test_acc"]) == (
            86, 42, m["train_accuracy"], None, m["test_accuracy"])
        assert cfg["members"][e["id"]] == {"run": m["modeldir"], "row": i}
        assert cfg["runs"][m["modeldir"]]["config.learning_rate"] == str(m["config.learning_rate"])
        with torch.no_grad():
            got = z.model(e["id"])(x).double().numpy()
        want = keras_forward(weights[i], x.permute(0, 2, 3, 1).numpy(), m["config.activation"])
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    # NFN's split over the 4 runs in file order: the second half test, the first shuffled by Random(0), 80/20
    first = [0, 1]
    random.Random(0).shuffle(first)
    runs = [metrics[i]["modeldir"] for i in last]
    expect = {runs[first[0]]: "train", runs[first[1]]: "val", runs[2]: "test", runs[3]: "test"}
    assert {e["id"]: e["split"] for e in z.instances()} == {
        f"row{i:06d}-e086": expect[metrics[i]["modeldir"]] for i in last}


def test_epochs_and_our_split(source, tmp_path):
    src, _, _ = source
    z = import_smallcnnzoo(src, tmp_path / "all", epochs="all", split="ours", seed=1)
    assert len(z) == 4 * len(STEPS) and {s: len(v) for s, v in z.splits.items()} == {"train": 28, "val": 4,
                                                                                      "test": 4}
    z = import_smallcnnzoo(src, tmp_path / "some", epochs="0,20")
    assert sorted({e["epoch"] for e in z.instances()}) == [0, 20] and len(z) == 8
    with pytest.raises(ValueError, match=r"run '/cns/smallcnnzoo/fashion_mnist/0': no checkpoint of epoch 5 \(it has "
                                         r"0, 1, 2, 3, 20, 40, 60, 80, 86\)"):
        import_smallcnnzoo(src, tmp_path / "none", epochs="5")
    assert not (tmp_path / "none").exists()


def test_plain_csv_and_grayscale_cifar10(tmp_path):
    src, weights, metrics = write_smallcnnzoo(tmp_path, runs=(("sigmoid", (86,)),), dataset="cifar10", gz=False)
    z = import_smallcnnzoo(src, tmp_path / "z", split="ours")
    (e,) = z.instances()
    assert e["architecture"] == "smallcnnzoo_sigmoid_1x32" and e["dataset"] == "cifar10"
    assert z.config["geometry"]["size"] == 32 and z.config["geometry"]["channels"] == 1
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        got = z.model(e["id"])(x).double().numpy()
    assert np.allclose(got, keras_forward(weights[0], x.permute(0, 2, 3, 1).numpy(), "sigmoid"), atol=1e-5)


def test_nan_and_diverged_rows_are_left_out_with_a_count(tmp_path):
    def edit(weights, metrics):
        weights[8, 100] = np.nan  # run 0's last row
        metrics[17]["train_loss"] = math.nan  # run 1's last row: diverged
        weights[26, 0] = 50.0  # run 2's last row: |w| > 10

    src, _, _ = write_smallcnnzoo(tmp_path, edit=edit)
    logs = []
    z = import_smallcnnzoo(src, tmp_path / "z", max_weight=10, log=logs.append)
    assert [e["id"] for e in z.instances()] == ["row000035-e086"]
    assert logs == ["left out 3 of 4 checkpoints: 1 with NaN/Inf weights, 2 diverged (non-finite recorded loss or "
                    "accuracy, or |w| > 10)"]
    every_row_inf = write_smallcnnzoo(tmp_path / "b", runs=(("relu", (86,)), ("relu", (86,))),
                                      edit=lambda w, m: w.__setitem__((slice(None), 3), np.inf))[0]
    _bad(every_row_inf, tmp_path / "none", r"every selected checkpoint was left out \(left out 2 of 2 checkpoints: "
                                           r"2 with NaN/Inf weights")


# ---------------------------------------------------------------------------------------------
# bad inputs: one line naming the file, nothing written


def _bad(src, out, match, **kw):
    with pytest.raises(ValueError, match=match) as info:
        import_smallcnnzoo(src, out, **kw)
    assert "\n" not in str(info.value)
    assert not out.exists()


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("case,match", [
    ("no weights", r"weights\.npy' is missing: expected the Small CNN Zoo"),
    ("no metrics", r"metrics\.csv\.gz' is missing \(nor is there a metrics\.csv\)"),
    ("no layout", r"layout\.csv' is missing"),
    ("other network", r"layout\.csv': describes kernels and biases .*\(3, 3, 16, 32\).*not the Small CNN Zoo's CNN"),
    ("gap", r"layout\.csv': the variables do not tile the columns"),
    ("bad shape", r"layout\.csv:3: shape must be a tuple of ints such as \(3, 3, 1, 16\), found '3x3'"),
    ("columns", r"weights\.npy': expected a float array of shape \(checkpoints, 4970\) \(layout\.csv's columns\), "
                r"found float32 \(36, 4969\)"),
    ("rows", r"metrics\.csv\.gz' has 35 rows for the 36 rows of weights\.npy"),
    ("not npy", r"weights\.npy' is not a NumPy array file numpy\.load\(allow_pickle=False\) can read"),
    ("pickled npy", r"weights\.npy' is not a NumPy array file numpy\.load\(allow_pickle=False\) can read \(Array "
                    r"can't be memory-mapped: Python objects in dtype\.\)"),
    ("truncated gz", r"metrics\.csv\.gz': not a readable gzip CSV file"),
    ("truncated row", r"metrics\.csv\.gz:5: expected 19 fields \(a truncated or damaged row\)"),
    ("no column", r"metrics\.csv\.gz': no column test_accuracy"),
    ("activation", r"metrics\.csv\.gz:10: config\.activation 'selu' is not one of relu, tanh, sigmoid"),
    ("svhn", r"config\.dataset 'svhn_cropped' is not a dataset netspace_fast reads"),
    ("accuracy", r"metrics\.csv\.gz:10: test_accuracy must be in \[0, 1\], found 55\.0"),
])
def test_bad_inputs(tmp_path, case, match):
    src, weights, metrics = write_smallcnnzoo(tmp_path, runs=(("relu", STEPS),) * 4)
    marker = tmp_path / "ran"
    layout = layout_rows()
    if case == "no weights":
        (src / "weights.npy").unlink()
    elif case == "no metrics":
        (src / "metrics.csv.gz").unlink()
    elif case == "no layout":
        (src / "layout.csv").unlink()
    elif case == "other network":
        write_layout(src, layout_rows((("conv2d", (3, 3, 1, 16)), ("conv2d_1", (3, 3, 16, 32)),
                                       ("conv2d_2", (3, 3, 32, 16)), ("dense", (16, 10)))))
    elif case == "gap":
        write_layout(src, [(v, s + (k > 3), e + (k > 3), sh) for k, (v, s, e, sh) in enumerate(layout)])
    elif case == "bad shape":
        write_layout(src, [(v, s, e, "3x3" if k == 1 else sh) for k, (v, s, e, sh) in enumerate(layout)])
    elif case == "columns":
        np.save(src / "weights.npy", weights[:, :-1])
    elif case == "rows":
        (src / "metrics.csv.gz").write_bytes(metrics_bytes(metrics[:-1]))
    elif case == "not npy":
        (src / "weights.npy").write_bytes(b"\x93NUMPY garbage")
    elif case == "pickled npy":
        np.save(src / "weights.npy", np.array([_RunsCode(marker)], dtype=object), allow_pickle=True)
    elif case == "truncated gz":
        data = (src / "metrics.csv.gz").read_bytes()
        (src / "metrics.csv.gz").write_bytes(data[: len(data) // 2])
    elif case == "truncated row":
        text = gzip.decompress(metrics_bytes(metrics)).decode().splitlines()
        text[4] = text[4][:30]
        (src / "metrics.csv.gz").write_bytes(gzip.compress(("\n".join(text) + "\n").encode()))
    elif case == "no column":
        (src / "metrics.csv.gz").write_bytes(metrics_bytes([{k: v for k, v in m.items() if k != "test_accuracy"}
                                                            for m in metrics]))
    elif case in ("activation", "svhn", "accuracy"):
        key, value = {"activation": ("config.activation", "selu"), "svhn": ("config.dataset", "svhn_cropped"),
                      "accuracy": ("test_accuracy", 55.0)}[case]
        for m in {"svhn": metrics, "activation": metrics[:9], "accuracy": metrics[8:9]}[case]:  # all, run 0, a row
            m[key] = value
        (src / "metrics.csv.gz").write_bytes(metrics_bytes(metrics))
    _bad(src, tmp_path / "out", match)
    assert not marker.exists()


def test_options(source, tmp_path):
    src, _, _ = source
    _bad(tmp_path / "nowhere", tmp_path / "out", r"src: '.*nowhere' is not a folder; expected the folder of the "
                                                 r"Small CNN Zoo")
    _bad(src, tmp_path / "out", r"dataset: expected one of fashion-mnist, mnist, cifar10, got 'digits'",
         dataset="digits")
    z = import_smallcnnzoo(src, tmp_path / "z", dataset="mnist", epochs="0")  # ours for theirs
    assert {e["dataset"] for e in z.instances()} == {"mnist"}
