"""Make a Fashion-MNIST zoo in the HSG-AIML Model Zoos' layout, trained as their uniform zoo was.

``python scripts/make_modelzoo.py --root R --out DIR [--trials N] [--epochs E] [--seed S]`` trains N
trials of their small CNN (CNN-s, ``CNN`` with one input channel) on Fashion-MNIST with the settings of
their ``tune_zoo_f_mnist_uniform`` (ModelZoos/ModelZooDataset ``code/zoo_generators/
train_zoo_f_mnist_uniform.py``): tanh, no dropout, every conv and linear weight drawn from U(0, 1)
and every bias 0.01 (their ``init_type`` "uniform"), Adam with lr 3e-4 and no weight decay, batches of
10, ``E`` epochs (theirs: 50); the trials differ in their seed only (S, S+1, ...; theirs: 1..1000).
Their images: 1x28x28, normalized (x - 0.5) / 0.5; their data split: the 60,000 training images cut
50,000 train / 10,000 val by ``random_split`` with seed 42 (here the pool of our train and val splits,
so the same rule over another order: another random 50,000), the official 10,000 test images for
``test_acc``. Within a trial everything is as their trainable does it (``def_net.py``,
``def_NN_experiment.py``, ``def_FastTensorDataLoader.py``): ``torch.manual_seed(seed)`` before the
network is built, the epoch's order drawn by ``torch.randperm`` from the generator that follows, the
training accuracy and loss the running ones of the epoch (train mode), the test ones on the whole
test set at the end of each epoch.

The output is what their Ray Tune run leaves (the importer's module doc,
:mod:`netspace_fast.zoo.public.modelzoo`): DIR holds ``config.json`` (the experiment's config),
``readme.md`` and one folder per trial, ``NN_tune_trainable_<id>_<i>_seed=<s>_<date>``, with

- ``params.json``: the trial's config (their keys: ``model::type``, ``model::channels_in``,
  ``model::o_dim``, ``model::nlin``, ``model::dropout``, ``model::init_type``, ``model::use_bias``,
  ``optim::*``, ``seed``, ``training::*``, ``cuda``, ``dataset::dump``);
- ``result.json``: one JSON line per ``training_iteration``, 0 the untrained network (its train loss
  and accuracy their sentinel -999: nothing was trained yet), then 1..E, with ``train_loss``,
  ``train_acc``, ``test_loss``, ``test_acc`` and Ray's bookkeeping (``time_this_iter_s``, ``done``,
  ``trial_id``, ``date``, ``config``, ...);
- ``checkpoint_<epoch:06d>/checkpoints`` (``torch.save`` of the state dict, keys ``module_list.<i>.*``)
  and ``.../optimizer`` (Adam's state dict), for epochs 0..E.

Ray's pickles (``params.pkl``, ``.tune_metadata``) and their ``dataset.pt`` (a pickle of the tensors;
``dataset::dump`` names where their generator puts it) are not written: nothing reads them.

The trials are trained side by side, ``--group`` at a time: each is its own
:class:`netspace_fast.zoo.public.nets.ModelZooCNN` with its own Adam and data order, their losses summed
into one backward pass (no parameter is shared, so each gets its own gradient: a trial comes out as it
would alone). One torch thread by default (``--threads``): the layers are too small to split, and
threads waiting on each other cost more than they give on a busy machine. Each trial is
written into ``DIR/.partial/`` and renamed into DIR when its last epoch is written; an existing
non-empty DIR is refused before any work (a rerun never writes over a zoo).

Then: ``netspace zoo import --format modelzoo DIR --out ZOO --epochs 1,2,...,E`` (or ``last``; see
BENCHMARKS.md, "Public model zoos: a Fashion-MNIST Model Zoo, imported").
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path

import torch
import torch.nn.functional as F

from netspace_fast import data
from netspace_fast.zoo.public.modelzoo import modelzoo_geometry
from netspace_fast.zoo.public.nets import ModelZooCNN

EXPERIMENT = "tune_zoo_f_mnist_uniform"
#: their generator's config (train_zoo_f_mnist_uniform.py); "seed" is the grid, "training::epochs_train" set by --epochs
CONFIG = {
    "model::type": "CNN", "model::channels_in": 1, "model::o_dim": 4, "model::nlin": "tanh", "model::dropout": 0.0,
    "model::init_type": "uniform", "model::use_bias": False, "optim::optimizer": "adam", "optim::lr": 0.0003,
    "optim::wd": 0.0, "training::batchsize": 10, "training::epochs_train": 50, "training::start_epoch": 1,
    "training::output_epoch": 1, "training::val_epochs": 1, "training::idx_out": 500,
    "training::checkpoint_dir": None, "cuda": False,
    # where their generator saves the dataset (relative to where it runs); the importer tells the dataset by it
    "dataset::dump": f"zoos/F_MNIST/{EXPERIMENT}/dataset.pt",
}
UNTRAINED = -999  # their trainable's train_loss / train_acc at training_iteration 0
DATASET_SEED = 42  # their random_split's generator
EVAL_CHUNK = 2000


def their_network(seed: int) -> ModelZooCNN:
    """Their CNN-s as their ``NNmodule`` makes it for ``seed``: the module under ``torch.manual_seed(seed)``,
    then their ``initialize_weights("uniform")`` (U(0, 1) weights, biases 0.01) in module order."""
    torch.manual_seed(seed)
    net = ModelZooCNN(CONFIG["model::type"], CONFIG["model::channels_in"], CONFIG["model::nlin"],
                      CONFIG["model::dropout"] > 0)
    for m in net.module_list:
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.uniform_(m.weight)
            m.bias.data.fill_(0.01)
    return net


def their_data(root) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, labels, test images, labels) in their geometry (module doc): 5/6 of the pooled
    training images by their ``random_split`` rule, the official test set."""
    g = modelzoo_geometry(CONFIG["model::type"], CONFIG["model::channels_in"], "fashion-mnist")
    parts = [data.tensors("fashion-mnist", s, root, geometry=g) for s in ("train", "val")]
    x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    n_val = len(y) // 6  # their [50000, 10000]
    train, _ = torch.utils.data.random_split(range(len(y)), [len(y) - n_val, n_val],
                                             generator=torch.Generator().manual_seed(DATASET_SEED))
    idx = torch.as_tensor(list(train.indices))
    xte, yte = data.tensors("fashion-mnist", "test", root, geometry=g)
    return x[idx].contiguous(), y[idx].contiguous(), xte, yte


class TrialGroup:
    """Trials of the given seeds trained side by side, each its own network, data order and Adam (their
    trainable's), their losses summed into one backward pass (the networks share no parameter)."""

    def __init__(self, seeds: list[int]) -> None:
        self.nets, self.gens, self.opts = [], [], []
        for s in seeds:
            net = their_network(s)
            gen = torch.Generator()
            gen.set_state(torch.get_rng_state())  # their loader's randperm draws next from the global RNG
            self.nets.append(net)
            self.gens.append(gen)
            self.opts.append(torch.optim.Adam(net.parameters(), lr=CONFIG["optim::lr"],
                                              weight_decay=CONFIG["optim::wd"]))

    def train_epoch(self, x: torch.Tensor, y: torch.Tensor, bs: int) -> tuple[list[float], list[float]]:
        """One epoch, each trial in its own order; (running train loss, running train accuracy) per trial."""
        n = len(y)
        perms = [torch.randperm(n, generator=g) for g in self.gens]
        loss_sum, correct = [0.0] * len(self.nets), [0] * len(self.nets)
        for net in self.nets:
            net.train()
        for i in range(0, n, bs):
            losses, hits = [], []
            for net, perm, opt in zip(self.nets, perms, self.opts):
                idx = perm[i:i + bs]
                out, yb = net(x[idx]), y[idx]
                losses.append(F.cross_entropy(out, yb))
                hits.append((out.detach().argmax(1) == yb).sum())
                opt.zero_grad(set_to_none=True)
            torch.stack(losses).sum().backward()
            for opt in self.opts:
                opt.step()
            b = min(bs, n - i)
            for t, (loss, hit) in enumerate(zip(torch.stack(losses).tolist(), torch.stack(hits).tolist())):
                loss_sum[t] += loss * b
                correct[t] += hit
        return [v / n for v in loss_sum], [c / n for c in correct]

    @torch.no_grad()
    def test(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], list[float]]:
        """(loss, accuracy) per trial on the whole set (their test loader: one batch)."""
        losses, accs = [], []
        for net in self.nets:
            net.eval()
            loss, correct = 0.0, 0
            for i in range(0, len(y), EVAL_CHUNK):
                out, yb = net(x[i:i + EVAL_CHUNK]), y[i:i + EVAL_CHUNK]
                loss += F.cross_entropy(out, yb, reduction="sum").item()
                correct += int((out.argmax(1) == yb).sum())
            losses.append(loss / len(y))
            accs.append(correct / len(y))
        return losses, accs


class TrialWriter:
    """One trial folder, written under ``DIR/.partial`` and renamed into DIR by :meth:`finish`."""

    def __init__(self, out: Path, index: int, seed: int, epochs: int, experiment: str, date: str) -> None:
        self.trial_id = f"{experiment}_{index:05d}"
        self.tag = f"{index}_seed={seed}"
        self.name = f"NN_tune_trainable_{self.trial_id}_{self.tag}_{date}"
        self.final = out / self.name
        self.dir = out / ".partial" / self.name
        self.dir.mkdir(parents=True)
        self.params = {**CONFIG, "seed": seed, "training::epochs_train": epochs}
        self.epochs, self.experiment = epochs, experiment
        self.started = time.time()
        (self.dir / "params.json").write_text(json.dumps(self.params, indent=2, sort_keys=True) + "\n")
        self._results = open(self.dir / "result.json", "w", encoding="utf-8")

    def epoch(self, e: int, state: dict, optimizer: dict, train: tuple[float, float], test: tuple[float, float],
              seconds: float) -> None:
        ck = self.dir / f"checkpoint_{e:06d}"
        ck.mkdir()
        torch.save(state, ck / "checkpoints")
        torch.save(optimizer, ck / "optimizer")
        now = time.time()
        row = {"train_loss": train[0], "train_acc": train[1], "test_loss": test[0], "test_acc": test[1],
               "time_this_iter_s": seconds, "done": e == self.epochs, "timesteps_total": None,
               "episodes_total": None, "training_iteration": e, "trial_id": self.trial_id,
               "experiment_id": self.experiment, "date": datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S"),
               "timestamp": int(now), "time_total_s": now - self.started, "pid": os.getpid(),
               "hostname": socket.gethostname(), "node_ip": "127.0.0.1", "config": self.params,
               "time_since_restore": now - self.started, "timesteps_since_restore": 0,
               "iterations_since_restore": e + 1, "experiment_tag": self.tag}
        self._results.write(json.dumps(row) + "\n")
        self._results.flush()

    def finish(self) -> None:
        self._results.close()
        os.replace(self.dir, self.final)


def check_out(out: Path) -> None:
    """Refuse an --out that exists and is not an empty folder (never write over a user's files)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "a folder that is not empty" if out.is_dir() else "not a folder"
        raise ValueError(f"--out: {str(out)!r} exists and is {what}; this script writes a new zoo folder and never "
                         f"writes over files (choose another --out or remove it)")


def make_zoo(root, out, trials: int, epochs: int, seed: int, group: int, log=None) -> list[Path]:
    """Train ``trials`` trials (seeds ``seed``..) for ``epochs`` epochs into the new zoo folder ``out``
    (module doc); returns the trial folders."""
    log = log or (lambda msg: print(msg, flush=True))
    out = Path(out)
    check_out(out)
    x, y, xte, yte = their_data(root)  # before anything is written: missing data is one error
    out.mkdir(parents=True, exist_ok=True)
    experiment = uuid.uuid4().hex[:5]
    date = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    seeds = list(range(seed, seed + trials))
    (out / "config.json").write_text(json.dumps({**CONFIG, "training::epochs_train": epochs,
                                                 "seed": {"grid_search": seeds}}, indent=2) + "\n")
    (out / "readme.md").write_text("")
    log(f"{trials} trials x {epochs} epochs of their CNN-s on {len(y)} Fashion-MNIST images (test: {len(yte)}), "
        f"{min(group, trials)} at a time, into {str(out)!r}")
    folders = []
    for first in range(0, trials, group):
        chunk = seeds[first:first + group]
        folders += _train_group(out, chunk, first, epochs, experiment, date, (x, y, xte, yte), log)
    (out / ".partial").rmdir()
    log(f"done: {trials} trials x {epochs + 1} checkpoints (epochs 0..{epochs}) in {str(out)!r}")
    return folders


def _train_group(out, seeds, first, epochs, experiment, date, tensors, log) -> list[Path]:
    x, y, xte, yte = tensors
    g = TrialGroup(seeds)
    writers = [TrialWriter(out, first + t, s, epochs, experiment, date) for t, s in enumerate(seeds)]
    bs = CONFIG["training::batchsize"]
    for e in range(epochs + 1):
        t0 = time.perf_counter()
        if e == 0:
            train = ([UNTRAINED] * len(seeds),) * 2
        else:
            train = g.train_epoch(x, y, bs)
        test = g.test(xte, yte)
        seconds = time.perf_counter() - t0
        for t, w in enumerate(writers):
            w.epoch(e, g.nets[t].state_dict(), g.opts[t].state_dict(), (train[0][t], train[1][t]),
                    (test[0][t], test[1][t]), seconds)
        acc = test[1]
        log(f"trials {first}..{first + len(seeds) - 1} epoch {e}/{epochs}: test acc {100 * min(acc):.1f}-"
            f"{100 * max(acc):.1f}% (mean {100 * sum(acc) / len(acc):.1f}%), {seconds:.0f} s")
    for w in writers:
        w.finish()
    return [w.final for w in writers]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="folder of Fashion-MNIST's four idx files")
    p.add_argument("--out", required=True, type=Path, help="the new zoo folder (must not exist, or be empty)")
    p.add_argument("--trials", type=int, default=24, help="number of trials (seeds SEED, SEED+1, ...; default 24)")
    p.add_argument("--epochs", type=int, default=CONFIG["training::epochs_train"],
                   help="epochs per trial (default 50, theirs)")
    p.add_argument("--seed", type=int, default=1, help="the first trial's seed (default 1, theirs)")
    p.add_argument("--group", type=int, default=32, help="trials trained together (default 32)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    a = p.parse_args(argv)
    for name in ("trials", "epochs", "group", "threads"):
        if getattr(a, name) < 1:
            p.error(f"--{name}: must be >= 1, got {getattr(a, name)}")
    if a.seed < 0:
        p.error(f"--seed: must be >= 0, got {a.seed}")
    torch.set_num_threads(a.threads)
    try:
        make_zoo(a.root, a.out, a.trials, a.epochs, a.seed, a.group)
    except (OSError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
