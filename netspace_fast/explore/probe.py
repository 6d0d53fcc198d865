"""Accuracy prediction from the embedding (``netspace probe``): how much of what a zoo records about its
networks (test accuracy, the generalization gap, a training hyper-parameter) a space's embedding
holds, next to the field's baselines in the same run.

Three predictors, each a small regressor fitted on the networks of the zoo's training split and
scored on its test split by Kendall's tau and R^2:

- ``embedding``: the run's NetSpace embedding of the network (its PRep through the encoder), given
  every regressor of the baselines: ridge, RBF kernel ridge (both on :class:`CenterScale`d
  features) and StatNN's boosted trees, whichever fits the validation split best
  (:data:`EMBEDDING_MODELS`);
- ``statnn``: StatNN (Unterthiner et al. 2020, "Predicting Neural Network Accuracy from Weights"):
  for every parameter tensor of the network as trained (each layer's weights and biases), its mean,
  variance and quantiles 0, 25, 50, 75, 100% (:func:`statnn_features`), fed to gradient-boosted
  trees (scikit-learn's histogram GBM, the LightGBM algorithm they used; :data:`GBM_MODELS`);
- ``weights_linear``: ridge regression on the flattened weights (:class:`CenterScale`d), as NetSpace
  packs them (the PRep: BatchNorm folded, zero padded; the encoder's own input).

Model selection: each predictor's candidates (a ridge penalty, a tree setting) are fitted on the
training split and the one with the least squared error on the validation split is kept (with
fewer than :data:`MIN_VAL` validation networks: 5-fold cross-validation on the training split);
the kept model is the one fitted on the training split. Targets (:func:`recorded_targets`): the
manifest's numbers of each network (``test_acc``, ``train_acc``, ``val_acc``, ``epoch``, ``seed``,
``num_params``, ``class_id``), ``gap`` (``train_acc - test_acc``) and, in an imported zoo, every
numeric hyper-parameter the source recorded for a member's trial or run (``optim::lr``,
``config.learning_rate``, ... as the source names them). A network that does not record the target
is left out (and counted).

Writes ``predictions.csv`` (one row per test network: id, architecture, the true value, each
predictor's prediction), ``summary.json`` (per predictor Kendall tau, R^2, n_train, n_test and the
model kept) and ``scatter.png`` (predicted against true, per predictor), atomically.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sklearn.base import BaseEstimator, TransformerMixin

from ..storage import atomic_write_bytes, strict_json
from .common import Explorer, check_out_dir, open_explorer, pyplot, save_figure, write_csv

__all__ = ["CenterScale", "EMBEDDING_MODELS", "GBM_MODELS", "KERNEL_MODELS", "MIN_TEST", "MIN_TRAIN", "MIN_VAL",
           "PREDICTORS", "PROBE_FIELDS", "Probe", "ProbePlan", "RIDGE_MODELS", "STATNN_STATS", "fit_selected",
           "plan_probe", "probe", "recorded_targets", "run_probe", "scores", "statnn_features", "statnn_matrix",
           "summary_lines", "target_values"]

PREDICTORS = ("embedding", "statnn", "weights_linear")
PROBE_FIELDS = ("id", "arch", "target", *PREDICTORS)
STATNN_STATS = ("mean", "var", "q0", "q25", "q50", "q75", "q100")
_QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
#: fewest networks (that record the target) a split must hold: a fit, a ranking, a model selection
MIN_TRAIN, MIN_TEST, MIN_VAL = 5, 3, 3

#: the manifest's numeric fields a probe can predict, and the derived generalization gap
_ENTRY_TARGETS = ("test_acc", "train_acc", "val_acc", "epoch", "seed", "num_params", "class_id")
_GAP = "gap"
_DESCRIPTIONS = {"test_acc": "test accuracy", "train_acc": "training accuracy", "val_acc": "validation accuracy",
                 _GAP: "generalization gap (train_acc - test_acc)", "epoch": "training epoch of the snapshot",
                 "seed": "training seed", "num_params": "parameter count", "class_id": "architecture ClassId"}

# candidates (a name and the settings of one regressor); the pipelines are built in :func:`_regressor`
#: ridge penalties on :class:`CenterScale`d features (a wide grid: the features number from tens to 10^5)
RIDGE_MODELS = tuple(("ridge", {"alpha": float(a)}) for a in 10.0 ** np.arange(-3, 8))
#: RBF kernel ridge on :class:`CenterScale`d features (gamma 1 / features: a kernel width of the
#: features' mean squared distance)
KERNEL_MODELS = tuple(("kernel_ridge", {"alpha": float(a)}) for a in 10.0 ** np.arange(-3, 1))
#: gradient-boosted trees sized for ~100 training networks (the library default of 20 networks per
#: leaf would leave 5 leaves); constant features are dropped first (half a NetSpace embedding's
#: dimensions: the trees' time is per feature)
GBM_MODELS = tuple(("gbm", {"learning_rate": 0.1, "max_iter": 100, "max_leaf_nodes": leaves, "min_samples_leaf": leaf})
                   for leaves in (4, 15) for leaf in (3, 8))
EMBEDDING_MODELS = RIDGE_MODELS + KERNEL_MODELS + GBM_MODELS
_MODELS = {"embedding": EMBEDDING_MODELS, "statnn": GBM_MODELS, "weights_linear": RIDGE_MODELS}


# ---------------------------------------------------------------------------------------------
# targets


def _number(v) -> float | None:
    """``v`` as a finite float (a number, or a string holding one, as a CSV source records it); None
    for anything else."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return None
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _hyper_parameters(zoo, id: str) -> dict:
    """What an imported zoo's config records of a member's trial or run (:mod:`netspace_fast.zoo.public`:
    ``members[id]`` names its ``trial`` or ``run``, whose configuration is in ``trials`` / ``runs``)."""
    cfg = zoo.config if isinstance(zoo.config, dict) else {}
    record = (cfg.get("members") or {}).get(id)
    if not isinstance(record, dict):
        return {}
    for key, table in (("trial", "trials"), ("run", "runs")):
        where = cfg.get(table)
        if key in record and isinstance(where, dict) and isinstance(where.get(record[key]), dict):
            return where[record[key]]
    return {}


def _value(zoo, entry: dict, target: str) -> float | None:
    if target == _GAP:
        tr, te = _number(entry.get("train_acc")), _number(entry.get("test_acc"))
        return None if tr is None or te is None else tr - te
    if target in _ENTRY_TARGETS:
        return _number(entry.get(target))
    return _number(_hyper_parameters(zoo, entry["id"]).get(target))


def target_values(zoo, ids: Sequence[str], target: str) -> list[float | None]:
    """The value of ``target`` for each zoo instance of ``ids`` (None: not recorded for it)."""
    return [_value(zoo, zoo.entry(i), target) for i in ids]


def recorded_targets(zoo) -> list[str]:
    """The targets recorded for at least one network of ``zoo`` (manifest fields first, then ``gap``,
    then an imported zoo's hyper-parameters by name)."""
    entries = zoo.instances()
    names = [t for t in (*_ENTRY_TARGETS, _GAP) if any(_value(zoo, e, t) is not None for e in entries)]
    extra: dict[str, None] = {}
    for e in entries:
        for k, v in _hyper_parameters(zoo, e["id"]).items():
            if _number(v) is not None and k not in names:
                extra.setdefault(str(k))
    return names + sorted(extra)


# ---------------------------------------------------------------------------------------------
# features and regressors


def statnn_features(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """StatNN's features (Unterthiner et al. 2020) of one network: for each tensor of ``params`` (its
    weights and biases, in order) mean, variance (population) and quantiles 0, 25, 50, 75, 100%
    (linear interpolation); (7 * len(params),) float64."""
    q = torch.tensor(_QUANTILES, dtype=torch.float64)
    out = []
    for name, t in params.items():
        v = t.detach().to("cpu", torch.float64).flatten()
        if v.numel() == 0:
            raise ValueError(f"params: tensor {name!r} is empty; StatNN needs values to summarize")
        out.append(torch.cat([v.mean()[None], v.var(unbiased=False)[None], torch.quantile(v, q)]))
    return torch.cat(out)


class CenterScale(TransformerMixin, BaseEstimator):
    """Features centred on their training means and all divided by one number, the root mean square
    of the centred training features. Unlike per-feature standardization this keeps the geometry of
    an embedding or of the weights (distances, directions) and does not inflate near-constant
    features into the largest ones: on a digits-single space, where 591 of the 1,024 embedding
    dimensions are constant over the zoo, standardized ridge fits reached a validation MSE of 0.4
    on accuracies in [0, 1], against 0.005 with this scaling."""

    def fit(self, x, y=None):
        x = np.asarray(x, dtype=float)
        self.mean_ = x.mean(0)
        self.scale_ = float(np.sqrt(np.mean((x - self.mean_) ** 2))) or 1.0
        return self

    def transform(self, x):
        return (np.asarray(x, dtype=float) - self.mean_) / self.scale_


def statnn_matrix(networks: Iterable[tuple[str, Mapping[str, torch.Tensor]]]) -> np.ndarray:
    """StatNN's features (N, 7 * C) of N networks given as (architecture, parameters): one block of 7
    columns per (architecture, tensor name) in order of first appearance, NaN where a network's
    architecture has no such tensor (the trees take NaN as missing), so that networks of several
    architectures share one table."""
    columns: dict[tuple[str, str], int] = {}
    rows = []
    for arch, params in networks:
        rows.append(([columns.setdefault((arch, name), len(columns)) for name in params], statnn_features(params)))
    k = len(STATNN_STATS)
    out = np.full((len(rows), k * len(columns)), np.nan)
    for r, (cols, values) in enumerate(rows):
        for t, c in enumerate(cols):
            out[r, c * k:(c + 1) * k] = values[t * k:(t + 1) * k].numpy()
    return out


def _regressor(kind: str, settings: dict):
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.feature_selection import VarianceThreshold
    from sklearn.kernel_ridge import KernelRidge
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline

    if kind == "ridge":
        return make_pipeline(CenterScale(), Ridge(**settings))
    if kind == "kernel_ridge":
        return make_pipeline(CenterScale(), KernelRidge(kernel="rbf", **settings))
    if kind == "gbm":
        return make_pipeline(VarianceThreshold(), HistGradientBoostingRegressor(early_stopping=False, random_state=0,
                                                                                **settings))
    raise ValueError(f"kind: expected 'ridge', 'kernel_ridge' or 'gbm', got {kind!r}")


def _describe(kind: str, settings: dict) -> str:
    return kind + " " + " ".join(f"{k}={v:g}" for k, v in settings.items())


def fit_selected(candidates: Sequence[tuple[str, dict]], x_train: np.ndarray, y_train: np.ndarray,
                 x_val: np.ndarray | None = None, y_val: np.ndarray | None = None) -> tuple[object, str]:
    """The candidate regressor ((kind, settings): ``ridge``, ``kernel_ridge`` or ``gbm``) with the least
    squared error on the validation data (5-fold cross-validation on the training data when fewer than
    :data:`MIN_VAL` validation rows are given), fitted on the training data; and its description."""
    from threadpoolctl import threadpool_limits

    # one thread: fits on ~100 rows gain nothing from more, and OpenMP threads spinning on busy cores
    # stall (measured on a loaded 2-core machine: 200 rounds of trees on 100 x 1,024 features took
    # 130 s with 2 threads, 26 s with one)
    with threadpool_limits(1), warnings.catch_warnings():
        # a StatNN column of an architecture absent from the training split is all NaN there: the
        # variance filter drops it, with NumPy's warnings about empty slices
        warnings.filterwarnings("ignore", "(All-NaN slice|Degrees of freedom)", RuntimeWarning)
        return _fit_selected(candidates, x_train, y_train, x_val, y_val)


def _fit_selected(candidates, x_train, y_train, x_val, y_val) -> tuple[object, str]:
    from sklearn.model_selection import KFold, cross_val_score

    errors = []
    use_val = y_val is not None and len(y_val) >= MIN_VAL
    folds = KFold(min(5, len(y_train)), shuffle=True, random_state=0)
    for kind, settings in candidates:
        model = _regressor(kind, settings)
        if use_val:
            errors.append(float(np.mean((model.fit(x_train, y_train).predict(x_val) - y_val) ** 2)))
        else:
            errors.append(-float(np.mean(cross_val_score(model, x_train, y_train, cv=folds,
                                                         scoring="neg_mean_squared_error"))))
    kind, settings = candidates[int(np.argmin(errors))]
    return _regressor(kind, settings).fit(x_train, y_train), _describe(kind, settings)


def scores(y_true, y_pred) -> dict[str, float]:
    """Kendall's tau (tau-b; NaN for a constant prediction) and R^2 of predictions."""
    from scipy.stats import kendalltau
    from sklearn.metrics import r2_score

    y_true, y_pred = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    return {"kendall_tau": float(kendalltau(y_true, y_pred).statistic), "r2": float(r2_score(y_true, y_pred))}


# ---------------------------------------------------------------------------------------------
# the probe


@dataclass
class ProbePlan:
    """What a probe will do, checked before any work: the opened run (:class:`Explorer`), the target,
    the ids and true values of each split (networks recording the target), how many were left out."""

    run_dir: Path
    ex: Explorer
    target: str
    ids: dict[str, list[str]]
    y: dict[str, np.ndarray]
    left_out: int


@dataclass
class Probe:
    """``rows``: one per test network (``PROBE_FIELDS``); ``summary``: what ``summary.json`` holds;
    ``files``: what was written."""

    rows: list[dict]
    summary: dict
    files: dict[str, Path] = field(default_factory=dict)


def plan_probe(run_dir, target: str = "test_acc", device: str = "cpu") -> ProbePlan:
    """Open the run and check the target and the splits (a ValueError naming what is wrong: a folder
    that is no NetSpace run, a target the zoo does not record or that takes one value, a split with
    too few networks)."""
    if not isinstance(target, str) or not target:
        raise ValueError(f"target: expected a name such as 'test_acc', got {target!r}")
    ex = open_explorer(run_dir, device, what="probe")
    zoo = ex.zoo
    known = recorded_targets(zoo)
    if target not in known:
        raise ValueError(f"target: the run's zoo {str(zoo.path)!r} does not record {target!r}; it records: "
                         f"{', '.join(known) or 'nothing numeric'}")
    archs = set(ex.arch_names)
    ids, y, left_out = {}, {}, 0
    for split, least in (("train", MIN_TRAIN), ("val", 0), ("test", MIN_TEST)):
        split_ids = [e["id"] for e in zoo.instances(split) if e["architecture"] in archs]
        values = target_values(zoo, split_ids, target)
        ids[split] = [i for i, v in zip(split_ids, values) if v is not None]
        y[split] = np.array([v for v in values if v is not None], dtype=float)
        left_out += len(split_ids) - len(ids[split])
        if len(ids[split]) < least:
            raise ValueError(f"zoo: the run's zoo {str(zoo.path)!r} has {len(ids[split])} networks recording "
                             f"{target!r} in its {split} split (of {len(split_ids)} of the space's architectures); "
                             f"a probe needs at least {MIN_TRAIN} to train and {MIN_TEST} to test")
        if least and len(set(y[split].tolist())) < 2:
            raise ValueError(f"target: {target!r} takes one value ({y[split][0]:g}) on all {len(ids[split])} "
                             f"networks of the {split} split: nothing to predict or rank")
    return ProbePlan(Path(run_dir), ex, target, ids, y, left_out)


@torch.no_grad()
def _features(ex: Explorer, ids: Sequence[str], chunk: int) -> dict[str, np.ndarray]:
    """Each predictor's features (N, F) of the networks ``ids``: the embeddings and flattened PReps
    (packed in chunks), StatNN's statistics aligned by (architecture, tensor, statistic) across the
    architectures (NaN where an architecture lacks a tensor: the trees take it as missing)."""
    z, flat = [], []
    for s in range(0, len(ids), chunk):
        preps = ex.preps(ids[s:s + chunk])
        z.append(ex.space.encode(preps).double().cpu())
        flat.append(preps.flatten(1).double().cpu())
    statnn = statnn_matrix((ex.zoo.entry(i)["architecture"], dict(ex.zoo.model(i).named_parameters())) for i in ids)
    return {"embedding": torch.cat(z).numpy(), "statnn": statnn, "weights_linear": torch.cat(flat).numpy()}


def run_probe(plan: ProbePlan, *, out=None, chunk: int = 16) -> Probe:
    """Fit and score the predictors of a checked :class:`ProbePlan` (the module doc); with ``out`` the
    CSV, the summary and the scatter plot are written into that folder."""
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk: expected a positive int, got {chunk!r}")
    d = check_out_dir(out) if out is not None else None
    ex, ids, y = plan.ex, plan.ids, plan.y
    splits = ("train", "val", "test")
    every = _features(ex, [i for s in splits for i in ids[s]], chunk)  # one StatNN column order for all
    ends = np.cumsum([len(ids[s]) for s in splits])
    feats = {s: {name: f[end - len(ids[s]):end] for name, f in every.items()} for s, end in zip(splits, ends)}
    use_val = len(ids["val"]) >= MIN_VAL
    predictions, models = {}, {}
    for name in PREDICTORS:
        xv = feats["val"][name] if use_val else None
        model, models[name] = fit_selected(_MODELS[name], feats["train"][name], y["train"], xv,
                                           y["val"] if use_val else None)
        predictions[name] = model.predict(feats["test"][name])
    n = {"n_train": len(ids["train"]), "n_test": len(ids["test"])}
    summary = {
        "run": str(plan.run_dir), "zoo": str(ex.zoo.path), "target": plan.target,
        "target_description": _DESCRIPTIONS.get(plan.target, "hyper-parameter recorded by the zoo's source"),
        **n, "n_val": len(ids["val"]), "left_out": plan.left_out,
        "selection": "validation split" if use_val else "5-fold cross-validation on the training split",
        "predictors": {name: {**scores(y["test"], predictions[name]), **n, "model": models[name],
                              "features": int(feats["train"][name].shape[1])} for name in PREDICTORS},
    }
    rows = [{"id": i, "arch": ex.zoo.entry(i)["architecture"], "target": float(y["test"][k]),
             **{name: float(predictions[name][k]) for name in PREDICTORS}} for k, i in enumerate(ids["test"])]
    result = Probe(rows, summary)
    if d is not None:
        result.files["csv"] = write_csv(d / "predictions.csv", PROBE_FIELDS, rows)
        atomic_write_bytes(d / "summary.json", (json.dumps(strict_json(summary), indent=1) + "\n").encode())
        result.files["summary"] = d / "summary.json"
        result.files["png"] = save_figure(_scatter(rows, summary), d / "scatter.png")
    return result


def probe(run_dir, *, target: str = "test_acc", out=None, device: str = "cpu", chunk: int = 16) -> Probe:
    """Predict ``target`` of the test networks of the run's zoo from their embeddings and by the
    baselines (the module doc): :func:`plan_probe`, then :func:`run_probe`."""
    return run_probe(plan_probe(run_dir, target, device), out=out, chunk=chunk)


def _scatter(rows: list[dict], summary: dict):
    plt = pyplot()
    fig, axes = plt.subplots(1, len(PREDICTORS), figsize=(4.2 * len(PREDICTORS), 4.0), squeeze=False)
    true = np.array([r["target"] for r in rows])
    for ax, name in zip(axes[0], PREDICTORS):
        pred = np.array([r[name] for r in rows])
        lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], color="0.6", lw=1, ls="--")
        ax.scatter(true, pred, s=18)
        s = summary["predictors"][name]
        ax.set_title(f"{name}: tau {s['kendall_tau']:.3f}, R$^2$ {s['r2']:.3f}", fontsize=10)
        ax.set_xlabel(f"true {summary['target']}")
        ax.set_ylabel("predicted")
    fig.suptitle(f"{summary['target']} of {summary['n_test']} test networks ({summary['n_train']} to train)")
    fig.tight_layout()
    return fig


def summary_lines(p: Probe) -> list[str]:
    """The summary as a few lines of text (what ``netspace probe`` prints)."""
    s = p.summary
    lines = [f"target {s['target']} ({s['target_description']}): {s['n_train']} train, {s['n_val']} val, "
             f"{s['n_test']} test networks" + (f", {s['left_out']} left out (not recorded)" if s["left_out"] else "")
             + f"; models chosen by {s['selection']}",
             f"{'predictor':<16}{'Kendall tau':>12}{'R^2':>10}  model"]
    for name, r in s["predictors"].items():
        lines.append(f"{name:<16}{r['kendall_tau']:>12.3f}{r['r2']:>10.3f}  {r['model']} ({r['features']} features)")
    return lines
