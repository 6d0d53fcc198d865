"""``netspace zoo import --format modelzoo`` (netspace_fast/zoo/public/modelzoo.py): HSG-AIML Model Zoos
-> our zoos. Every zoo here is written in their layout by public_zoos.py (Ray Tune trial folders,
params.json, result.json lines, checkpoint_<epoch>/checkpoints saved with torch.save); nothing is
downloaded. Covered: the round trip (weights, accuracies, configs, seeds, epochs, their 70/15/15 split,
the geometry of their images), both checkpoint namings, epochs, our split, the filters, resuming, and
every bad input, each one line and nothing written."""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
from pathlib import Path

import pytest
import torch

from netspace_fast import data
from netspace_fast.zoo.public import import_modelzoo
from netspace_fast.zoo.public.modelzoo import _arch_of, _dataset_in, modelzoo_geometry
from public_zoos import TheirCNN, write_modelzoo, write_trial


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_modelzoo(tmp_path_factory.mktemp("mz"), n_trials=7)


@pytest.fixture(scope="module")
def imported(source, tmp_path_factory):
    zoo, _ = source
    return import_modelzoo(zoo, tmp_path_factory.mktemp("ours") / "zoo", epochs="all")


def test_round_trip(source, imported):
    zoo, saved = source
    z = imported
    assert len(z) == 7 * 3 and z.verify() == []
    cfg = z.config
    assert cfg["import"] == "modelzoo" and cfg["source"] == str(zoo.resolve()) and cfg["dataset"] == "fashion-mnist"
    assert cfg["geometry"] == {"channels": 1, "size": 28, "mean": [0.5], "std": [0.5]}  # their Normalize(0.5, 0.5)
    factory = cfg["user_archs"]["modelzoo_cnn_tanh_1x28"]["factory"]
    assert factory == "netspace_fast.zoo.public.nets:modelzoo_cnn_tanh_1x28"
    for trial, epochs in saved.items():
        params = json.loads((zoo / trial / "params.json").read_text())
        assert cfg["trials"][trial] == params
        lines = [json.loads(ln) for ln in (zoo / trial / "result.json").read_text().splitlines()]
        for e, state in epochs.items():
            id = re.sub(r"[^A-Za-z0-9._-]", "_", trial) + f"-e{e:03d}"
            entry = z.entry(id)
            assert (entry["architecture"], entry["dataset"], entry["protocol"]) == (
                "modelzoo_cnn_tanh_1x28", "fashion-mnist", "modelzoo")
            assert (entry["epoch"], entry["seed"]) == (e, params["seed"])
            assert (entry["train_acc"], entry["val_acc"], entry["test_acc"]) == (
                lines[e]["train_acc"], lines[e]["val_acc"], lines[e]["test_acc"])
            assert cfg["members"][id] == {"trial": trial, "checkpoint": f"{trial}/checkpoint_{e:06d}/checkpoints"}
            stored = z.state_dict(id)
            assert stored.keys() == state.keys() and all(torch.equal(stored[k], state[k]) for k in state)
    # their split: the trial folders shuffled by random.Random(42), 70/15/15 (int cuts), every epoch along
    order = sorted(saved)
    random.Random(42).shuffle(order)
    expect = {t: "train" if i < 4 else "val" if i < 5 else "test" for i, t in enumerate(order)}  # int(4.9), int(1.05)
    for e in z.instances():
        assert e["split"] == expect[cfg["members"][e["id"]]["trial"]]


def test_networks_compute_as_theirs(source, imported):
    zoo, saved = source
    trial = sorted(saved)[0]
    theirs = TheirCNN()
    theirs.load_state_dict(saved[trial][2])
    ours = imported.model(re.sub(r"[^A-Za-z0-9._-]", "_", trial) + "-e002")
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs.eval()(x), rtol=1e-5, atol=1e-6)


def test_epochs_and_checkpoint_names(tmp_path):
    zoo = tmp_path / "tune_zoo_mnist_uniform"
    write_trial(zoo, "t0", epochs=(0, 5, 50), plain=True, dump="zoos/MNIST/tune_zoo_mnist_uniform/dataset.pt")
    write_trial(zoo, "t1", epochs=(0, 5, 50), dump="zoos/MNIST/tune_zoo_mnist_uniform/dataset.pt")
    # both namings of one epoch: the plain one first, as their loader
    (zoo / "t1" / "checkpoint_5").mkdir()
    torch.save(TheirCNN().state_dict(), zoo / "t1" / "checkpoint_5" / "checkpoints")
    z = import_modelzoo(zoo, tmp_path / "last")
    assert sorted(e["id"] for e in z.instances()) == ["t0-e050", "t1-e050"]  # each trial's last
    assert z.config["dataset"] == "mnist" and z.config["geometry"]["mean"] == [0.1307]  # MNIST's normalization
    z = import_modelzoo(zoo, tmp_path / "list", epochs="5,0")
    assert sorted(e["epoch"] for e in z.instances()) == [0, 0, 5, 5]
    assert z.config["members"]["t1-e005"]["checkpoint"] == "t1/checkpoint_5/checkpoints"
    with pytest.raises(ValueError, match=r"trial '.*t0': no checkpoint of epoch 7 \(it has 0, 5, 50\); choose "):
        import_modelzoo(zoo, tmp_path / "none", epochs=[7])
    assert not (tmp_path / "none").exists()


def test_our_split(source, tmp_path):
    """Our zoos' rule: a permutation drawn from the seed, val and test max(1, round(n * 16 / 132)) each."""
    zoo, _ = source
    z = import_modelzoo(zoo, tmp_path / "z", epochs="all", split="ours", seed=3)
    assert {s: len(v) for s, v in z.splits.items()} == {"train": 15, "val": 3, "test": 3}
    perm = torch.randperm(21, generator=torch.Generator().manual_seed(3)).tolist()
    ids = [e["id"] for e in sorted(z.instances(), key=lambda e: e["id"])]  # the members in trial, epoch order
    assert [z.entry(ids[i])["split"] for i in perm] == ["val"] * 3 + ["test"] * 3 + ["train"] * 15
    assert z.config["split_seed"] == 3 and z.config["split"] == "ours"


def test_hyperparameter_zoo_has_an_architecture_per_layout(tmp_path):
    zoo = tmp_path / "tune_zoo_f_mnist_hyperparameter_10_random_seeds"
    write_trial(zoo, "a", nlin="gelu", dropout=0.5)
    write_trial(zoo, "b", nlin="gelu", dropout=0.0)
    write_trial(zoo, "c", nlin="relu", dropout=0.5)
    z = import_modelzoo(zoo, tmp_path / "z")
    assert {e["id"]: e["architecture"] for e in z.instances()} == {
        "a-e002": "modelzoo_cnn_gelu_1x28_dropout", "b-e002": "modelzoo_cnn_gelu_1x28",
        "c-e002": "modelzoo_cnn_relu_1x28_dropout"}
    assert z.verify() == []


@pytest.mark.parametrize("text,told", [
    ("/netscratch/castle/zoos/F_MNIST/tune_zoo_f_mnist_uniform/dataset.pt", ("f_mnist", "fashion-mnist")),
    ("tune_zoo_mnist_hyperparameter_10_random_seeds", ("mnist", "mnist")),
    ("zoos/CIFAR10/large/tune_zoo_cifar10_uniform_large/dataset.pt", ("cifar10", "cifar10")),
    ("zoos/CIFAR100/resnet18/kaiming_uniform", ("cifar100", None)),
    ("zoos/STL-10/small", ("stl", None)), ("zoos/TinyImageNet/resnet18", ("tinyimagenet", None)),
    ("/castle/EMNIST/dataset.pt", None),  # names inside longer words tell nothing
])
def test_their_paths_tell_the_dataset(text, told):
    assert _dataset_in(text) == told


def test_geometries_of_their_zoos():
    g = modelzoo_geometry("CNN3", 3, "cifar10")
    assert (g.channels, g.size, g.mean, g.std) == (3, 32, (0.5,) * 3, (0.5,) * 3)
    g = modelzoo_geometry("CNN", 3, "cifar10")  # their CIFAR-10 CNN-s: Resize((28, 28))
    assert (g.channels, g.size) == (3, 28)
    g = modelzoo_geometry("Resnet18", 3, "cifar10")
    assert g.mean == pytest.approx((125.3 / 255, 123.0 / 255, 113.9 / 255)) and g.std[2] == pytest.approx(66.7 / 255)


def test_resnet18_trials_name_their_network():
    """A ResNet-18 trial's config names modelzoo_resnet18_3x32_<o_dim> (importing one runs the same code as a
    CNN's, with 11M parameters: test_public_nets.py checks the network against theirs)."""
    params = {"model::type": "Resnet18", "model::channels_in": 3, "model::o_dim": 10, "model::nlin": "relu"}
    assert _arch_of(params, "p") == ("modelzoo_resnet18_3x32_10", "Resnet18", 3)
    with pytest.raises(ValueError, match=r"p: model::o_dim \(the ResNet-18's classes\) must be a positive int"):
        _arch_of({**params, "model::o_dim": "10"}, "p")


# ---------------------------------------------------------------------------------------------
# filters


def test_nan_and_diverged_checkpoints_are_left_out_with_a_count(tmp_path):
    zoo = tmp_path / "tune_zoo_f_mnist_uniform"

    def nan_at_2(e):
        sd = TheirCNN().state_dict()
        if e == 2:
            sd["module_list.9.weight"][0, 0] = float("nan")
        return sd

    def write_only(folder):
        write_trial(folder, "nan", state=nan_at_2)
        return folder

    write_only(zoo)
    write_trial(zoo, "diverged", acc=lambda e: (0.1, float("nan") if e == 1 else 0.1))
    write_trial(zoo, "big", state=lambda e: {k: v * (1000 if e == 0 else 1)
                                             for k, v in TheirCNN().state_dict().items()})
    logs = []
    z = import_modelzoo(zoo, tmp_path / "z", epochs="all", max_weight=100, log=logs.append)
    assert sorted(e["id"] for e in z.instances()) == ["big-e001", "big-e002", "diverged-e000", "diverged-e002",
                                                      "nan-e000", "nan-e001"]
    assert logs == ["left out 3 of 9 checkpoints: 1 with NaN/Inf weights, 2 diverged (non-finite recorded loss or "
                    "accuracy, or |w| > 100)"]
    assert z.config["left_out"] == {"nonfinite": 1, "diverged": 2}
    with pytest.raises(ValueError, match=r"every selected checkpoint was left out \(left out 1 of 1 checkpoints: 1 "
                                         r"with NaN/Inf"):
        import_modelzoo(write_only(tmp_path / "only"), tmp_path / "none", epochs="2")
    assert not (tmp_path / "none").exists()


def test_resume_and_config_guard(source, tmp_path):
    zoo, _ = source
    import_modelzoo(zoo, tmp_path / "z")
    first = (tmp_path / "z" / "manifest.json").read_bytes()
    import_modelzoo(zoo, tmp_path / "z")  # the same import again: nothing to do
    assert (tmp_path / "z" / "manifest.json").read_bytes() == first
    with pytest.raises(ValueError, match=r"was created with a different configuration.*epochs"):
        import_modelzoo(zoo, tmp_path / "z", epochs="all")


def test_batches_of_members_give_the_same_zoo_and_resume(source, tmp_path, monkeypatch):
    """Members recorded a few at a time (one manifest update per batch, a progress line each) give the zoo
    of one batch, byte for byte; an import stopped after its first batch resumes to the same zoo."""
    from netspace_fast.zoo import format as zoo_format
    from netspace_fast.zoo.public import members

    zoo, _ = source
    import_modelzoo(zoo, tmp_path / "one", epochs="all")
    monkeypatch.setattr(members, "WRITE_BATCH", 4)
    lines = []
    import_modelzoo(zoo, tmp_path / "batched", epochs="all", log=lines.append)
    names = sorted(os.listdir(tmp_path / "one"))
    assert sorted(os.listdir(tmp_path / "batched")) == names
    for name in names:
        assert (tmp_path / "batched" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    n = len(json.loads((tmp_path / "one" / "manifest.json").read_text())["instances"])
    assert lines[-1] == f"{n} of {n} networks written" and len(lines) == -(-n // 4)

    real = zoo_format._record

    def stop_after_first(zoo_dir, prepared):
        out = real(zoo_dir, prepared)
        raise KeyboardInterrupt  # killed once the first batch is recorded

    monkeypatch.setattr(zoo_format, "_record", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        import_modelzoo(zoo, tmp_path / "stopped", epochs="all")
    monkeypatch.setattr(zoo_format, "_record", real)
    assert len(json.loads((tmp_path / "stopped" / "manifest.json").read_text())["instances"]) == 4
    import_modelzoo(zoo, tmp_path / "stopped", epochs="all")
    for name in names:
        assert (tmp_path / "stopped" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name


# ---------------------------------------------------------------------------------------------
# bad inputs: one line naming the file, nothing written


def _bad(src: Path, out: Path, match: str, **kw) -> None:
    with pytest.raises(ValueError, match=match) as info:
        import_modelzoo(src, out, **kw)
    assert "\n" not in str(info.value)
    assert not out.exists()


@pytest.fixture
def one_trial(tmp_path):
    zoo = tmp_path / "tune_zoo_f_mnist_uniform"
    write_trial(zoo, "t")
    return zoo, zoo / "t", tmp_path / "out"


@pytest.mark.parametrize("case,match", [
    ("no params", r"'.*/t': no params\.json"),
    ("no result", r"'.*/t': no result\.json"),
    ("no checkpoints", r"'.*/t': no checkpoint_<epoch> folders"),
    ("no state file", r"checkpoint_000002/checkpoints' is missing: expected the state dict"),
    ("truncated line", r"result\.json:3: not a JSON object \(a truncated or damaged line\): '\{\"train_loss\": "),
    ("no test_acc", r"result\.json:3: no 'test_acc'"),
    ("acc out of range", r"result\.json:3: train_acc must be an accuracy in \[0, 1\], found 67\.0"),
    ("no line", r"result\.json: no line with training_iteration 2 \(the epoch of checkpoint_000002\)"),
    ("bad params", r"params\.json': not a JSON object"),
    ("type", r"params\.json: model::type 'CNN_ARD' is not one of CNN, CNN2, CNN3, Resnet18"),
    ("nlin", r"params\.json: model::nlin 'swish' is not one of leakyrelu"),
    ("other arch", r"checkpoint_000002/checkpoints': the state dict does not fit modelzoo_cnn_tanh_1x28 \(the network "
                   r"trial 't''s params\.json names\): tensor 'module_list\.0\.bias' has shape \(16,\), "
                   r"expected \(8,\) \(and 17 more\)"),
    ("tensor", r"checkpoints': expected a state dict \(a mapping of names to tensors\), found Tensor"),
    ("junk", r"checkpoints' is not a state dict torch\.load\(\.\.\., weights_only=True\) can read"),
    ("svhn", r"trial 't' was trained on 'svhn' data .*; netspace_fast reads Fashion-MNIST, MNIST and CIFAR-10 only"),
    ("unknown data", r"cannot tell the dataset of trial 't' from t/params\.json dataset::dump '/data/x\.pt'; pass "
                     r"--dataset"),
])
def test_bad_inputs(one_trial, case, match):
    zoo, t, out = one_trial
    result, params = t / "result.json", json.loads((t / "params.json").read_text())
    lines = result.read_text().splitlines()
    state = t / "checkpoint_000002" / "checkpoints"
    if case == "no params":
        (t / "params.json").unlink()
    elif case == "no result":
        result.unlink()
    elif case == "no checkpoints":
        for d in t.glob("checkpoint_*"):
            shutil.rmtree(d)
    elif case == "no state file":
        state.unlink()
    elif case == "truncated line":
        result.write_text("\n".join(lines[:2] + [lines[2][:40]]))
    elif case in ("no test_acc", "acc out of range", "no line"):
        row = json.loads(lines[2])
        if case == "no test_acc":
            del row["test_acc"]
        elif case == "acc out of range":
            row["train_acc"] = 67.0  # a percentage
        result.write_text("\n".join(lines[:2] + ([] if case == "no line" else [json.dumps(row)])) + "\n")
    elif case == "bad params":
        (t / "params.json").write_text('{"model::type": "CNN", ')
    elif case in ("type", "nlin", "svhn", "unknown data"):
        key, value = {"type": ("model::type", "CNN_ARD"), "nlin": ("model::nlin", "swish"),
                      "svhn": ("dataset::dump", "/zoos/SVHN/tune_zoo_svhn/dataset.pt"),
                      "unknown data": ("dataset::dump", "/data/x.pt")}[case]
        (t / "params.json").write_text(json.dumps({**params, key: value}))
    elif case == "other arch":
        torch.save(TheirCNN("CNN3").state_dict(), state)
    elif case == "tensor":
        torch.save(torch.zeros(3), state)
    elif case == "junk":
        state.write_bytes(b"not a checkpoint")
    _bad(zoo, out, match, epochs="all")


class _RunsCode:
    """An object whose unpickling would run a command: what a malicious checkpoint holds."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(one_trial, tmp_path):
    zoo, t, out = one_trial
    marker = tmp_path / "ran"
    state = t / "checkpoint_000001" / "checkpoints"
    torch.save({"module_list.0.weight": _RunsCode(marker)}, state)
    _bad(zoo, out, r"checkpoint_000001/checkpoints' is not a state dict torch\.load\(\.\.\., weights_only=True\) can "
                   r"read \(UnpicklingError: it pickles objects other than tensors", epochs="all")
    with open(state.with_name("plain.pkl"), "wb") as f:  # a plain pickle, not torch's zip format
        pickle.dump(_RunsCode(marker), f)
    os.replace(state.with_name("plain.pkl"), state)
    _bad(zoo, out, r"checkpoint_000001/checkpoints' is not a state dict", epochs="all")
    assert not marker.exists()


def test_bad_folders_and_options(one_trial, tmp_path):
    zoo, t, out = one_trial
    _bad(tmp_path / "nowhere", out, r"src: '.*nowhere' is not a folder; expected the folder of an HSG-AIML Model Zoo")
    (tmp_path / "empty").mkdir()
    _bad(tmp_path / "empty", out, r"src: '.*empty' holds no trial folders")
    other = zoo / "u"
    write_trial(zoo, "u", dump="zoos/MNIST/tune_zoo_mnist/dataset.pt")
    _bad(zoo, out, r"its trials were trained on different datasets \(fashion-mnist, mnist\)")
    shutil.rmtree(other)
    write_trial(zoo, "u", kind="CNN3", channels=1)
    _bad(zoo, out, r"its trials take images of different geometries")
    shutil.rmtree(other)
    for kw, match in (({"epochs": "x"}, "epochs: expected 'last', 'all' or a comma-separated list"),
                      ({"split": "nfn"}, "split: expected 'theirs' or 'ours'"), ({"seed": -1}, "seed: expected an int"),
                      ({"max_weight": 0}, "max_weight: expected a positive number"),
                      ({"dataset": "svhn"}, "dataset: expected one of")):
        _bad(zoo, out, match, **kw)
    z = import_modelzoo(zoo, out, dataset="mnist")  # --dataset: ours for theirs, whatever the paths say
    assert z.config["dataset"] == "mnist" and {e["dataset"] for e in z.instances()} == {"mnist"}


def test_geometry_of_the_imported_zoo_gives_their_images(imported, tmp_path):
    from public_zoos import write_fmnist

    arrays = write_fmnist(tmp_path / "fm", n_train=20, n_test=10)
    g = data.geometry_of(imported.config)
    x, y = data.tensors("fashion-mnist", "test", tmp_path / "fm", geometry=g)
    raw = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float() / 255
    assert x.shape == (10, 1, 28, 28) and torch.allclose(x[:, 0], (raw - 0.5) / 0.5)
    assert torch.equal(y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
