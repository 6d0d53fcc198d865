"""Small public zoos written in their real layouts, for the tests of netspace_fast/zoo/public/.

- An HSG-AIML Model Zoo (their ``def_NN_experiment.py`` / Ray Tune): trial folders with
  ``params.json``, ``result.json`` (one JSON line per ``training_iteration``, 0 = untrained) and
  ``checkpoint_<epoch:06d>/checkpoints``, a ``torch.save`` of the state dict of their ``CNN`` /
  ``CNN3``: an ``nn.ModuleList`` named ``module_list`` built here as their ``def_net.py`` builds it
  (conv, max-pool, activation, dropout where dropout > 0, ...). The experiment's ``config.json`` and
  a (never read) ``dataset.pt`` lie beside the trials, as in their zoos.
- The Small CNN Zoo (google-research ``dnn_predict_accuracy``): ``weights.npy`` (rows of flattened
  Keras tensors, bias before kernel per layer as the paper's colab indexes them), ``layout.csv``
  (``varname``, ``start_idx``, ``end_idx``, ``shape``, after an unnamed index column) and
  ``metrics.csv.gz`` (``config.*``, ``modeldir``, ``step``, accuracies and losses).
- Fashion-MNIST's four idx files with a few random images (nothing downloaded).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

ACTS = {"tanh": nn.Tanh, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "gelu": nn.GELU, "sigmoid": nn.Sigmoid,
        "silu": nn.SiLU}


class TheirCNN(nn.Module):
    """Their ``CNN`` (CNN-s) or ``CNN3`` (CNN-l), ``module_list`` laid out as their def_net.py lays it out."""

    def __init__(self, kind: str = "CNN", channels: int = 1, nlin: str = "tanh", dropout: float = 0.0) -> None:
        super().__init__()
        act = ACTS[nlin]
        drop = [nn.Dropout(dropout)] if dropout > 0 else []
        if kind == "CNN":
            layers = [nn.Conv2d(channels, 8, 5), nn.MaxPool2d(2, 2), act(), *drop]
            layers += [nn.Conv2d(8, 6, 5), nn.MaxPool2d(2, 2), act(), *drop]
            layers += [nn.Conv2d(6, 4, 2), act(), nn.Flatten(), nn.Linear(36, 20), act(), *drop, nn.Linear(20, 10)]
        else:
            layers = []
            for cin, cout in ((channels, 16), (16, 32), (32, 15)):
                layers += [nn.Conv2d(cin, cout, 3), nn.MaxPool2d(2, 2), act(), nn.Dropout(dropout)]
            layers += [nn.Flatten(), nn.Linear(60, 20), act(), nn.Dropout(dropout), nn.Linear(20, 10)]
        self.module_list = nn.ModuleList(layers)

    def forward(self, x):
        for layer in self.module_list:
            x = layer(x)
        return x


def write_trial(zoo: Path, name: str, *, epochs=(0, 1, 2), kind: str = "CNN", channels: int = 1, nlin: str = "tanh",
                dropout: float = 0.0, seed: int = 1, o_dim: int = 4,
                dump: str = "zoos/F_MNIST/tune_zoo_f_mnist_uniform/dataset.pt",
                acc=lambda e: (0.1 + 0.8 * e / (e + 2), 0.1 + 0.7 * e / (e + 3)), val: bool = True, plain: bool = False,
                state=None) -> dict[int, dict[str, torch.Tensor]]:
    """One trial folder as their trainable leaves it; returns epoch -> the state dict saved."""
    d = zoo / name
    d.mkdir(parents=True)
    params = {"model::type": kind, "model::channels_in": channels, "model::o_dim": o_dim, "model::nlin": nlin,
              "model::dropout": dropout, "model::init_type": "uniform", "optim::optimizer": "adam", "optim::lr": 3e-4,
              "seed": seed, "training::batchsize": 10, "dataset::dump": f"/netscratch/{dump}", "cuda": False}
    (d / "params.json").write_text(json.dumps(params))
    saved, lines = {}, []
    for e in epochs:
        torch.manual_seed(1000 * seed + e)
        sd = state(e) if state is not None else TheirCNN(kind, channels, nlin, dropout).state_dict()
        ck = d / (f"checkpoint_{e}" if plain else f"checkpoint_{e:06d}")
        ck.mkdir()
        torch.save(sd, ck / "checkpoints")
        torch.save({"state": {}, "param_groups": []}, ck / "optimizer")
        saved[e] = sd
        train, test = acc(e)
        row = {"train_loss": 2.0 / (1 + e), "train_acc": train, "test_loss": 2.1 / (1 + e), "test_acc": test,
               "time_this_iter_s": 1.5, "done": False, "training_iteration": e, "trial_id": name[-5:],
               "config": params}
        if val:
            row.update(val_loss=2.05, val_acc=test)
        lines.append(json.dumps(row))
    (d / "result.json").write_text("\n".join(lines) + "\n")
    return saved


def write_modelzoo(folder: Path, n_trials: int = 7, **kw) -> tuple[Path, dict[str, dict]]:
    """A Fashion-MNIST CNN-s zoo of ``n_trials`` trials (their layout); returns (its folder, trial name ->
    epoch -> state dict)."""
    zoo = folder / "tune_zoo_f_mnist_uniform"
    zoo.mkdir(parents=True)
    (zoo / "config.json").write_text(json.dumps({"model::type": "CNN", "seed": "grid_search"}))
    (zoo / "dataset.pt").write_bytes(b"never read")
    saved = {}
    for t in range(n_trials):
        name = f"NN_tune_trainable_3c2f1_{t:05d}_{t}_seed={t + 1}_2021-11-03_10-11-{t:02d}"
        saved[name] = write_trial(zoo, name, seed=t + 1, **kw)
    return zoo, saved


# ---------------------------------------------------------------------------------------------
# the Small CNN Zoo

KERAS_VARS = (("conv2d", (3, 3, 1, 16)), ("conv2d_1", (3, 3, 16, 16)), ("conv2d_2", (3, 3, 16, 16)),
              ("dense", (16, 10)))
STEPS = (0, 1, 2, 3, 20, 40, 60, 80, 86)


def layout_rows(vars_=KERAS_VARS) -> list[tuple[str, int, int, tuple[int, ...]]]:
    """(varname, start, end, shape) of every variable, bias before kernel within a layer."""
    rows, start = [], 0
    for name, shape in vars_:
        for var, sh in ((f"sequential/{name}/bias:0", (shape[-1],)), (f"sequential/{name}/kernel:0", shape)):
            n = int(np.prod(sh))
            rows.append((var, start, start + n, sh))
            start += n
    return rows


def write_layout(src: Path, rows) -> None:
    with open(src / "layout.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "varname", "start_idx", "end_idx", "size", "shape"])
        for i, (var, s, e, sh) in enumerate(rows):
            w.writerow([i, var, s, e, e - s, str(sh)])


def metrics_bytes(rows: list[dict], gz: bool = True) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, ["", *rows[0]])
    w.writeheader()
    for i, r in enumerate(rows):
        w.writerow({"": i, **r})
    return gzip.compress(buf.getvalue().encode()) if gz else buf.getvalue().encode()


def write_smallcnnzoo(folder: Path, runs=(("tanh", STEPS), ("relu", STEPS), ("tanh", STEPS), ("relu", STEPS)),
                      dataset: str = "fashion_mnist", gz: bool = True, edit=None) -> tuple[Path, np.ndarray, list]:
    """A Small CNN Zoo folder; ``runs``: (activation, steps) per run; ``edit(weights, metrics)`` may
    change them before they are written. Returns (folder, weights, metrics rows)."""
    src = folder / dataset
    src.mkdir(parents=True)
    layout = layout_rows()
    write_layout(src, layout)
    rng = np.random.default_rng(0)
    weights, metrics = [], []
    for r, (act, steps) in enumerate(runs):
        for s in steps:
            weights.append(rng.normal(0, 0.4, layout[-1][2]).astype(np.float32))
            metrics.append({"config.activation": act, "config.b_init": "zeros", "config.dataset": dataset,
                            "config.dnn_architecture": "cnn", "config.dropout": 0.05 * r, "config.epochs": 86,
                            "config.learning_rate": 0.001 * (r + 1), "config.num_layers": 3, "config.num_units": 16,
                            "config.optimizer": "adam", "config.random_seed": 42, "config.w_init": "he_normal",
                            "modeldir": f"/cns/smallcnnzoo/{dataset}/{r}", "step": s,
                            "test_accuracy": 0.1 + s / 200, "test_loss": 2.0 - s / 100,
                            "train_accuracy": 0.1 + s / 180, "train_loss": 1.9 - s / 100})
    weights = np.stack(weights)
    if edit is not None:
        edit(weights, metrics)
    np.save(src / "weights.npy", weights)
    (src / ("metrics.csv.gz" if gz else "metrics.csv")).write_bytes(metrics_bytes(metrics, gz))
    return src, weights, metrics


def keras_forward(row: np.ndarray, x: np.ndarray, act: str) -> np.ndarray:
    """The Small CNN Zoo's Keras network on NHWC images ``x``, computed from a flattened row with the
    layout above: 'valid' 3x3 convolutions of stride 2 (HWIO kernels), the activation, global average
    pooling, dense (an independent float64 reference)."""
    f = {"tanh": np.tanh, "relu": lambda v: np.maximum(v, 0), "sigmoid": lambda v: 1 / (1 + np.exp(-v))}[act]
    tensors = {var: row[s:e].astype(np.float64).reshape(sh) for var, s, e, sh in layout_rows()}
    h = x.astype(np.float64)
    for name in ("conv2d", "conv2d_1", "conv2d_2"):
        k, b = tensors[f"sequential/{name}/kernel:0"], tensors[f"sequential/{name}/bias:0"]
        out = (h.shape[1] - 3) // 2 + 1
        patches = np.stack([np.stack([h[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :] for j in range(out)], 1)
                            for i in range(out)], 1)  # (N, out, out, 3, 3, C)
        h = f(np.einsum("nijabc,abcd->nijd", patches, k) + b)
    return h.mean((1, 2)) @ tensors["sequential/dense/kernel:0"] + tensors["sequential/dense/bias:0"]


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST idx files


def idx_bytes(a: np.ndarray) -> bytes:
    return bytes([0, 0, 8, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape) + a.tobytes()


def write_fmnist(root: Path, n_train: int = 100, n_test: int = 40) -> dict[str, np.ndarray]:
    """The four idx files of a tiny stand-in Fashion-MNIST; returns its arrays."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[f"{prefix}-images-idx3-ubyte"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{prefix}-labels-idx1-ubyte"] = rng.integers(0, 10, n, dtype=np.uint8)
    for name, a in arrays.items():
        (root / name).write_bytes(idx_bytes(a))
    return arrays
