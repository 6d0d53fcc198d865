"""Fashion-MNIST and MNIST from idx files, and the opt-in downloads (netspace_fast/data.py).

Every file here is written in the real formats (idx headers and magic numbers, gzip, CIFAR-10's
python batches in a .tar.gz); the downloads run against a local mirror (an HTTP server on the
loopback interface, serving a temporary folder) with the files' real md5 sums in place of the
official ones: no test touches the network. (A ``file://`` URL does not serve: torchvision reads
the response's ``length``, which only HTTP responses have.)
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from netspace_fast import data
from netspace_fast.cli import cli

IDX = data.IDX_FILES


def idx_bytes(a: np.ndarray) -> bytes:
    """``a`` (uint8) in the idx format: 0x0000 08 ndim, the dims as big-endian uint32, the data."""
    a = np.ascontiguousarray(a, dtype=np.uint8)
    return bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def fake_set(n_train: int = 60, n_test: int = 20, seed: int = 0):
    """Random images (n, 28, 28) and labels 0..9 for train and test."""
    rng = np.random.default_rng(seed)
    return {IDX[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            IDX[1]: rng.integers(0, 10, n_train, dtype=np.uint8),
            IDX[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            IDX[3]: rng.integers(0, 10, n_test, dtype=np.uint8)}


def write_set(folder: Path, arrays: dict, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        b = idx_bytes(a)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(b))
        else:
            (folder / name).write_bytes(b)
    return folder


@pytest.fixture
def fmnist(tmp_path):
    arrays = fake_set()
    return write_set(tmp_path / "fm", arrays), arrays


# ------------------------------------------------------------------------------------------------
# reading


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path, gz):
    arrays = fake_set(7, 3)
    folder = write_set(tmp_path, arrays, gz)
    for name, a in arrays.items():
        got = data.read_idx(folder / (f"{name}.gz" if gz else name))
        assert got.dtype == np.uint8 and np.array_equal(got, a)
        got[...] = 0  # a writable copy, not a view of the file's bytes


@settings(max_examples=25, deadline=None)
@given(dims=st.lists(st.integers(0, 5), min_size=1, max_size=4), code=st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]))
def test_read_idx_any_type(tmp_path_factory, dims, code):
    """Every idx type code and rank: the values come back, big-endian decoded."""
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    a = (np.arange(int(np.prod(dims)), dtype=np.float64).reshape(dims) % 100).astype(dtype)
    p = tmp_path_factory.mktemp("idx") / "x-idx"
    p.write_bytes(bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + a.tobytes())
    got = data.read_idx(p)
    assert got.shape == tuple(dims) and np.array_equal(got, a.astype(a.dtype.newbyteorder("=")))


@pytest.mark.parametrize("case, message", [
    ("magic", "not an idx file: magic number 0x03080000"),
    ("short", "shorter than the 4-byte magic number"),
    ("header", "its header alone needs 16"),
    ("truncated", "truncated idx file: its header says shape (5, 28, 28)"),
    ("trailing", "corrupt idx file"),
    ("gzip", "not a readable gzip file"),
])
def test_read_idx_bad_files(tmp_path, case, message):
    good = idx_bytes(np.zeros((5, 28, 28), np.uint8))
    raw = {"magic": b"\x03\x08\x00\x00" + good[4:], "short": good[:3], "header": good[:10],
           "truncated": good[:-1], "trailing": good + b"\x00"}.get(case)
    p = tmp_path / ("bad.gz" if case == "gzip" else "bad")
    p.write_bytes(b"this is not gzip" if case == "gzip" else raw)
    with pytest.raises(ValueError) as e:
        data.read_idx(p)
    assert str(p) in str(e.value) and message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("case, message", [
    ("count", "9 labels for the 10 images"),
    ("labels-as-images", "expected uint8 images of shape (n, rows, cols)"),
    ("size", "expected 28x28 images, got 27x28"),
    ("range", "label 10 out of range"),
])
def test_bad_dataset_files_one_line(tmp_path, case, message):
    arrays = fake_set(10, 4)
    if case == "count":
        arrays[IDX[1]] = arrays[IDX[1]][:9]
    elif case == "labels-as-images":
        arrays[IDX[0]] = arrays[IDX[1]]
    elif case == "size":
        arrays[IDX[0]] = arrays[IDX[0]][:, :27]
    else:
        arrays[IDX[1]][3] = 10
    root = write_set(tmp_path / f"bad-{case}", arrays)
    with pytest.raises(ValueError) as e:
        data.tensors("fashion-mnist", "train", root=root)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_files_name_them_and_both_ways(tmp_path):
    (tmp_path / f"{IDX[0]}.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((2, 28, 28), np.uint8))))
    with pytest.raises(FileNotFoundError) as e:
        data.load_splits("fashion-mnist", tmp_path)
    msg = str(e.value)
    assert "Fashion-MNIST not found" in msg and "\n" not in msg
    assert all(f in msg.split("missing in")[1] for f in IDX[1:]) and IDX[0] not in msg.split("missing in")[1]
    assert "apt-get install dataset-fashion-mnist" in msg and "--download" in msg
    with pytest.raises(ValueError, match="root is required for dataset 'mnist'.*--download"):
        data.tensors("mnist", "test")
    with pytest.raises(FileNotFoundError) as e:
        data.tensors("mnist", "test", root=tmp_path)
    assert "MNIST not found" in str(e.value) and "dataset-fashion-mnist" not in str(e.value)


# ------------------------------------------------------------------------------------------------
# geometry, splits, normalization


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
@pytest.mark.parametrize("gz", [True, False])
def test_geometry_splits_and_normalization(tmp_path, name, gz):
    arrays = fake_set(60, 20)
    root = write_set(tmp_path / "d", arrays, gz)
    xtr, ytr = data.tensors(name, "train", root=root, seed=3)
    xva, yva = data.tensors(name, "val", root=root, seed=3)
    xte, yte = data.tensors(name, "test", root=root, seed=3)
    assert xtr.shape == (48, 3, 32, 32) and xva.shape == (12, 3, 32, 32) and xte.shape == (20, 3, 32, 32)
    assert data.dataset_info(name) == (3, 32, 10)
    assert torch.equal(yte, torch.from_numpy(arrays[IDX[3]].astype(np.int64)))  # the official test set, in order
    # train + val: a seeded split of the 60 training images, disjoint, covering them
    tr_idx, va_idx = data._split_train_val(60, 3)
    assert torch.equal(ytr, torch.from_numpy(arrays[IDX[1]][tr_idx].astype(np.int64)))
    assert torch.equal(yva, torch.from_numpy(arrays[IDX[1]][va_idx].astype(np.int64)))
    assert not set(tr_idx) & set(va_idx) and len(set(tr_idx) | set(va_idx)) == 60
    # pixel values: the 28x28 image in the middle, black padding, 3 equal channels, normalized per channel
    mean = torch.tensor(data.MEAN).view(3, 1, 1)
    std = torch.tensor(data.STD).view(3, 1, 1)
    raw = (xte * std + mean)  # back to [0, 1]
    expect = torch.from_numpy(arrays[IDX[2]].astype(np.float32) / 255.0)
    torch.testing.assert_close(raw[:, :, 2:30, 2:30], expect.unsqueeze(1).expand(-1, 3, -1, -1), rtol=0, atol=1e-6)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert raw[:, :, border].abs().max() < 1e-6
    # load_splits items are the same tensors
    ds = data.load_splits(name, root, seed=3, augment=False)
    assert [len(ds[s]) for s in ("train", "val", "test")] == [48, 12, 20]
    x0, y0 = ds["test"][5]
    torch.testing.assert_close(x0, xte[5], rtol=0, atol=1e-6)
    assert y0 == int(yte[5])
    xa, _ = data.load_splits(name, root, seed=3, augment=True)["train"][0]
    assert xa.shape == (3, 32, 32)


def test_torchvision_layout_and_seed(tmp_path):
    """Files where torchvision's download puts them (root/FashionMNIST/raw, extracted) are found too;
    another seed is another train/val split."""
    arrays = fake_set()
    write_set(tmp_path / "FashionMNIST" / "raw", arrays, gz=False)
    a = data.tensors("fashion-mnist", "val", root=tmp_path, seed=0)[1]
    b = data.tensors("fashion-mnist", "val", root=tmp_path, seed=1)[1]
    assert len(a) == len(b) == 12 and not torch.equal(a, b) or len(set(a.tolist())) == 1


# ------------------------------------------------------------------------------------------------
# downloads against a local mirror


def _md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


@pytest.fixture
def mirror(tmp_path):
    """A local HTTP mirror (127.0.0.1, a free port) serving ``tmp_path/mirror``: (folder, base URL)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    folder = tmp_path / "mirror"
    folder.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def fmnist_mirror(mirror, monkeypatch):
    """The mirror holding the four gzipped idx files, and torchvision's FashionMNIST / MNIST
    pointed at it with their md5 sums."""
    from torchvision.datasets import MNIST, FashionMNIST

    arrays = fake_set(30, 10, seed=5)
    mirror, url = mirror
    resources = []
    for name, a in arrays.items():
        b = gzip.compress(idx_bytes(a))
        (mirror / f"{name}.gz").write_bytes(b)
        resources.append((f"{name}.gz", _md5(b)))
    for cls in (FashionMNIST, MNIST):
        monkeypatch.setattr(cls, "mirrors", [url])
        monkeypatch.setattr(cls, "resources", resources)
    return arrays, mirror


@pytest.mark.parametrize("name, folder", [("fashion-mnist", "FashionMNIST"), ("mnist", "MNIST")])
def test_download_idx(tmp_path, fmnist_mirror, name, folder):
    arrays, _ = fmnist_mirror
    root = tmp_path / "root"
    data.download(name, root)
    assert (root / folder / "raw" / IDX[0]).is_file()
    x, y = data.tensors(name, "test", root=root)
    assert torch.equal(y, torch.from_numpy(arrays[IDX[3]].astype(np.int64))) and x.shape == (10, 3, 32, 32)
    data.download(name, root)  # already there: nothing fetched again, no error


def test_download_checksum_mismatch_is_one_line(tmp_path, fmnist_mirror, monkeypatch):
    from torchvision.datasets import FashionMNIST

    _, mirror = fmnist_mirror
    res = list(FashionMNIST.resources)
    res[0] = (res[0][0], "0" * 32)
    monkeypatch.setattr(FashionMNIST, "resources", res)
    with pytest.raises(OSError) as e:
        data.download("fashion-mnist", tmp_path / "root")
    assert "download: fetching 'fashion-mnist'" in str(e.value) and "\n" not in str(e.value)


def _cifar_archive(folder: Path) -> tuple[Path, list, list, dict]:
    """cifar-10-python.tar.gz of small batches in the real format (python-2 pickles, as test_data
    writes them) in ``folder``, and the md5 lists torchvision checks them against."""
    from test_data import _write_cifar

    batches = _write_cifar(folder / "src", np.random.default_rng(0))
    archive = folder / "cifar-10-python.tar.gz"
    with tarfile.open(archive, mode="w:gz") as tar:
        tar.add(batches, arcname="cifar-10-batches-py")
    md5 = {f.name: _md5(f.read_bytes()) for f in batches.iterdir()}
    train = [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)]
    test = [["test_batch", md5["test_batch"]]]
    meta = {"filename": "batches.meta", "key": "label_names", "md5": md5["batches.meta"]}
    return archive, train, test, meta


def test_download_cifar10(tmp_path, mirror, monkeypatch):
    from torchvision.datasets import CIFAR10

    archive, train, test, meta = _cifar_archive(mirror[0])
    monkeypatch.setattr(CIFAR10, "url", mirror[1] + archive.name)
    monkeypatch.setattr(CIFAR10, "tgz_md5", _md5(archive.read_bytes()))
    monkeypatch.setattr(CIFAR10, "train_list", train)
    monkeypatch.setattr(CIFAR10, "test_list", test)
    monkeypatch.setattr(CIFAR10, "meta", meta)
    root = tmp_path / "root"
    data.download("cifar10", root)
    from test_data import N_TEST

    x, y = data.tensors("cifar10", "test", root=root)
    assert x.shape == (N_TEST, 3, 32, 32) and len(y) == N_TEST


def test_download_refuses_what_cannot_be_fetched(tmp_path):
    with pytest.raises(ValueError, match="dataset 'tinyimagenet' cannot be downloaded; downloadable: cifar10"):
        data.download("tinyimagenet", tmp_path)
    with pytest.raises(ValueError, match="root is required to download 'mnist'"):
        data.download("mnist", None)
    data.fetch("digits", None, True)  # embedded: nothing to fetch


def test_no_download_without_the_flag(tmp_path, fmnist_mirror, monkeypatch):
    """Without download=True nothing is fetched: the missing files are an error, the mirror untouched."""
    import urllib.request

    def no_network(*a, **k):  # pragma: no cover - reached only on a bug
        raise AssertionError("network access without --download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    data.fetch("fashion-mnist", tmp_path, False)
    with pytest.raises(FileNotFoundError):
        data.tensors("fashion-mnist", "test", root=tmp_path)


# ------------------------------------------------------------------------------------------------
# commands


def test_zoo_train_missing_files_one_line(tmp_path):
    r = CliRunner().invoke(cli, ["zoo", "train", "--preset", "fmnist-demo-smoke", "--out", str(tmp_path / "z"),
                                 "--root", str(tmp_path / "nothing"), "--no-progress"])
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Fashion-MNIST not found")
    assert "dataset-fashion-mnist" in lines[0] and "--download" in lines[0]


def test_zoo_train_download_flag(tmp_path, fmnist_mirror):
    """--download fetches into --root (from the patched mirror), then the zoo trains on it."""
    root = tmp_path / "root"
    r = CliRunner().invoke(cli, ["zoo", "train", "--preset", "fmnist-demo-smoke", "--out", str(tmp_path / "z"),
                                 "--root", str(root), "--download", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert (root / "FashionMNIST" / "raw" / IDX[1]).is_file()
    from netspace_fast.zoo.format import Zoo

    assert len(Zoo.open(tmp_path / "z").instances()) == 16


def test_every_root_command_takes_download():
    import click

    def walk(cmd, path=()):
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, path + (name,))
        else:
            yield path, cmd

    found = 0
    for path, cmd in walk(cli):
        names = {p.name for p in cmd.params}
        if "root" in names:
            found += 1
            assert "download" in names, f"netspace {' '.join(path)} takes --root but not --download"
    assert found >= 5  # zoo train, zoo import, train single, train multi, demo


def test_demo_on_fashion_mnist_smoke(tmp_path):
    """`netspace demo --dataset fashion-mnist --root R` at its smoke size: the same stages and report
    as on digits, on the idx files of R."""
    root = write_set(tmp_path / "fm", fake_set(80, 30))
    out = tmp_path / "demo"
    r = CliRunner().invoke(cli, ["demo", "--dataset", "fashion-mnist", "--root", str(root), "--size", "smoke",
                                 "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    report = (out / "report.md").read_text()
    assert "snapshots of Adam runs on Fashion-MNIST" in report and "fmnist-demo-smoke" in report
    import json

    s = json.loads((out / "summary.json").read_text())
    assert s["dataset"] == "fashion-mnist" and s["zoo"]["test"]["networks"] >= 1
    run = json.loads((out / "space" / "run.json").read_text())
    assert run["config"]["root"] == str(root.resolve())


def test_demo_dataset_errors(tmp_path):
    r = CliRunner().invoke(cli, ["demo", "--dataset", "fashion-mnist", "--root", str(tmp_path), "--size", "smoke",
                                 "--out", str(tmp_path / "d"), "--no-progress"])
    assert r.exit_code == 1 and r.output.startswith("error: Fashion-MNIST not found")
    assert not (tmp_path / "d" / "zoo").exists()  # refused before any work
    from netspace_fast.demo import demo_settings

    with pytest.raises(ValueError, match="dataset: the demo runs on digits, fashion-mnist; got 'mnist'"):
        demo_settings("mnist", "full")


def test_fmnist_presets():
    from netspace_fast.space.presets import SPACE_PRESETS, default_preset
    from netspace_fast.zoo.presets import PRESETS

    for name in ("fmnist-single", "fmnist-multi", "fmnist-unseen"):
        assert PRESETS[name].dataset == SPACE_PRESETS[name].dataset == "fashion-mnist"
    assert default_preset("single", "fashion-mnist") == "fmnist-single"
    assert default_preset("multi", "fashion-mnist") == "fmnist-multi"
    p = PRESETS["fmnist-single"]  # the paper's 100/16/16 networks
    assert p.runs * len(p.snapshots) == 132 and p.snapshots[0] == 1 and p.lr == 1e-4
    u = {a: (n, v, t) for a, n, v, t in PRESETS["fmnist-unseen"].archs}
    assert u["vanillacnn"][0] == u["resnet8"][0] == 0 and u["lenetlike"][0] > 0 and u["resnet32"][0] > 0
