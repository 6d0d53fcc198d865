"""``netspace zoo import --format modelzoo|smallcnnzoo SRC --out ZOO`` end to end: a Fashion-MNIST zoo in
the Model Zoos' layout imports, verifies with its architecture found by name (from the zoo's config,
no flag, as in a fresh process) and trains a Single space with the tiny preset on a stand-in
Fashion-MNIST (idx files, nothing downloaded), whose images the space sees as the zoo's networks did
(1x28x28, their normalization);
the Small CNN Zoo imports from the command line too; and the command's refusals (options of another
format, several folders, bad values: exit 2; bad input: exit 1), each one ``error:`` line."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from netspace_fast import archs, data
from netspace_fast.cli import cli
from netspace_fast.space.presets import SPACE_PRESETS
from netspace_fast.space.train import load_space_data
from netspace_fast.zoo.format import Zoo
from public_zoos import write_fmnist, write_modelzoo, write_smallcnnzoo


def _cli(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    src, _ = write_modelzoo(tmp, n_trials=8)
    code, out, err = _cli("zoo", "import", "--format", "modelzoo", src, "--out", tmp / "zoo", "--epochs", "all")
    assert code == 0, err
    assert out.strip() == f"done: 24 networks in zoo {str(tmp / 'zoo')!r} (train 15, val 3, test 6)"
    return tmp


def test_import_verify_and_train_a_single_space(imported):
    tmp = imported
    archs._REGISTRY.pop("modelzoo_cnn_tanh_1x28", None)  # as in a fresh process: the zoo's config names it
    archs._spec_cached.cache_clear()
    code, out, err = _cli("zoo", "verify", tmp / "zoo")
    assert code == 0 and out.strip() == "ok: 24 instances verified", err
    assert archs.registered("modelzoo_cnn_tanh_1x28").path == "netspace_fast.zoo.public.nets:modelzoo_cnn_tanh_1x28"
    write_fmnist(tmp / "fmnist")
    code, out, err = _cli("train", "single", "--zoo", tmp / "zoo", "--root", tmp / "fmnist", "--out", tmp / "run",
                          "--preset", "fmnist-tiny-single", "--epochs", "1", "--no-progress")
    assert code == 0, err
    code, out, err = _cli("eval", tmp / "run", "--split", "test")
    assert code == 0, err
    rows = [ln for ln in out.splitlines() if ",modelzoo_cnn_tanh_1x28," in ln]
    assert len(rows) == 6 and "modelzoo_cnn_tanh_1x28: 6 networks" in out


def test_the_space_sees_the_zoos_images(imported):
    """The images a space on the imported zoo trains on: 1x28x28, (x - 0.5) / 0.5 (their Normalize)."""
    tmp = imported
    arrays = write_fmnist(tmp / "fm2", n_train=20, n_test=10)
    d = load_space_data(tmp / "zoo", SPACE_PRESETS["fmnist-tiny-single"], root=tmp / "fm2",
                        splits=("train", "val"), images_split="test")
    x, _ = d.images["val"]
    raw = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float() / 255
    assert x.shape == (10, 1, 28, 28) and torch.allclose(x[:, 0], (raw - 0.5) / 0.5)
    assert d.specs[0].input_shape == (1, 28, 28)
    assert data.geometry_of(Zoo.open(tmp / "zoo").config).size == 28


def test_small_cnn_zoo_from_the_command_line(tmp_path):
    src, _, _ = write_smallcnnzoo(tmp_path, runs=(("relu", (0, 86)), ("tanh", (0, 86))))
    code, out, err = _cli("zoo", "import", "--format", "smallcnnzoo", src, "--out", tmp_path / "z", "--split", "ours",
                          "--seed", "2", "--epochs", "all", "--max-weight", "100")
    assert code == 0, err
    assert out.startswith("done: 4 networks in zoo") and len(Zoo.open(tmp_path / "z")) == 4


@pytest.mark.parametrize("args,code,message", [
    (["--format", "modelzoo", "SRC", "--base", "."], 2, "--base: applies to --format netspace, not modelzoo"),
    (["--format", "smallcnnzoo", "SRC", "--root", "."], 2, "--root: applies to --format netspace, not smallcnnzoo"),
    (["list.txt", "--epochs", "all"], 2, "--epochs: applies to --format modelzoo and smallcnnzoo, not netspace"),
    (["--format", "modelzoo", "a", "b"], 2, "SRC: --format modelzoo imports one zoo folder, got 2 paths"),
    (["--format", "modelzoo", "SRC", "--epochs", "1,x"], 2,
     "--epochs: expected 'last', 'all' or a comma-separated list of epochs such as 0,10,50, got '1,x'"),
    (["--format", "modelzoo", "SRC"], 1, "src: 'SRC' is not a folder; expected the folder of an HSG-AIML Model "
                                         "Zoo"),
    (["--format", "smallcnnzoo", "EMPTY"], 1, "/EMPTY/layout.csv' is missing"),
])
def test_refusals_are_one_line(tmp_path, monkeypatch, args, code, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "EMPTY").mkdir()
    got, out, err = _cli("zoo", "import", *args, "--out", tmp_path / "zoo")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert got == code and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not (tmp_path / "zoo").exists()
