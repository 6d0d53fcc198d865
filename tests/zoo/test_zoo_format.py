"""The on-disk zoo format (netspace_fast.zoo.format): round trips, manifest, verify, atomicity, guards."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from netspace_fast import archs
from netspace_fast.zoo import format as zoo_format
from netspace_fast.prep import prep_shape
from netspace_fast.zoo.format import SCHEMA_VERSION, Zoo, init_zoo, write_instance

DS = "digits"


def _trained_like(arch: str, seed: int) -> torch.nn.Module:
    """A network with non-trivial weights and BN statistics (as if trained)."""
    torch.manual_seed(seed)
    m = archs.build(arch, DS)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
                mod.running_mean.uniform_(-0.3, 0.3)
                mod.running_var.uniform_(0.5, 2.0)
                mod.num_batches_tracked.fill_(17)
    return m


def _write(zoo, arch="resnet8", seed=0, split="train", id=None, **kw):
    m = _trained_like(arch, seed)
    args = dict(id=id or f"{arch}-{seed}", arch=arch, dataset=DS, protocol="p1", seed=seed, epoch=3,
                acc={"train": 0.9, "val": 0.8, "test": 0.75}, split=split)
    args.update(kw)
    return m, write_instance(zoo, m, **args)


def _rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture
def zoo3(tmp_path):
    """A zoo with resnet8 x3 (train, train, val) and lenetlike x2 (train, test)."""
    z = tmp_path / "zoo"
    models = {}
    for arch, seed, split in [("resnet8", 0, "train"), ("resnet8", 1, "train"), ("resnet8", 2, "val"),
                              ("lenetlike", 0, "train"), ("lenetlike", 1, "test")]:
        m, e = _write(z, arch, seed, split)
        models[e["id"]] = m
    return z, models


def test_round_trip_state_and_forward(zoo3):
    z, models = zoo3
    zoo = Zoo.open(z)
    x = torch.randn(4, 3, 32, 32)
    for id, ref in models.items():
        loaded = zoo.model(id)
        assert not loaded.training
        sd_ref, sd = ref.state_dict(), loaded.state_dict()
        assert sd.keys() == sd_ref.keys()
        for k in sd_ref:
            assert torch.equal(sd[k], sd_ref[k]), k
        ref.eval()
        with torch.no_grad():
            assert torch.equal(loaded(x), ref(x))
    # buffers are in the file itself
    raw = load_file(str(z / "resnet8-0.safetensors"))
    assert raw["bn1.num_batches_tracked"].item() == 17
    assert "bn1.running_var" in raw


def test_manifest_fields(zoo3):
    z, models = zoo3
    manifest = json.loads((z / "manifest.json").read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION == 2
    e = next(e for e in manifest["instances"] if e["id"] == "resnet8-1")
    assert e["architecture"] == "resnet8" and e["dataset"] == DS
    assert e["class_id"] == archs.CLASS_IDS["resnet8"]
    assert (e["protocol"], e["seed"], e["epoch"]) == ("p1", 1, 3)
    assert (e["train_acc"], e["val_acc"], e["test_acc"]) == (0.9, 0.8, 0.75)
    assert e["num_params"] == sum(p.numel() for p in models["resnet8-1"].parameters())
    assert e["num_params"] == archs.spec("resnet8", DS).num_params_bn
    assert e["file"] == "resnet8-1.safetensors"
    import hashlib
    assert e["sha256"] == hashlib.sha256((z / e["file"]).read_bytes()).hexdigest()
    assert manifest["splits"] == {"train": ["resnet8-0", "resnet8-1", "lenetlike-0"], "val": ["resnet8-2"],
                                  "test": ["lenetlike-1"]}


def test_instances_listing(zoo3):
    z, _ = zoo3
    zoo = Zoo.open(z)
    ids = lambda es: [e["id"] for e in es]  # noqa: E731
    assert ids(zoo.instances()) == ["resnet8-0", "resnet8-1", "resnet8-2", "lenetlike-0", "lenetlike-1"]
    assert ids(zoo.instances("train")) == ["resnet8-0", "resnet8-1", "lenetlike-0"]
    assert ids(zoo.instances("train", "resnet8")) == ["resnet8-0", "resnet8-1"]
    assert ids(zoo.instances(arch="lenetlike")) == ["lenetlike-0", "lenetlike-1"]
    assert ids(zoo.instances("val", "lenetlike")) == []
    assert len(zoo.models("train", "resnet8")) == 2
    with pytest.raises(ValueError, match="split"):
        zoo.instances("holdout")
    with pytest.raises(KeyError, match="nope"):
        zoo.model("nope")


def test_folded_matches_bn(zoo3):
    z, _ = zoo3
    zoo = Zoo.open(z)
    x = torch.randn(4, 3, 32, 32)
    bn = zoo.model("resnet8-0")
    folded = zoo.model("resnet8-0", folded=True)
    assert isinstance(folded, archs.SpecNet) and not folded.batchnorm and not folded.training
    with torch.no_grad():
        assert _rel_err(folded(x), bn(x)) <= 1e-5
        for f, b in zip(zoo.models("train", folded=True), zoo.models("train")):
            assert _rel_err(f(x), b(x)) <= 1e-5


def test_preps_shape(zoo3):
    z, _ = zoo3
    zoo = Zoo.open(z)
    width = 1000
    p = zoo.preps("train", "resnet8", width=width)
    h, w = prep_shape(archs.spec("resnet8", DS).num_params, width)
    assert p.shape == (2, h, w)
    assert zoo.preps("test", "lenetlike", width=width).shape[0] == 1
    with pytest.raises(ValueError, match="no 'resnet8' instances"):
        zoo.preps("test", "resnet8")


def test_verify_clean_and_problems(zoo3):
    z, _ = zoo3
    assert Zoo.open(z).verify() == []
    # one modified byte (in the data section, so the file still parses): sha mismatch
    p = z / "resnet8-0.safetensors"
    data = bytearray(p.read_bytes())
    data[-5] ^= 0xFF
    p.write_bytes(bytes(data))
    # truncated file
    q = z / "lenetlike-1.safetensors"
    q.write_bytes(q.read_bytes()[:100])
    # missing file
    (z / "resnet8-2.safetensors").unlink()
    problems = Zoo.open(z).verify()
    text = "\n".join(problems)
    assert any("resnet8-0.safetensors" in s and "sha256" in s for s in problems), text
    assert any("lenetlike-1.safetensors" in s and ("truncated" in s or "corrupt" in s) for s in problems), text
    assert any("resnet8-2.safetensors" in s and "missing" in s for s in problems), text
    assert not any("resnet8-1" in s or "lenetlike-0" in s for s in problems), text


def test_verify_reports_orphans_and_temp_files(tmp_path):
    z = tmp_path / "zoo"
    _write(z)
    (z / "stray.safetensors").write_bytes(b"x")
    (z / ".tmp-manifest.json.abc").write_bytes(b"x")
    problems = Zoo.open(z).verify()
    assert any("stray.safetensors" in s for s in problems)
    assert any(".tmp-manifest.json.abc" in s for s in problems)


def test_atomic_write_leaves_no_temp_files(zoo3):
    z, _ = zoo3
    assert sorted(os.listdir(z)) == sorted(["manifest.json", "resnet8-0.safetensors", "resnet8-1.safetensors",
                                            "resnet8-2.safetensors", "lenetlike-0.safetensors",
                                            "lenetlike-1.safetensors"])


def test_crash_during_write_keeps_previous_manifest(tmp_path, monkeypatch):
    z = tmp_path / "zoo"
    _write(z, seed=0)
    before = (z / "manifest.json").read_bytes()

    def boom(src, dst):
        raise OSError("simulated crash")

    monkeypatch.setattr(zoo_format.os, "replace", boom)
    with pytest.raises(OSError, match="simulated crash"):
        _write(z, seed=1)
    monkeypatch.undo()
    assert (z / "manifest.json").read_bytes() == before
    zoo = Zoo.open(z)
    assert [e["id"] for e in zoo.instances()] == ["resnet8-0"]
    assert zoo.verify() == []  # no temp file, no partial instance file
    assert sorted(os.listdir(z)) == ["manifest.json", "resnet8-0.safetensors"]


def test_crash_on_manifest_replace_only(tmp_path, monkeypatch):
    """The instance file lands but the manifest replace fails: old manifest intact, file is an orphan."""
    z = tmp_path / "zoo"
    _write(z, seed=0)
    before = (z / "manifest.json").read_bytes()
    real = os.replace

    def replace(src, dst):
        if str(dst).endswith("manifest.json"):
            raise OSError("simulated crash")
        return real(src, dst)

    monkeypatch.setattr(zoo_format.os, "replace", replace)
    with pytest.raises(OSError):
        _write(z, seed=1)
    monkeypatch.undo()
    assert (z / "manifest.json").read_bytes() == before
    assert Zoo.open(z).verify() == ["resnet8-1.safetensors: not in the manifest (orphan)"]
    _write(z, seed=1)  # the retry completes the job
    assert Zoo.open(z).verify() == []


def test_duplicate_ids(tmp_path):
    z = tmp_path / "zoo"
    _, e1 = _write(z, seed=0)
    manifest = (z / "manifest.json").read_bytes()
    _, e2 = _write(z, seed=0)  # identical re-write: idempotent
    assert e1 == e2 and (z / "manifest.json").read_bytes() == manifest
    file_before = (z / "resnet8-0.safetensors").read_bytes()
    with pytest.raises(ValueError, match="different weights"):
        _write(z, seed=5, id="resnet8-0")
    with pytest.raises(ValueError, match="different metadata"):
        _write(z, seed=0, epoch=4)
    assert (z / "resnet8-0.safetensors").read_bytes() == file_before
    assert (z / "manifest.json").read_bytes() == manifest


def test_write_instance_validation(tmp_path):
    z = tmp_path / "zoo"
    with pytest.raises(ValueError, match="split"):
        _write(z, split="holdout")
    with pytest.raises(ValueError, match="id"):
        _write(z, id="../evil")
    with pytest.raises(ValueError, match="acc"):
        _write(z, acc={"training": 1.0})
    with pytest.raises(ValueError, match="state dict"):
        write_instance(z, archs.build("resnet8", DS, batchnorm=False), id="x", arch="resnet8", dataset=DS,
                       protocol="p", seed=0, epoch=0, acc={}, split="train")
    with pytest.raises(ValueError, match="lenetlike"):
        write_instance(z, archs.build("lenetlike", DS), id="x", arch="resnet8", dataset=DS,
                       protocol="p", seed=0, epoch=0, acc={}, split="train")
    _, e = _write(z, acc={"train": 1})  # missing accuracies are recorded as null
    assert (e["train_acc"], e["val_acc"], e["test_acc"]) == (1.0, None, None)


def test_init_zoo_config_guard(tmp_path):
    z = tmp_path / "a" / "zoo"
    cfg = {"arch": "resnet8", "epochs": 10, "lr": 0.1, "seeds": (0, 1)}
    m = init_zoo(z, cfg)
    assert m["config"] == {"arch": "resnet8", "epochs": 10, "lr": 0.1, "seeds": [0, 1]}
    assert m["instances"] == [] and Zoo.open(z).instances() == []
    _write(z, seed=0)
    resumed = init_zoo(z, dict(cfg))  # same config: resume, sees the written instance
    assert [e["id"] for e in resumed["instances"]] == ["resnet8-0"]
    assert Zoo.open(z).config == m["config"]
    with pytest.raises(ValueError, match="different configuration") as exc:
        init_zoo(z, {**cfg, "lr": 0.2})
    assert "0.1" in str(exc.value) and "0.2" in str(exc.value)
    with pytest.raises(TypeError, match="config"):
        init_zoo(tmp_path / "b", {"f": object()})


def test_open_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Zoo.open(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        Zoo.open(tmp_path / "empty")
    z = tmp_path / "zoo"
    _write(z)
    good = json.loads((z / "manifest.json").read_text())
    (z / "manifest.json").write_text(json.dumps({**good, "schema_version": 99}))
    with pytest.raises(ValueError, match="schema version 99"):
        Zoo.open(z)
    (z / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="malformed"):
        Zoo.open(z)
    (z / "manifest.json").write_text(json.dumps({**good, "splits": {"train": ["ghost"], "val": [], "test": []}}))
    with pytest.raises(ValueError, match="ghost"):
        Zoo.open(z)
    bad_entry = dict(good["instances"][0])
    del bad_entry["sha256"]
    (z / "manifest.json").write_text(json.dumps({**good, "instances": [bad_entry]}))
    with pytest.raises(ValueError, match="sha256"):
        Zoo.open(z)


# ---------------------------------------------------------------------------------------------
# many instances at once (write_instances): one manifest update per batch


def _kw(arch="lenetlike", seed=0, split="train", id=None, **kw):
    args = dict(model=_trained_like(arch, seed), id=id or f"{arch}-{seed}", arch=arch, dataset=DS, protocol="p1",
                seed=seed, epoch=3, acc={"train": 0.9, "val": 0.8, "test": 0.75}, split=split)
    args.update(kw)
    return args


_MIX = [("lenetlike", 0, "train"), ("resnet8", 0, "val"), ("lenetlike", 1, "test"), ("lenetlike", 2, "train"),
        ("resnet8", 1, "train")]


@pytest.mark.parametrize("batch_bytes", [1, 300_000, 256 << 20])  # a batch per instance, a few, one
def test_write_instances_equals_one_at_a_time(tmp_path, batch_bytes):
    """The same files and the same manifest, byte for byte, as write_instance called per instance, whatever
    the batches; the entries returned in order."""
    one, many = tmp_path / "one", tmp_path / "many"
    expected = [write_instance(one, **{k: v for k, v in _kw(a, s, sp).items() if k != "model"},
                               model=_trained_like(a, s)) for a, s, sp in _MIX]
    got = zoo_format.write_instances(many, (_kw(a, s, sp) for a, s, sp in _MIX), batch_bytes=batch_bytes)
    assert got == expected
    assert sorted(os.listdir(many)) == sorted(os.listdir(one))
    for name in os.listdir(one):
        assert (many / name).read_bytes() == (one / name).read_bytes(), name
    assert Zoo.open(many).verify() == []


def test_write_instances_updates_the_manifest_once_per_batch(tmp_path, monkeypatch):
    writes = []
    real = zoo_format.atomic_write_bytes

    def spy(path, data):
        writes.append(os.path.basename(path))
        return real(path, data)

    monkeypatch.setattr(zoo_format, "atomic_write_bytes", spy)
    zoo_format.write_instances(tmp_path / "z", (_kw("lenetlike", s) for s in range(6)))
    assert writes.count("manifest.json") == 1 and len(writes) == 7
    writes.clear()
    size = len(open(tmp_path / "z" / "lenetlike-0.safetensors", "rb").read())
    zoo_format.write_instances(tmp_path / "z2", (_kw("lenetlike", s) for s in range(6)), batch_bytes=2 * size)
    assert writes.count("manifest.json") == 3  # batches of two


def test_write_instances_checks_the_whole_batch_before_writing(tmp_path):
    """A conflicting id (in the zoo, or twice in the batch with other weights or metadata) or a bad instance
    anywhere in a batch: one ValueError naming it, and nothing of the batch written."""
    z = tmp_path / "zoo"
    zoo_format.write_instances(z, [_kw("lenetlike", 0)])
    before = {p: (z / p).read_bytes() for p in os.listdir(z)}
    bad_batches = {
        "different weights": [_kw("lenetlike", 1), _kw("lenetlike", 5, id="lenetlike-0")],
        "different metadata": [_kw("lenetlike", 1), _kw("lenetlike", 0, epoch=9)],
        "lenetlike-7.*different weights": [_kw("lenetlike", 1), _kw("lenetlike", 7), _kw("lenetlike", 8, id="lenetlike-7")],
        "split": [_kw("lenetlike", 1), _kw("lenetlike", 2, split="holdout")],
    }
    for match, batch in bad_batches.items():
        with pytest.raises(ValueError, match=match):
            zoo_format.write_instances(z, batch)
        assert {p: (z / p).read_bytes() for p in os.listdir(z)} == before, match
    with pytest.raises(ValueError, match="batch_bytes"):
        zoo_format.write_instances(z, [], batch_bytes=0)
    with pytest.raises(TypeError, match="instances"):
        zoo_format.write_instances(z, [("lenetlike", 1)])


def test_write_instances_keeps_identical_ids_and_repairs_their_files(tmp_path):
    z = tmp_path / "zoo"
    first = zoo_format.write_instances(z, [_kw("lenetlike", 0), _kw("lenetlike", 1)])
    manifest = (z / "manifest.json").read_bytes()
    (z / "lenetlike-1.safetensors").unlink()  # lost
    again = zoo_format.write_instances(z, [_kw("lenetlike", 0), _kw("lenetlike", 1), _kw("lenetlike", 0)])
    assert again == [first[0], first[1], first[0]]
    assert (z / "manifest.json").read_bytes() == manifest
    assert Zoo.open(z).verify() == []


def test_write_instances_crash_mid_batch_resumes(tmp_path, monkeypatch):
    """Killed at the manifest update of its second batch: the first batch is recorded, the second's files are
    orphans; the same call again completes the zoo (the orphans written again, the same bytes)."""
    z = tmp_path / "zoo"
    size = len(zoo_format._prepared(**_kw("lenetlike", 0))[1])
    real, manifests = os.replace, []

    def replace(src, dst):
        if str(dst).endswith("manifest.json"):
            manifests.append(dst)
            if len(manifests) == 2:
                raise OSError("simulated crash")
        return real(src, dst)

    monkeypatch.setattr(zoo_format.os, "replace", replace)
    with pytest.raises(OSError, match="simulated crash"):
        zoo_format.write_instances(z, (_kw("lenetlike", s) for s in range(4)), batch_bytes=2 * size)
    monkeypatch.undo()
    zoo = Zoo.open(z)
    assert [e["id"] for e in zoo.instances()] == ["lenetlike-0", "lenetlike-1"]
    assert sorted(zoo.verify()) == [f"lenetlike-{i}.safetensors: not in the manifest (orphan)" for i in (2, 3)]
    zoo_format.write_instances(z, (_kw("lenetlike", s) for s in range(4)), batch_bytes=2 * size)
    zoo = Zoo.open(z)
    assert [e["id"] for e in zoo.instances()] == [f"lenetlike-{i}" for i in range(4)] and zoo.verify() == []
