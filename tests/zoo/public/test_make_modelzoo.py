"""``scripts/make_modelzoo.py``: a Fashion-MNIST zoo made in the HSG-AIML Model Zoos' layout, on a tiny
stand-in Fashion-MNIST (idx files, nothing downloaded), 2 trials x 2 epochs, in seconds:

- the layout their Ray Tune trainable leaves: trial folders named as Ray names them, ``params.json``
  with their uniform zoo's config, ``result.json`` with a line per ``training_iteration`` 0..E (0 the
  untrained network, its train loss and accuracy their -999), ``checkpoint_<epoch:06d>/checkpoints``
  with the state dict of their CNN-s under their keys (and Adam's state beside it);
- each trial is trained as their trainable trains it, checked against a plain loop written from their
  code (``torch.manual_seed(seed)``, their module list and U(0, 1) init, ``torch.randperm`` from the
  global generator each epoch, batches of 10, Adam 3e-4), trained alone: the checkpoints and the
  recorded accuracies are the same, bit for bit;
- ``netspace zoo import --format modelzoo`` imports it and ``netspace zoo verify`` passes;
- an existing non-empty ``--out`` is refused before anything is written.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from netspace_fast.cli import cli
from netspace_fast.zoo.format import Zoo
from public_zoos import TheirCNN, write_fmnist

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "make_modelzoo.py"
TRIAL = re.compile(r"^NN_tune_trainable_[0-9a-f]{5}_(\d{5})_(\d+)_seed=(\d+)_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d$")
THEIR_KEYS = {"model::type": "CNN", "model::channels_in": 1, "model::o_dim": 4, "model::nlin": "tanh",
              "model::dropout": 0.0, "model::init_type": "uniform", "optim::optimizer": "adam", "optim::lr": 0.0003,
              "optim::wd": 0.0, "training::batchsize": 10}


def _script():
    spec = importlib.util.spec_from_file_location("make_modelzoo", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mz")
    write_fmnist(tmp / "fm", n_train=72, n_test=30)
    mz = _script()
    lines = []
    folders = mz.make_zoo(tmp / "fm", tmp / "zoo", trials=2, epochs=2, seed=3, group=2, log=lines.append)
    return mz, tmp, folders, lines


def _results(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "result.json").read_text().splitlines()]


def test_their_layout(made):
    _, tmp, folders, lines = made
    zoo = tmp / "zoo"
    assert sorted(p.name for p in zoo.iterdir()) == sorted([*(f.name for f in folders), "config.json", "readme.md"])
    assert json.loads((zoo / "config.json").read_text())["seed"] == {"grid_search": [3, 4]}
    for i, folder in enumerate(sorted(folders)):
        m = TRIAL.match(folder.name)
        assert m and (int(m[1]), int(m[2]), int(m[3])) == (i, i, 3 + i), folder.name
        params = json.loads((folder / "params.json").read_text())
        assert params.items() >= THEIR_KEYS.items() and params["seed"] == 3 + i
        assert params["training::epochs_train"] == 2 and "F_MNIST" in params["dataset::dump"]
        rows = _results(folder)
        assert [r["training_iteration"] for r in rows] == [0, 1, 2]
        assert rows[0]["train_acc"] == rows[0]["train_loss"] == -999  # their sentinel: nothing trained yet
        assert all(0 <= r["test_acc"] <= 1 for r in rows) and all(0 <= r["train_acc"] <= 1 for r in rows[1:])
        assert [r["done"] for r in rows] == [False, False, True] and rows[0]["config"] == params
        assert sorted(p.name for p in folder.iterdir()) == [f"checkpoint_{e:06d}" for e in range(3)] + [
            "params.json", "result.json"]
        for e in range(3):
            sd = torch.load(folder / f"checkpoint_{e:06d}" / "checkpoints", weights_only=True)
            assert list(sd) == list(TheirCNN().state_dict())  # module_list.0 .. module_list.11
            opt = torch.load(folder / f"checkpoint_{e:06d}" / "optimizer", weights_only=True)
            assert len(opt["param_groups"][0]["params"]) == 10
    assert lines[0].startswith("2 trials x 2 epochs of their CNN-s on 60 Fashion-MNIST images (test: 30)")
    assert lines[-1].startswith("done: 2 trials x 3 checkpoints")


def _their_trial(seed: int, x, y, xte, yte, epochs: int):
    """Their trainable on (x, y), written from their code (module doc): per epoch the state dict and
    (train acc, test acc)."""
    torch.manual_seed(seed)
    net = TheirCNN("CNN", 1, "tanh", 0.0)
    for m in net.module_list:
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.uniform_(m.weight)
            m.bias.data.fill_(0.01)
    opt = torch.optim.Adam(net.parameters(), lr=3e-4, weight_decay=0.0)
    states, accs = [{k: v.clone() for k, v in net.state_dict().items()}], [None]
    for _ in range(epochs):
        net.train()
        perm, correct = torch.randperm(len(y)), 0
        for i in range(0, len(y), 10):
            out = net(x[perm[i:i + 10]])
            loss = F.cross_entropy(out, y[perm[i:i + 10]])
            opt.zero_grad()
            loss.backward()
            opt.step()
            correct += (out.argmax(1) == y[perm[i:i + 10]]).sum().item()
        net.eval()
        with torch.no_grad():
            test = (net(xte).argmax(1) == yte).sum().item() / len(yte)
        states.append({k: v.clone() for k, v in net.state_dict().items()})
        accs.append((correct / len(y), test))
    return states, accs


def test_each_trial_is_their_trainable_alone(made):
    mz, tmp, folders, _ = made
    x, y, xte, yte = mz.their_data(tmp / "fm")
    assert x.shape == (60, 1, 28, 28) and xte.shape == (30, 1, 28, 28)  # 5/6 of the 72 pooled, their geometry
    assert x.min() >= -1 and x.max() <= 1
    for folder in sorted(folders):
        seed = json.loads((folder / "params.json").read_text())["seed"]
        states, accs = _their_trial(seed, x, y, xte, yte, epochs=2)
        rows = _results(folder)
        for e in range(3):
            got = torch.load(folder / f"checkpoint_{e:06d}" / "checkpoints", weights_only=True)
            for k, v in states[e].items():
                assert torch.equal(got[k], v), (folder.name, e, k)
            if e:
                assert (rows[e]["train_acc"], rows[e]["test_acc"]) == accs[e]


def test_imports_and_verifies(made):
    _, tmp, _, _ = made
    r = CliRunner().invoke(cli, ["zoo", "import", "--format", "modelzoo", str(tmp / "zoo"), "--out",
                                 str(tmp / "ours"), "--epochs", "1,2", "--split", "ours"])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(f"done: 4 networks in zoo {str(tmp / 'ours')!r}")
    zoo = Zoo.open(tmp / "ours")
    assert {zoo.config["dataset"], zoo.config["geometry"]["size"]} == {"fashion-mnist", 28}
    r = CliRunner().invoke(cli, ["zoo", "verify", str(tmp / "ours")])
    assert r.exit_code == 0 and r.stdout.strip() == "ok: 4 instances verified", r.output


def test_epoch_zero_imports(made):
    """Their trainable records -999 for the untrained network's training metrics (training_iteration 0):
    epoch 0 imports, its train accuracy not recorded, its test accuracy as recorded."""
    _, tmp, _, _ = made
    r = CliRunner().invoke(cli, ["zoo", "import", "--format", "modelzoo", str(tmp / "zoo"), "--out",
                                 str(tmp / "all"), "--epochs", "all", "--split", "ours"])
    assert r.exit_code == 0, r.output
    from netspace_fast.zoo.format import Zoo

    zero = [e for e in Zoo.open(tmp / "all").instances() if e["epoch"] == 0]
    assert zero and all(e["train_acc"] is None and 0 <= e["test_acc"] <= 1 for e in zero), zero


def test_refuses_a_non_empty_out(made, tmp_path, capsys):
    mz, tmp, _, _ = made
    (tmp_path / "mine.txt").write_text("keep")
    code = mz.main(["--root", str(tmp / "fm"), "--out", str(tmp_path), "--trials", "1", "--epochs", "1",
                    "--threads", str(torch.get_num_threads())])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error: --out: ") and "is not empty" in err[0], err
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
