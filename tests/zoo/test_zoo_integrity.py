"""Corrupt zoo input is noticed where it is used: a member file changed after it was written (its
sha256 no longer the manifest's) is refused by every load, a member whose tensors do not fit its
architecture is one error line, manifest fields of the wrong type or range are refused on opening and
listed by ``verify`` (as are NaN / Inf weights), and ``netspace zoo info`` / ``eval`` say so in one
``error:`` line."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load as st_load, save as st_save

from netspace_fast import archs
from netspace_fast.cli import cli
from netspace_fast.explore.common import Explorer
from netspace_fast.prep import prep_shape
from netspace_fast.space import presets as space_presets
from netspace_fast.space.train import load_space_data, train_space
from netspace_fast.storage import sha256_bytes
from netspace_fast.zoo.format import Zoo, init_zoo, write_instance

ARCH, DS = "lenetlike", "digits"
SPLITS = ("train", "train", "val", "test")


def _write_zoo(path: Path) -> Path:
    """Four LeNetLike/digits members (train 2, val 1, test 1), ids m0 .. m3; m3 records no accuracies."""
    init_zoo(path, {"seed": 0})
    torch.manual_seed(0)
    for i, split in enumerate(SPLITS):
        acc = {"train": 0.9, "val": 0.8, "test": 0.7} if i < 3 else {}
        write_instance(path, archs.build(ARCH, DS).eval(), id=f"m{i}", arch=ARCH, dataset=DS, protocol="single",
                       seed=i, epoch=3, acc=acc, split=split)
    return path


@pytest.fixture
def zoo(tmp_path) -> Path:
    return _write_zoo(tmp_path / "zoo")


def _flip_bit(path: Path) -> None:
    """One flipped bit in the last tensor byte: the file still parses, only its sha256 tells."""
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))


def _store(zoo: Path, id: str, tensors: dict[str, torch.Tensor]) -> None:
    """Replace member ``id``'s file by ``tensors`` and record its sha256 (the file is intact, its
    contents are what is wrong)."""
    data = st_save({k: v.contiguous() for k, v in tensors.items()})
    (zoo / f"{id}.safetensors").write_bytes(data)
    _edit_entry(zoo, id, sha256=sha256_bytes(data))


def _edit_entry(zoo: Path, id: str, **fields) -> None:
    path = zoo / "manifest.json"
    manifest = json.loads(path.read_text())
    entry = next(e for e in manifest["instances"] if e["id"] == id)
    entry.update(fields)
    path.write_text(json.dumps(manifest))  # allow_nan: a NaN is written as the JSON extension NaN


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def _one_line_error(result) -> str:
    """The command failed with exactly one 'error: ...' line on stderr and no traceback."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _stub_explorer(zoo: Path) -> Explorer:
    """An Explorer over the zoo with just enough of a space for :meth:`Explorer.preps`."""
    width = 1024
    height, _ = prep_shape(archs.spec(ARCH, DS).num_params, width)
    space = SimpleNamespace(protocol="single", specs=[archs.spec(ARCH, DS)], device="cpu",
                            decoder=SimpleNamespace(config=SimpleNamespace(width=width, height=height)))
    return Explorer(space, Zoo.open(zoo), 0)


# ---------------------------------------------------------------------------------------------
# a member changed after it was written


def test_flipped_bit_is_refused_by_every_load(zoo):
    z = Zoo.open(zoo)
    z.model("m0")  # loads before the damage
    _flip_bit(zoo / "m0.safetensors")
    z = Zoo.open(zoo)
    with pytest.raises(ValueError) as e:
        z.state_dict("m0")
    msg = _one_line(e)
    assert str(zoo) in msg and "'m0'" in msg and "m0.safetensors" in msg, msg
    assert "sha256" in msg and "netspace zoo verify" in msg, msg
    with pytest.raises(ValueError, match="sha256"):
        z.model("m0")
    with pytest.raises(ValueError, match="sha256"):
        z.preps("train", ARCH, width=1024)  # the PReps training packs
    z.model("m1")  # the undamaged members still load
    assert z.preps("val", ARCH, width=1024).shape[0] == 1


def test_flipped_bit_is_refused_by_training_and_exploring(zoo):
    preset = space_presets.SPACE_PRESETS["digits-tiny-single"]
    ex = _stub_explorer(zoo)
    assert ex.preps(["m0", "m2"]).shape[0] == 2
    _flip_bit(zoo / "m2.safetensors")
    with pytest.raises(ValueError) as e:
        load_space_data(zoo, preset, splits=("train", "val"))
    assert "'m2'" in _one_line(e) and "sha256" in str(e.value)
    with pytest.raises(ValueError) as e:
        _stub_explorer(zoo).preps(["m0", "m2"])
    assert "'m2'" in _one_line(e) and "sha256" in str(e.value)


# ---------------------------------------------------------------------------------------------
# tensors that do not fit the architecture


def test_wrong_shape_is_one_line(zoo):
    state = Zoo.open(zoo).state_dict("m1")
    state["fc1.weight"] = torch.zeros(120, 401)
    _store(zoo, "m1", state)
    z = Zoo.open(zoo)
    with pytest.raises(ValueError) as e:
        z.model("m1")
    msg = _one_line(e)
    assert "'m1'" in msg and "'fc1.weight'" in msg and "(120, 401)" in msg and "(120, 400)" in msg, msg
    with pytest.raises(ValueError, match=r"'fc1\.weight' has shape \(120, 401\), expected \(120, 400\)"):
        _stub_explorer(zoo).preps(["m1"])
    z.model("m0")
    assert any("m1.safetensors" in p and "fc1.weight" in p for p in z.verify())


def test_missing_and_extra_tensors_are_one_line(zoo):
    state = Zoo.open(zoo).state_dict("m0")
    del state["conv2.bias"]
    _store(zoo, "m0", state)
    with pytest.raises(ValueError) as e:
        Zoo.open(zoo).model("m0")
    assert "'conv2.bias' is missing" in _one_line(e) and "(16,)" in str(e.value)
    state = Zoo.open(zoo).state_dict("m1")
    state["extra.weight"] = torch.zeros(3)
    _store(zoo, "m1", state)
    with pytest.raises(ValueError) as e:
        Zoo.open(zoo).model("m1")
    assert "'extra.weight'" in _one_line(e)


def test_eval_of_a_corrupt_member_is_one_error_line(tmp_path):
    zoo = _write_zoo(tmp_path / "zoo")
    run = tmp_path / "run"
    train_space(run, zoo, "single", "digits-tiny-single", epochs=1, progress=False)
    good = (zoo / "m2.safetensors").read_bytes()
    assert CliRunner().invoke(cli, ["eval", str(run), "--split", "val"]).exit_code == 0
    _flip_bit(zoo / "m2.safetensors")
    line = _one_line_error(CliRunner().invoke(cli, ["eval", str(run), "--split", "val"]))
    assert "'m2'" in line and "sha256" in line, line
    (zoo / "m2.safetensors").write_bytes(good)
    state = st_load(good)
    state["conv1.weight"] = torch.zeros(6, 1, 5, 5)
    _store(zoo, "m2", state)
    line = _one_line_error(CliRunner().invoke(cli, ["eval", str(run), "--split", "val"]))
    assert "'m2'" in line and "'conv1.weight'" in line and "(6, 1, 5, 5)" in line and "(6, 3, 5, 5)" in line, line


# ---------------------------------------------------------------------------------------------
# NaN / Inf weights


def test_verify_reports_nan_and_inf_weights(zoo):
    assert Zoo.open(zoo).verify() == []
    state = Zoo.open(zoo).state_dict("m1")
    state["conv1.weight"][0, 0, 0, 0] = math.nan
    state["fc2.bias"][3] = -math.inf
    _store(zoo, "m1", state)
    problems = Zoo.open(zoo).verify()
    assert len(problems) == 2, problems
    assert any("'m1'" in p and "'conv1.weight'" in p and "NaN" in p for p in problems), problems
    assert any("'m1'" in p and "'fc2.bias'" in p and "Inf" in p for p in problems), problems
    r = CliRunner().invoke(cli, ["zoo", "verify", str(zoo)])
    assert r.exit_code == 1 and "conv1.weight" in r.stdout and "fc2.bias" in r.stdout, r.output


def test_nan_weights_named_by_member_where_training_packs_them(zoo):
    """Packing a split's PReps (training, eval) names the member and the tensor, not the kernel's
    network index."""
    state = Zoo.open(zoo).state_dict("m1")
    state["fc2.bias"][3] = math.nan
    _store(zoo, "m1", state)
    with pytest.raises(ValueError) as e:
        Zoo.open(zoo).preps("train", ARCH)
    line = _one_line(e)
    assert "'m1'" in line and "'fc2.bias'" in line and "NaN or Inf" in line and "network 1" not in line


# ---------------------------------------------------------------------------------------------
# manifest fields of the wrong type or range

BAD_FIELDS = [
    ("test_acc", "high"), ("test_acc", 1.5), ("val_acc", -0.1), ("train_acc", True), ("train_acc", math.nan),
    ("epoch", "3"), ("epoch", -1), ("epoch", 2.5), ("seed", -7), ("seed", "0"), ("class_id", -1),
    ("num_params", -10), ("num_params", None), ("sha256", 12), ("architecture", 5), ("protocol", None),
]


@pytest.mark.parametrize("field,value", BAD_FIELDS)
def test_bad_field_refused_on_open_and_listed_by_verify(zoo, field, value):
    _edit_entry(zoo, "m2", **{field: value})
    with pytest.raises(ValueError) as e:
        Zoo.open(zoo)
    msg = _one_line(e)
    assert str(zoo) in msg and "'m2'" in msg and repr(field) in msg and repr(value) in msg, msg
    assert "expected" in msg, msg
    problems = Zoo.open(zoo, check_fields=False).verify()
    assert any("'m2'" in p and repr(field) in p and repr(value) in p for p in problems), problems
    r = CliRunner().invoke(cli, ["zoo", "verify", str(zoo)])
    assert r.exit_code == 1 and repr(field) in r.stdout and "'m2'" in r.stdout, r.output


def test_verify_lists_every_bad_field(zoo):
    _edit_entry(zoo, "m0", epoch=-1, test_acc="high")
    _edit_entry(zoo, "m3", seed=-2)
    problems = Zoo.open(zoo, check_fields=False).verify()
    assert len(problems) == 3, problems
    r = CliRunner().invoke(cli, ["zoo", "verify", str(zoo)])
    assert r.exit_code == 1 and r.stdout.count("manifest.json") == 3, r.output


@pytest.mark.parametrize("field,value", [("sdf_mse", -0.5), ("sdf_mse", "small"), ("sdf_within_0.01", 1.5),
                                         ("sdf_within_0.01", None)])
def test_bad_sdf_field(zoo, field, value):
    sdf = {"shape": "chair-0", "sdf_mse": 1e-4, "sdf_within_0.01": 0.9}
    _edit_entry(zoo, "m1", **sdf)
    assert Zoo.open(zoo).verify() == []  # a well-formed SDF entry
    _edit_entry(zoo, "m1", **{field: value})
    with pytest.raises(ValueError) as e:
        Zoo.open(zoo)
    assert "'m1'" in _one_line(e) and repr(field) in str(e.value), str(e.value)
    assert any(repr(field) in p for p in Zoo.open(zoo, check_fields=False).verify())


def test_what_the_package_writes_opens(zoo):
    """Null accuracies, seeds, epochs and class ids (not recorded) are no problem."""
    _edit_entry(zoo, "m3", seed=None, epoch=None, class_id=None)
    z = Zoo.open(zoo)
    assert z.entry("m3")["test_acc"] is None and z.verify() == []


def test_write_instance_writes_no_entry_opening_refuses(tmp_path):
    net = archs.build(ARCH, DS)
    kw = dict(id="x", arch=ARCH, dataset=DS, protocol="p", split="train")
    with pytest.raises(ValueError, match=re.escape("acc['test']: expected a finite number in [0, 1], got 97.5")):
        write_instance(tmp_path / "z", net, seed=0, epoch=1, acc={"test": 97.5}, **kw)
    with pytest.raises(ValueError, match="seed: expected an int >= 0, got -1"):
        write_instance(tmp_path / "z", net, seed=-1, epoch=1, acc={}, **kw)
    with pytest.raises(TypeError, match="epoch: expected an int >= 0, got '3'"):
        write_instance(tmp_path / "z", net, seed=0, epoch="3", acc={}, **kw)
    assert not (tmp_path / "z" / "manifest.json").exists()


@pytest.mark.parametrize("field,value", [("test_acc", "high"), ("epoch", "3")])
def test_zoo_info_with_a_string_field_is_one_error_line(zoo, field, value):
    assert CliRunner().invoke(cli, ["zoo", "info", str(zoo)]).exit_code == 0
    _edit_entry(zoo, "m1", **{field: value})
    line = _one_line_error(CliRunner().invoke(cli, ["zoo", "info", str(zoo)]))
    assert "'m1'" in line and repr(field) in line and repr(value) in line and "expected" in line, line
    line = _one_line_error(CliRunner().invoke(cli, ["zoo", "info", "--json", str(zoo)]))
    assert repr(field) in line


def test_copy_of_zoo_elsewhere_names_its_own_folder(zoo, tmp_path):
    """The messages name the folder that was opened (a copied zoo: the copy)."""
    other = tmp_path / "copy"
    shutil.copytree(zoo, other)
    _flip_bit(other / "m0.safetensors")
    with pytest.raises(ValueError) as e:
        Zoo.open(other).model("m0")
    assert str(other) in _one_line(e) and Zoo.open(zoo).model("m0") is not None
