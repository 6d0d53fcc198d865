"""``netspace zoo import`` (netspace_fast/zoo/importer.py): the original NetSpace code's zoo -> ours.

Every test writes its own "original" zoo in tmp_path: list files in the original's format
(``class;<typed params>;path/to/file.pt``, split from the file name) and ``torch.save``d state
dicts (BN form for the ResNets), as the original code writes them. Nothing is downloaded.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import netspace_fast as nf
from netspace_fast import archs, data
from netspace_fast.cli import cli
from netspace_fast.zoo.format import Zoo
from netspace_fast.zoo.importer import _typed, import_original_zoo, parse_list, split_of_list
from conftest import randomize_bn

# the original's list line prefix of each architecture (class;ClassId[;depth];dataset)
PREFIX = {"lenetlike": "lenetlike;d0", "vanillacnn": "vanilla_cnn;d1", "resnet8": "resnet_fusedbn;d2;d8",
          "resnet32": "resnet_fusedbn;d3;d32"}
ORIG_DS = {"cifar10": "cifar10", "tinyimagenet": "tiny-imagenet-200"}
DIRS = {"lenetlike": "lenet", "vanillacnn": "vanillacnn", "resnet8": "resnet8"}
# (split, architecture, index) of the small original zoo
LAYOUT = [("train", "lenetlike", 0), ("train", "lenetlike", 1), ("train", "vanillacnn", 0), ("train", "resnet8", 0),
          ("train", "resnet8", 1), ("val", "lenetlike", 2), ("val", "resnet8", 2), ("test", "vanillacnn", 1),
          ("test", "resnet8", 3)]


def save_net(path: Path, arch: str, dataset: str = "cifar10", seed: int = 0) -> archs.SpecNet:
    """A random network (random BN statistics) saved as the original code saves it."""
    torch.manual_seed(seed)
    m = randomize_bn(archs.build(arch, dataset)).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in m.state_dict().items()}, path)
    return m


def line(arch: str, rel: str, dataset: str = "cifar10") -> str:
    return f"{PREFIX[arch]};s{ORIG_DS[dataset]};{rel}"


def write_lists(folder: Path, lines_by_split: dict[str, list[str]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for split, lines in lines_by_split.items():
        p = folder / f"{split}.txt"
        p.write_text("".join(f"{ln}\n" for ln in lines))
        out.append(p)
    return out


@pytest.fixture
def original(tmp_path):
    """(base, list files, {id: model}) of a small original-format cifar10 zoo under tmp_path/netspace."""
    base = tmp_path / "netspace"
    by_split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    models = {}
    for k, (split, arch, i) in enumerate(LAYOUT):
        rel = f"models/ckpts/cifar10/multi/{DIRS[arch]}/{i}.pt"
        models[f"{DIRS[arch]}-{i}"] = save_net(base / rel, arch, seed=k)
        by_split[split].append(line(arch, rel))
    lists = write_lists(base / "models/input_lists/cifar10/multi", by_split)
    return base, lists, models


def test_import_round_trip(original, tmp_path):
    base, lists, models = original
    zoo = import_original_zoo(lists, tmp_path / "zoo", base=base)
    assert isinstance(zoo, Zoo) and len(zoo) == len(LAYOUT)
    assert zoo.splits == {"train": ["lenet-0", "lenet-1", "vanillacnn-0", "resnet8-0", "resnet8-1"],
                          "val": ["lenet-2", "resnet8-2"], "test": ["vanillacnn-1", "resnet8-3"]}
    for e in zoo.instances():
        arch = {"lenet": "lenetlike"}.get(e["id"].split("-")[0], e["id"].split("-")[0])
        assert (e["architecture"], e["dataset"], e["class_id"]) == (arch, "cifar10", archs.CLASS_IDS[arch])
        assert (e["protocol"], e["seed"], e["epoch"]) == ("original", None, None)
        assert (e["train_acc"], e["val_acc"], e["test_acc"]) == (None, None, None)  # not recorded
        for k, v in models[e["id"]].state_dict().items():
            assert torch.equal(zoo.state_dict(e["id"])[k], v)
    assert zoo.verify() == []
    # the PReps are those of the original networks (BN folded while packing)
    ref = nf.pack_preps([models[i] for i in ("resnet8-0", "resnet8-1")], 1024)
    assert torch.equal(zoo.preps("train", "resnet8", 1024), ref)
    assert zoo.config["sources"]["resnet8-3"] == str((base / "models/ckpts/cifar10/multi/resnet8/3.pt").resolve())


def test_tiny_imagenet_and_absolute_paths(tmp_path):
    m = save_net(tmp_path / "ckpts" / "r8" / "5.pt", "resnet8", "tinyimagenet")
    lists = write_lists(tmp_path / "lists", {"test": [line("resnet8", str(tmp_path / "ckpts/r8/5.pt"),
                                                           "tinyimagenet")]})
    zoo = import_original_zoo(lists, tmp_path / "zoo")
    (e,) = zoo.instances()
    assert (e["id"], e["architecture"], e["dataset"], e["split"]) == ("r8-5", "resnet8", "tinyimagenet", "test")
    assert torch.equal(nf.pack_preps(zoo.model("r8-5"), 1024), nf.pack_preps(m, 1024))


def test_relative_paths_resolve_against_cwd_by_default(original, tmp_path, monkeypatch):
    base, lists, _ = original
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"train\.txt:1: network file 'models/ckpts/.*' does not exist.*--base"):
        import_original_zoo(lists, tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists()  # nothing written before everything validated
    monkeypatch.chdir(base)
    assert len(import_original_zoo(lists, tmp_path / "zoo")) == len(LAYOUT)


def test_resume_and_config_guard(original, tmp_path):
    base, lists, _ = original
    out = tmp_path / "zoo"
    first = import_original_zoo(lists, out, base=base)
    again = import_original_zoo(lists, out, base=base)  # resumes: everything is there already
    assert again.manifest == first.manifest
    with pytest.raises(ValueError, match="different configuration"):
        import_original_zoo(lists[:1], out, base=base)


def test_list_file_names_give_the_split(tmp_path):
    assert [split_of_list(p) for p in ("a/train.txt", "val.txt", "b/TEST_nets.txt")] == ["train", "val", "test"]
    for name, found in (("nets.txt", "none of them"), ("train_val.txt", "'train' and 'val'")):
        p = tmp_path / name
        p.write_text("")
        with pytest.raises(ValueError, match=rf"lists: cannot tell the split of .*{name}.*found {found}"):
            import_original_zoo([p], tmp_path / "zoo")


def _bad(tmp_path, text, match):
    """A train list whose second line is ``text``; the import fails naming train.txt:2."""
    good = save_net(tmp_path / "nets/good.pt", "lenetlike")
    del good
    lists = write_lists(tmp_path / "lists", {"train": [line("lenetlike", "nets/good.pt"), text]})
    with pytest.raises(ValueError, match=r"train\.txt:2: " + match):
        import_original_zoo(lists, tmp_path / "zoo", base=tmp_path)
    assert not (tmp_path / "zoo").exists()


@pytest.mark.parametrize("text,match", [
    ("resnet;d2;d8;scifar10;nets/good.pt", r"unknown class 'resnet'; expected one of lenetlike, vanilla_cnn, "
                                           r"resnet_fusedbn"),
    ("lenetlike;x0;scifar10;nets/good.pt", r"bad type prefix 'x' in parameter 'x0'; expected one of d \(int\)"),
    ("lenetlike;s0;scifar10;nets/good.pt", r"parameter ClassId of 'lenetlike': expected an int \(prefix 'd'\), "
                                           r"found 's0'"),
    ("lenetlike;dzero;scifar10;nets/good.pt", r"parameter 'dzero': expected an int after the prefix 'd', found "
                                              r"'zero'"),
    ("lenetlike;d;scifar10;nets/good.pt", r"expected a typed parameter .*found 'd'"),
    ("lenetlike;d2;scifar10;nets/good.pt", r"ClassId 2 disagrees with the architecture: expected 0 for lenetlike, "
                                           r"found 2"),
    ("lenetlike;d0;smnist;nets/good.pt", r"unknown dataset 'mnist'; expected one of cifar10, tiny-imagenet-200"),
    ("lenetlike;d0;stinyimagenet;nets/good.pt", r"unknown dataset 'tinyimagenet'"),
    ("resnet_fusedbn;d2;scifar10;nets/good.pt", r"class 'resnet_fusedbn' expects 3 parameters .*found 2"),
    ("resnet_fusedbn;d2;d20;scifar10;nets/good.pt", r"ResNet depth 20 is not built by netspace_fast; expected one "
                                                    r"of 8, 32, 56"),
    ("lenetlike;d0;scifar10;nets/missing.pt", r"network file 'nets/missing.pt' does not exist: expected a file at "),
    ("lenetlike;d0;scifar10;", r"expected the path of a .pt file"),
    ("lenetlike", r"expected 'class;<typed params>;path/to/file.pt', found 'lenetlike'"),
])
def test_bad_lines(tmp_path, text, match):
    _bad(tmp_path, text, match)


def test_bad_state_dicts(tmp_path):
    nets = tmp_path / "nets"
    save_net(nets / "r8.pt", "resnet8")
    _bad(tmp_path, "lenetlike;d0;scifar10;nets/r8.pt",
         r".*r8\.pt': state dict does not load strictly into lenetlike/cifar10 \(BN form\): missing conv1.bias, "
         r"conv2.bias.*unexpected")
    # the names of netspace_fast before the renaming
    sd = archs.build("resnet8").state_dict()
    torch.save({k.replace(".downsample.", ".shortcut."): v for k, v in sd.items()}, nets / "old.pt")
    _bad(tmp_path, "resnet_fusedbn;d2;d8;scifar10;nets/old.pt",
         r".*missing layer2.0.downsample.0.weight.*unexpected layer2.0.shortcut.0.weight")
    # a Tiny-ImageNet network listed as CIFAR-10
    save_net(nets / "tin.pt", "resnet8", "tinyimagenet")
    _bad(tmp_path, "resnet_fusedbn;d2;d8;scifar10;nets/tin.pt",
         r".*wrong shapes for fc.bias, fc.weight \(e.g. fc.bias: expected \(10,\), found \(200,\)\)")
    # a BN-free network where the BN form is expected
    torch.save(archs.build("resnet8", batchnorm=False).state_dict(), nets / "folded.pt")
    _bad(tmp_path, "resnet_fusedbn;d2;d8;scifar10;nets/folded.pt", r".*missing bn1.bias")
    # not a torch file; a pickled module (weights_only refuses it); a tensor, not a dict
    (nets / "junk.pt").write_bytes(b"not a checkpoint")
    _bad(tmp_path, "lenetlike;d0;scifar10;nets/junk.pt", r".*junk\.pt' is not a state dict torch.load\(\.\.\., "
                                                         r"weights_only=True\) can read")
    torch.save(archs.build("lenetlike"), nets / "module.pt")
    _bad(tmp_path, "lenetlike;d0;scifar10;nets/module.pt", r".*module\.pt. is not a state dict torch.load.*"
         r"pickles objects other than tensors")
    torch.save(torch.zeros(3), nets / "tensor.pt")
    _bad(tmp_path, "lenetlike;d0;scifar10;nets/tensor.pt", r".*expected a state dict \(a mapping of names to "
                                                           r"tensors\), found Tensor")


def test_duplicates_and_blank_lines(tmp_path):
    save_net(tmp_path / "a/0.pt", "lenetlike")
    lists = write_lists(tmp_path / "l", {"train": ["", line("lenetlike", "a/0.pt"), "  "],
                                         "val": [line("lenetlike", "./a/../a/0.pt")]})
    assert [e.line for e in parse_list(lists[0], tmp_path)] == [2]  # blank lines skipped, numbering kept
    with pytest.raises(ValueError, match=r"val\.txt:1: network .* is listed twice \(first at .*train\.txt:2\)"):
        import_original_zoo(lists, tmp_path / "zoo", base=tmp_path)


def test_bad_arguments(original, tmp_path):
    base, lists, _ = original
    with pytest.raises(ValueError, match="lists"):
        import_original_zoo([], tmp_path / "zoo")
    with pytest.raises(TypeError, match="lists"):
        import_original_zoo([3], tmp_path / "zoo")
    with pytest.raises(ValueError, match="lists: list file .*nowhere/train.txt' does not exist"):
        import_original_zoo([tmp_path / "nowhere/train.txt"], tmp_path / "zoo")
    with pytest.raises(TypeError, match="out"):
        import_original_zoo(lists, 3, base=base)
    with pytest.raises(ValueError, match="base: .* is not a directory"):
        import_original_zoo(lists, tmp_path / "zoo", base=tmp_path / "nowhere")
    with pytest.raises(TypeError, match="root"):
        import_original_zoo(lists, tmp_path / "zoo", base=base, root=1.5)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/test.txt").write_text("\n")
    with pytest.raises(ValueError, match="lists: no networks"):
        import_original_zoo([tmp_path / "empty/test.txt"], tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists()


def test_typed_parameters():
    w = "f.txt:1"
    assert _typed("d-3", w) == ("d", -3)
    assert _typed("f0.5", w) == ("f", 0.5)
    assert _typed("stiny-imagenet-200", w) == ("s", "tiny-imagenet-200")
    assert _typed("l[d1,d2]", w) == ("l", [1, 2])
    assert _typed("l[d1*sa]", w) == ("l", [1, "a"])
    with pytest.raises(ValueError, match=r"f.txt:1: parameter 'l1,2': expected a list"):
        _typed("l1,2", w)
    with pytest.raises(ValueError, match=r"f.txt:1: parameter 'fx': expected a float"):
        _typed("fx", w)


# ---------------------------------------------------------------------------------------------
# accuracies evaluated with --root (a tiny stand-in CIFAR-10 in the python batch format)


def _write_cifar(root: Path, per_batch: int = 6, n_test: int = 7) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else per_batch
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in rng.integers(0, 10, n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)


def test_accuracies_evaluated_with_root(original, tmp_path):
    base, lists, models = original
    _write_cifar(tmp_path / "data")
    zoo = import_original_zoo(lists, tmp_path / "zoo", base=base, root=tmp_path / "data", chunk=2)
    assert zoo.config["root"] == str((tmp_path / "data").resolve())
    for split in ("train", "val", "test"):
        x, y = data.tensors("cifar10", split, tmp_path / "data", seed=0)
        for e in zoo.instances():
            with torch.no_grad():
                expected = (models[e["id"]](x).argmax(1) == y).float().mean().item()
            assert abs(e[f"{split}_acc"] - expected) <= 1.0 / len(y) + 1e-9, (e["id"], split)


def test_missing_dataset_writes_nothing(original, tmp_path):
    base, lists, _ = original
    with pytest.raises(FileNotFoundError, match="CIFAR-10 not found"):
        import_original_zoo(lists, tmp_path / "zoo", base=base, root=tmp_path / "nodata")
    assert not (tmp_path / "zoo").exists()


# ---------------------------------------------------------------------------------------------
# the command line


def test_cli_import(original, tmp_path):
    base, lists, _ = original
    out = tmp_path / "zoo"
    result = CliRunner().invoke(cli, ["zoo", "import", *map(str, lists), "--out", str(out), "--base", str(base)])
    assert result.exit_code == 0, result.output
    assert f"done: {len(LAYOUT)} networks in zoo" in result.stdout and "train 5, val 2, test 2" in result.stdout
    assert len(Zoo.open(out)) == len(LAYOUT)
    info = CliRunner().invoke(cli, ["zoo", "info", str(out)])
    assert info.exit_code == 0 and "resnet8 [cifar10]: 4 instances" in info.stdout


def test_cli_import_error_is_one_line(original, tmp_path):
    base, lists, _ = original
    bad = tmp_path / "bad" / "val.txt"
    bad.parent.mkdir()
    bad.write_text(line("resnet8", "models/ckpts/cifar10/multi/resnet8/0.pt") + "\nvgg;d0;scifar10;x.pt\n")
    result = CliRunner().invoke(cli, ["zoo", "import", str(bad), "--out", str(tmp_path / "zoo"), "--base",
                                      str(base)])
    assert result.exit_code == 1
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output
    assert lines[0].startswith("error: ") and "val.txt:2: unknown class 'vgg'" in lines[0]
    missing = CliRunner().invoke(cli, ["zoo", "import", "--out", str(tmp_path / "zoo")])
    assert missing.exit_code == 2  # LIST is required (click's usage error)


def test_resnet56_has_no_classid_to_check(tmp_path):
    (tmp_path / "r56.pt").write_bytes(b"")  # parsing only checks that the file exists
    (tmp_path / "test.txt").write_text("resnet_fusedbn;d4;d56;stiny-imagenet-200;r56.pt\n")
    (e,) = parse_list(tmp_path / "test.txt", tmp_path)
    assert (e.arch, e.dataset, e.class_id, e.split, e.line) == ("resnet56", "tinyimagenet", 4, "test", 1)
    assert e.path == (tmp_path / "r56.pt").resolve()
