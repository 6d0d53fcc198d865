"""``netspace probe`` (netspace_fast.explore.probe): the regressors and their selection on synthetic
data where the answer is known, StatNN's features against a NumPy reference, the targets a zoo
records (its own and an imported zoo's hyper-parameters), the command end to end on a small digits
zoo with recorded accuracies and a one-epoch space, and its mistakes (one ``error:`` line, nothing
written)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau
from sklearn.metrics import r2_score

from netspace_fast import archs
from netspace_fast.explore.probe import (EMBEDDING_MODELS, GBM_MODELS, KERNEL_MODELS, PREDICTORS, PROBE_FIELDS,
                                         RIDGE_MODELS, CenterScale, fit_selected, probe, recorded_targets, scores,
                                         statnn_features, statnn_matrix, target_values)
from netspace_fast.space.train import train_space
from netspace_fast.zoo.format import Zoo, init_zoo, write_instance

from .test_careless_user import _invoke, _one_error

TEST, VAL = (2, 6, 10, 13), (4, 8, 12)  # of 15 networks; the other 8 train
LR = (1e-3, 2e-3, 3e-3, 4e-3, 5e-3)  # of the 5 trials of the probe zoo's config


def _split(i: int) -> str:
    return "test" if i in TEST else "val" if i in VAL else "train"


@pytest.fixture(scope="module")
def probe_space(_small_splits, tmp_path_factory):
    """(zoo, run): 15 untrained LeNetLike whose weights are scaled by 0.6 + 0.08 i, recording test
    accuracy 0.3 + 0.04 i, a training accuracy above it, no validation accuracy, and an epoch for
    every network but two of the four test networks; the zoo's config records a trial of 5 per network
    (i % 5) with its learning rate, as an imported zoo's does; a one-epoch tiny Single space on them."""
    path, run = tmp_path_factory.mktemp("probe") / "z", tmp_path_factory.mktemp("probe") / "run"
    init_zoo(path, {"seed": 0, "members": {f"net-{i:02d}": {"trial": f"t{i % 5}"} for i in range(15)},
                    "trials": {f"t{k}": {"optim::lr": LR[k]} for k in range(5)}})
    for i in range(15):
        torch.manual_seed(i)
        model = archs.build("lenetlike", "digits").eval()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.6 + 0.08 * i)
        test = 0.3 + 0.04 * i
        write_instance(path, model, id=f"net-{i:02d}", arch="lenetlike", dataset="digits", protocol="single", seed=i,
                       epoch=None if i in TEST[:2] else i, acc={"train": test + 0.01 * (i % 3), "val": None,
                                                                  "test": test}, split=_split(i))
    train_space(run, path, "single", "digits-tiny-single", epochs=1, progress=False)
    return path, run


# ---------------------------------------------------------------------------------------------
# regressors and scores on synthetic data


def _linear_data(n: int, seed: int = 0):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, 20))
    return x, x @ g.normal(size=20)


def test_a_linear_target_is_ranked_and_fitted_almost_exactly():
    x, y = _linear_data(160)
    model, name = fit_selected(EMBEDDING_MODELS, x[:80], y[:80], x[80:110], y[80:110])
    s = scores(y[110:], model.predict(x[110:]))
    assert name.startswith("ridge"), name  # the validation split picks the linear model for a linear target
    assert s["kendall_tau"] > 0.95 and s["r2"] > 0.99, s


def test_a_nonlinear_target_selects_a_nonlinear_model():
    g = np.random.default_rng(1)
    x = g.uniform(-1, 1, size=(200, 5))
    y = x[:, 0] ** 2  # no linear trend: ridge explains ~nothing of it
    split = (x[:120], y[:120], x[120:160], y[120:160])
    model, name = fit_selected(EMBEDDING_MODELS, *split)
    assert not name.startswith("ridge"), name
    assert scores(y[160:], model.predict(x[160:]))["r2"] > 0.9
    for candidates, kind in ((KERNEL_MODELS, "kernel_ridge"), (GBM_MODELS, "gbm")):  # each alone fits it too
        model, name = fit_selected(candidates, *split)
        assert name.startswith(kind + " "), name
        assert scores(y[160:], model.predict(x[160:]))["r2"] > 0.8, name
    ridge, _ = fit_selected(RIDGE_MODELS, *split)
    assert scores(y[160:], ridge.predict(x[160:]))["r2"] < 0.2


def test_without_a_validation_split_the_choice_is_cross_validated():
    x, y = _linear_data(100, seed=2)
    model, name = fit_selected(EMBEDDING_MODELS, x[:60], y[:60], x[60:62], y[60:62])  # 2 < MIN_VAL: ignored
    assert name.startswith("ridge"), name
    assert scores(y[60:], model.predict(x[60:]))["kendall_tau"] > 0.95


def test_scores_are_kendall_tau_and_r2():
    y = np.array([0.1, 0.4, 0.2, 0.9, 0.5])
    s = scores(y, y ** 3)  # same order, other values
    assert s["kendall_tau"] == pytest.approx(1.0)
    assert s["r2"] == pytest.approx(1 - np.sum((y - y ** 3) ** 2) / np.sum((y - y.mean()) ** 2))
    assert scores(y, -y)["kendall_tau"] == pytest.approx(-1.0)
    assert np.isnan(scores(y, np.zeros(5))["kendall_tau"])  # a constant prediction ranks nothing


def test_statnn_features_match_numpy():
    g = torch.Generator().manual_seed(0)
    params = {"conv.weight": torch.randn(3, 4, 2, generator=g), "conv.bias": torch.randn(5, generator=g),
              "fc.weight": torch.randn(7, 6, generator=g).float()}
    got = statnn_features(params).numpy()
    want = []
    for t in params.values():
        v = t.double().numpy().ravel()
        want += [v.mean(), v.var(), *np.percentile(v, [0, 25, 50, 75, 100])]
    assert got.shape == (7 * 3,)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="empty"):
        statnn_features({"x": torch.empty(0)})


def test_statnn_rows_of_several_architectures_share_one_table():
    g = torch.Generator().manual_seed(1)
    a1 = {"w": torch.randn(4, generator=g), "b": torch.randn(2, generator=g)}
    b1 = {"w": torch.randn(3, generator=g), "extra": torch.randn(5, generator=g)}
    a2 = {"w": torch.randn(4, generator=g), "b": torch.randn(2, generator=g)}
    got = statnn_matrix(iter([("A", a1), ("B", b1), ("A", a2)]))
    # columns: (A, w), (A, b), (B, w), (B, extra); 7 statistics each
    assert got.shape == (3, 4 * 7)
    np.testing.assert_array_equal(got[0, :14], statnn_features(a1).numpy())
    np.testing.assert_array_equal(got[2, :14], statnn_features(a2).numpy())
    np.testing.assert_array_equal(got[1, 14:], statnn_features(b1).numpy())  # B's "w" is not A's "w"
    assert np.isnan(got[[0, 2], 14:]).all() and np.isnan(got[1, :14]).all()
    x = np.vstack([got, got[:1] + 1.0])  # the trees take the missing blocks (their variance filter too)
    model, _ = fit_selected(GBM_MODELS, np.vstack([x] * 3), np.arange(12.0), None, None)
    assert np.isfinite(model.predict(got)).all()


def test_center_scale_keeps_the_geometry():
    """One scale for all features: distances shrink by one factor, a near-constant feature stays small
    (per-feature standardization would blow it up to the size of the others)."""
    g = np.random.default_rng(3)
    x = np.hstack([g.normal(size=(50, 3)) * 5.0, 1e-9 * g.normal(size=(50, 1))])
    t = CenterScale().fit(x)
    y = t.transform(x)
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-12)
    assert np.mean(y ** 2) == pytest.approx(1.0)
    d, dy = np.linalg.norm(x[0] - x[1:], axis=1), np.linalg.norm(y[0] - y[1:], axis=1)
    np.testing.assert_allclose(dy / d, 1.0 / t.scale_)
    assert np.abs(y[:, 3]).max() < 1e-8


# ---------------------------------------------------------------------------------------------
# targets


def test_targets_of_our_zoo(probe_space):
    zoo = Zoo.open(probe_space[0])
    names = recorded_targets(zoo)
    assert {"test_acc", "train_acc", "gap", "epoch", "seed", "num_params", "optim::lr"} <= set(names)
    assert "val_acc" not in names  # recorded for no network
    ids = ["net-00", "net-02", "net-04"]
    assert target_values(zoo, ids, "gap") == pytest.approx([0.0, 0.02, 0.01])
    assert target_values(zoo, ids, "epoch") == [0, None, 4]


def test_hyper_parameters_of_an_imported_zoo(tmp_path):
    """An imported zoo's config records each member's run (Small CNN Zoo: config.* strings of a CSV) or
    trial (HSG-AIML: numbers of params.json): each numeric one is a target."""
    cfg = {"import": "smallcnnzoo", "members": {"a": {"run": "r0", "row": 0}, "b": {"run": "r1", "row": 1},
                                                "c": {"trial": "t0", "checkpoint": "x"}},
           "runs": {"r0": {"config.learning_rate": "0.01", "config.activation": "relu"},
                    "r1": {"config.learning_rate": "nan", "config.activation": "tanh"}},
           "trials": {"t0": {"optim::lr": 3e-4, "optim::wd": 0}}}
    init_zoo(tmp_path / "z", cfg)
    for i, id in enumerate("abc"):
        write_instance(tmp_path / "z", archs.build("lenetlike", "digits"), id=id, arch="lenetlike", dataset="digits",
                       protocol="single", seed=None, epoch=i, acc={"test": 0.5}, split="train")
    zoo = Zoo.open(tmp_path / "z")
    names = recorded_targets(zoo)
    assert "config.learning_rate" in names and "optim::lr" in names and "optim::wd" in names
    assert "config.activation" not in names and "gap" not in names and "seed" not in names
    assert target_values(zoo, ["a", "b", "c"], "config.learning_rate") == [0.01, None, None]
    assert target_values(zoo, ["a", "c"], "optim::lr") == [None, 3e-4]


# ---------------------------------------------------------------------------------------------
# the command


def test_probe_end_to_end(probe_space, tmp_path):
    probe_run, out = probe_space[1], tmp_path / "probe"
    r = _invoke("probe", probe_run, "--out", out)
    assert r.exit_code == 0, r.output
    assert "done:" in r.output and all(name in r.output for name in PREDICTORS)
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == PROBE_FIELDS
    assert [row["id"] for row in rows] == [f"net-{i:02d}" for i in TEST]
    true = np.array([float(row["target"]) for row in rows])
    np.testing.assert_allclose(true, [0.3 + 0.04 * i for i in TEST], atol=1e-6)
    assert (summary["target"], summary["n_train"], summary["n_val"], summary["n_test"]) == ("test_acc", 8, 3, 4)
    assert summary["selection"] == "validation split"
    for name in PREDICTORS:
        s = summary["predictors"][name]
        pred = np.array([float(row[name]) for row in rows])
        assert (s["n_train"], s["n_test"]) == (8, 4)
        assert s["r2"] == pytest.approx(r2_score(true, pred), abs=1e-5)  # the CSV rounds to 6 digits
        tau = kendalltau(true, pred).statistic
        assert (s["kendall_tau"] is None and np.isnan(tau)) or s["kendall_tau"] == pytest.approx(tau, abs=1e-9)
    assert summary["predictors"]["statnn"]["features"] == 7 * 10  # LeNetLike: 10 weight and bias tensors
    assert summary["predictors"]["weights_linear"]["features"] > summary["predictors"]["embedding"]["features"]
    assert (out / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = _invoke("probe", probe_run, "--out", tmp_path / "again", "--json", "--target", "gap")
    assert r.exit_code == 0, r.output
    printed = json.loads(r.stdout)
    assert printed == json.loads((tmp_path / "again" / "summary.json").read_text())
    assert printed["target"] == "gap"
    r = _invoke("probe", probe_run, "--out", tmp_path / "lr", "--target", "optim::lr")  # an imported zoo's
    assert r.exit_code == 0, r.output
    with open(tmp_path / "lr" / "predictions.csv", newline="") as f:
        assert [float(row["target"]) for row in csv.DictReader(f)] == [LR[i % 5] for i in TEST]


def test_library_probe_without_out_writes_nothing(probe_space, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = probe(probe_space[1], target="train_acc")
    assert p.files == {} and list(tmp_path.iterdir()) == []
    assert [row["target"] for row in p.rows] == pytest.approx([0.3 + 0.04 * i + 0.01 * (i % 3) for i in TEST])


@pytest.mark.parametrize("case", ["not a run", "unknown target", "not recorded", "too few", "one value"])
def test_mistakes_are_one_line_before_any_work(case, probe_space, tmp_path):
    probe_zoo, run = probe_space
    words: tuple = ()
    args = []
    if case == "not a run":
        run, words = probe_zoo, ("run", str(probe_zoo))
    elif case == "unknown target":
        args, words = ["--target", "bogus"], ("--target", "'bogus'", "test_acc, train_acc")
    elif case == "not recorded":
        args, words = ["--target", "val_acc"], ("--target", "'val_acc'", "does not record")
    elif case == "too few":  # two of the four test networks record no epoch
        args, words = ["--target", "epoch"], ("2 networks", "test split", "at least 5 to train and 3 to test")
    else:
        args, words = ["--target", "num_params"], ("--target", "one value", "62006")
    _one_error(_invoke("probe", run, "--out", tmp_path / "out", *args), *words, code=2)
    assert not (tmp_path / "out").exists()
