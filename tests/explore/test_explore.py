"""The exploration API (netspace_fast/explore): interpolation (batched evaluation == per-network
evaluation, the ends, the raw-weight curve), unseen-architecture sampling, latent optimization,
export (plain PyTorch == batched evaluation) and PRep images, on one-epoch runs over tiny zoos."""

from __future__ import annotations

import csv
import json
import sys
import types

import pytest
import torch
from safetensors.torch import load_file, save_file

from netspace_fast import archs, batched_forward, data, explore
from netspace_fast.space import Space
from netspace_fast.zoo.format import Zoo

PNG = b"\x89PNG\r\n\x1a\n"


def _acc(module, x, y) -> float:
    """Per-network reference: one plain module forward."""
    with torch.no_grad():
        return float((module(x).argmax(-1) == y).float().mean())


def _test_images(run):
    x, y = data.tensors("digits", "test", seed=0)
    return x, y


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_interpolate_single(single_run, tmp_path):
    r = explore.interpolate(single_run, "lenetlike-0", "lenetlike-3", steps=7, out=tmp_path, chunk=3)
    assert [row["step"] for row in r.rows] == list(range(7))
    assert r.rows[0]["alpha"] == 0.0 and r.rows[-1]["alpha"] == 1.0
    rows = _csv(tmp_path / "interpolation.csv")
    assert list(rows[0]) == list(explore.INTERPOLATION_FIELDS) and len(rows) == 7
    assert (tmp_path / "interpolation.png").read_bytes()[:8] == PNG
    space = Space.load(single_run)
    zoo = Zoo.open(space.run.config["zoo"])
    x, y = _test_images(single_run)
    preps = zoo.preps("train", "lenetlike", 1024)[:1]
    preps = torch.cat([preps, zoo.preps("val", "lenetlike", 1024)])
    z = space.encode(preps)
    # batched evaluation == one network at a time, at a few steps (the ends included)
    for k in (0, 3, 6):
        zk = torch.lerp(z[0:1], z[1:2], k / 6)
        net = space.decoded_networks(zk)[0]
        assert r.rows[k]["embedding_acc"] == pytest.approx(_acc(net, x, y), abs=1e-6)
    # the ends are the decoded a and b
    ends = space.decoded_networks(z)
    assert r.rows[0]["embedding_acc"] == pytest.approx(_acc(ends[0], x, y), abs=1e-6)
    assert r.rows[-1]["embedding_acc"] == pytest.approx(_acc(ends[1], x, y), abs=1e-6)
    # raw-weight interpolation at alpha 0 / 1 is the input networks
    assert r.rows[0]["weights_acc"] == pytest.approx(_acc(zoo.model("lenetlike-0"), x, y), abs=1e-6)
    assert r.rows[-1]["weights_acc"] == pytest.approx(_acc(zoo.model("lenetlike-3"), x, y), abs=1e-6)
    assert r.input_acc["lenetlike-3"] == pytest.approx(r.rows[-1]["weights_acc"])
    assert all(row["predicted_class_id"] is None for row in r.rows)


def test_interpolate_multi_predicts_class_ids(multi_run, tmp_path):
    r = explore.interpolate(multi_run, "lenetlike-0", "resnet32-1", steps=3, out=tmp_path)
    space = Space.load(multi_run)
    zoo = Zoo.open(space.run.config["zoo"])
    ex = explore.open_explorer(multi_run)
    z = space.encode(ex.preps(["lenetlike-0", "resnet32-1"]))
    zs = torch.lerp(z[0:1], z[1:2], torch.tensor([0.0, 0.5, 1.0])[:, None])
    assert [row["predicted_class_id"] for row in r.rows] == space.class_ids(zs).tolist()
    assert [row["predicted_arch"] for row in r.rows] == [space.specs[c].name for c in space.class_ids(zs).tolist()]
    assert all(row["weights_acc"] is None for row in r.rows)  # two architectures: no raw-weight curve
    rows = _csv(tmp_path / "interpolation.csv")
    assert rows[0]["weights_acc"] == "" and rows[1]["predicted_arch"] == r.rows[1]["predicted_arch"]
    x, y = _test_images(multi_run)
    net = space.decoded_networks(zs[1:2])[0]  # read as its predicted architecture, as in the rows
    assert r.rows[1]["embedding_acc"] == pytest.approx(_acc(net, x, y), abs=1e-6)
    assert r.input_acc["resnet32-1"] == pytest.approx(_acc(zoo.model("resnet32-1"), x, y), abs=1e-6)


def test_interpolate_bad_input(single_run, multi_zoo, tmp_path):
    with pytest.raises(ValueError, match="no instance 'nope'"):
        explore.interpolate(single_run, "lenetlike-0", "nope", steps=3)
    with pytest.raises(ValueError, match="steps: expected an int >= 2"):
        explore.interpolate(single_run, "lenetlike-0", "lenetlike-1", steps=1)
    with pytest.raises(TypeError, match="steps"):
        explore.interpolate(single_run, "lenetlike-0", "lenetlike-1", steps=2.5)
    with pytest.raises(ValueError, match="not a run folder"):
        explore.interpolate(tmp_path / "nothing", "a", "b")


def _sdf_run(tmp_path):
    run = tmp_path / "sdf_run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"schema": 1, "command": "train sdf",
                                              "config": {"recipe": {"protocol": "sdf"}}}))
    return run


def test_interpolate_dispatches_sdf_runs(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("netspace_fast.sdf.mesh")
    fake.interpolate_shapes = lambda *a: calls.append(a) or "meshes"
    monkeypatch.setitem(sys.modules, "netspace_fast.sdf.mesh", fake)
    if "netspace_fast.sdf" not in sys.modules:
        monkeypatch.setitem(sys.modules, "netspace_fast.sdf", types.ModuleType("netspace_fast.sdf"))
    run = _sdf_run(tmp_path)
    assert explore.interpolate(run, "c1", "c2", steps=5, out=tmp_path / "o", device="cpu") == "meshes"
    assert calls == [(run, "c1", "c2", 5, tmp_path / "o", "cpu")]
    monkeypatch.setitem(sys.modules, "netspace_fast.sdf.mesh", None)  # the module missing: a clear error
    with pytest.raises(ValueError, match="SDF run"):
        explore.interpolate(run, "c1", "c2")
    with pytest.raises(ValueError, match="SDF run"):  # the other commands refuse SDF runs
        explore.export_network(run, tmp_path / "n.safetensors", id="c1")


def test_export_round_trip(single_run, multi_run, tmp_path):
    for run, nid in ((single_run, "lenetlike-3"), (multi_run, "resnet32-1")):
        info = explore.export_network(run, tmp_path / f"{nid}.safetensors", id=nid)
        path = info["path"]
        meta = explore.export.read_metadata(path)
        assert meta["arch"] == info["arch"] and meta["dataset"] == "digits"
        # plain PyTorch, no netspace code in the loading
        module = archs.build(meta["arch"], meta["dataset"], batchnorm=False)
        module.load_state_dict(load_file(path), strict=True)
        module.eval()
        space = Space.load(run)
        ex = explore.open_explorer(run)
        z = space.encode(ex.preps([nid]))
        decoded = space.decode(z)
        spec = archs.spec(info["arch"], "digits")
        x, _ = _test_images(run)
        with torch.no_grad():
            torch.testing.assert_close(module(x[:32]), batched_forward(spec, decoded, x[:32])[0], rtol=1e-4,
                                       atol=1e-5)
            torch.testing.assert_close(explore.load_network(path)(x[:8]), module(x[:8]))
        # an embedding file decodes to the same network
        save_file({"embedding": z[0].contiguous()}, str(tmp_path / "z.safetensors"))
        info2 = explore.export_network(run, tmp_path / "from_z.safetensors", embedding=tmp_path / "z.safetensors")
        a, b = load_file(path), load_file(info2["path"])
        assert info2["arch"] == info["arch"] and all(torch.equal(a[k], b[k]) for k in a)


def test_export_bad_input(single_run, tmp_path):
    with pytest.raises(ValueError, match="exactly one of id"):
        explore.export_network(single_run, tmp_path / "n.safetensors")
    with pytest.raises(ValueError, match="exactly one of id"):
        explore.export_network(single_run, tmp_path / "n.safetensors", id="lenetlike-0", embedding="z")
    save_file({"z": torch.zeros(3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="no tensor 'embedding'"):
        explore.export_network(single_run, tmp_path / "n.safetensors", embedding=tmp_path / "bad.safetensors")
    save_file({"embedding": torch.zeros(3)}, str(tmp_path / "short.safetensors"))
    with pytest.raises(ValueError, match=r"expected shape \(256,\)"):
        explore.export_network(single_run, tmp_path / "n.safetensors", embedding=tmp_path / "short.safetensors")
    (tmp_path / "x.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        explore.load_network(tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="not a network exported"):  # a safetensors file without our metadata
        explore.load_network(tmp_path / "bad.safetensors")


def test_optimize_improves_the_distillation_loss(single_run, tmp_path):
    r = explore.optimize(single_run, start="random", steps=30, lr=1e-2, eval_every=10, image_batch=32, seed=3,
                         out=tmp_path)
    assert [row["step"] for row in r.rows] == [0, 10, 20, 30]
    assert r.teacher == "lenetlike-2"  # no ResNet56: the training network of the best (measured) val accuracy
    losses = [row["distill_loss"] for row in r.rows]  # on a fixed set of training images
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.998 * losses[0], losses
    rows = _csv(tmp_path / "curve.csv")
    assert list(rows[0]) == list(explore.CURVE_FIELDS) and len(rows) == 4
    assert (tmp_path / "curve.png").read_bytes()[:8] == PNG
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["best"]["step"] == r.best["step"] and summary["teacher"] == r.teacher
    assert r.best["val_acc"] == max(row["val_acc"] for row in r.rows)
    # the saved network is the best evaluation's decoded network
    module = explore.load_network(tmp_path / "best.safetensors")
    x, y = _test_images(single_run)
    assert _acc(module, x, y) == pytest.approx(r.best["test_acc"], abs=1e-6)
    z = explore.load_embedding(tmp_path / "best_embedding.safetensors")
    torch.testing.assert_close(z, r.best_embedding.cpu())
    # the random start is seeded
    ex = explore.open_explorer(single_run)
    torch.testing.assert_close(explore.random_embedding(ex, 3), explore.random_embedding(ex, 3))
    assert not torch.equal(explore.random_embedding(ex, 3), explore.random_embedding(ex, 4))


def test_optimize_multi_towards_an_architecture(multi_run, tmp_path):
    r = explore.optimize(multi_run, start="lenetlike-0", arch="vanillacnn", steps=2, eval_every=1, image_batch=16,
                         out=tmp_path)
    assert r.teacher == "resnet56-6"  # the zoo's ResNet56, as in training
    assert all(row["predicted_arch"] in ("lenetlike", "vanillacnn", "resnet8", "resnet32") for row in r.rows)
    assert explore.load_network(tmp_path / "best.safetensors").spec.name == r.arch
    with pytest.raises(ValueError, match="arch: expected one of"):
        explore.optimize(multi_run, start="lenetlike-0", arch="resnet56", steps=1)
    with pytest.raises(ValueError, match="steps: expected a positive int"):
        explore.optimize(multi_run, steps=0)


def test_sample_unseen(multi_run, single_run, tmp_path):
    with pytest.raises(ValueError, match="Single-Architecture run; sample-unseen needs a Multi"):
        explore.sample_unseen(single_run)
    keep = ("vanillacnn", "resnet8", "lenetlike")  # lenetlike too: an untrained head rarely says the unseen ones
    r = explore.sample_unseen(multi_run, alphas=[0.25, 0.75], keep=keep, out=tmp_path)
    assert len(r.samples) == 2 and r.seen == ["lenetlike"]
    rows = _csv(tmp_path / "samples.csv")
    assert list(rows[0]) == list(explore.SAMPLE_FIELDS)
    table = _csv(tmp_path / "table.csv")
    assert list(table[0]) == list(explore.TABLE_FIELDS)
    assert [(t["arch"], t["source"]) for t in table] == [(n, s) for n in keep for s in ("decoded", "zoo")]
    assert (tmp_path / "unseen.png").read_bytes()[:8] == PNG
    space = Space.load(multi_run)
    ex = explore.open_explorer(multi_run)
    x, y = _test_images(multi_run)
    z = space.encode(ex.preps(["lenetlike-0", "resnet32-1"]))
    for s, t in zip(r.samples, (0.25, 0.75)):
        zt = torch.lerp(z[0:1], z[1:2], t)
        c = int(space.class_ids(zt)[0])
        assert s["predicted_class_id"] == c and s["kept"] == int(space.specs[c].name in keep)
        if s["kept"]:  # batched == per network
            assert s["test_acc"] == pytest.approx(_acc(space.decoded_networks(zt)[0], x, y), abs=1e-6)
        else:
            assert s["test_acc"] is None
    zoo = Zoo.open(space.run.config["zoo"])
    for t in r.table:
        if t["source"] == "zoo":
            real = [_acc(zoo.model(e["id"]), x, y) for e in zoo.instances(arch=t["arch"])]
            assert t["count"] == len(real) and t["mean"] == pytest.approx(sum(real) / len(real), abs=1e-6)
            assert t["min"] == pytest.approx(min(real), abs=1e-6) and t["max"] == pytest.approx(max(real), abs=1e-6)
        else:
            dec = [s["test_acc"] for s in r.samples if s["kept"] and s["predicted_arch"] == t["arch"]]
            assert t["count"] == len(dec)


def test_visualize(multi_run, tmp_path):
    info = explore.visualize(multi_run, "resnet32-1", tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG
    assert info["arch"] == "resnet32" and info["range"][0] < info["range"][1]
    x, y = _test_images(multi_run)
    zoo = Zoo.open(Space.load(multi_run).run.config["zoo"])
    assert info["input_acc"] == pytest.approx(_acc(zoo.model("resnet32-1"), x, y), abs=1e-6)
    with pytest.raises(ValueError, match="is a folder"):
        explore.visualize(multi_run, "resnet32-1", tmp_path)
