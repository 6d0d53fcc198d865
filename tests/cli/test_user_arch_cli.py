"""A user architecture through the whole pipeline from the command line, on digits (tiny presets):
``zoo train --arch package.module:factory``, a Single space, eval, every explore command that
applies, export; the zoo and the run reopen wherever the factory imports, and say in one line when
it does not; a user architecture next to the built-in ones in a Multi space (the ClassId head grows).
The architecture is examples/my_vgg.py (README "Your own architecture")."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from netspace_fast import archs
from netspace_fast.cli import cli
from netspace_fast.zoo.format import Zoo, init_zoo, write_instance

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FACTORY = "my_vgg:vgg_gelu"


def run(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 0, r.output + (repr(r.exception) if r.exception else "")
    return r.output


@pytest.fixture(scope="module")
def on_path():
    sys.path.insert(0, str(EXAMPLES))
    yield
    while str(EXAMPLES) in sys.path:
        sys.path.remove(str(EXAMPLES))
    sys.modules.pop("my_vgg", None)
    archs._REGISTRY.pop("vgg_gelu", None)
    archs._spec_cached.cache_clear()


@pytest.fixture(scope="module")
def user_zoo(on_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("uzoo") / "zoo"
    text = run("zoo", "train", "--preset", "digits-tiny", "--arch", FACTORY, "--out", out, "--no-progress")
    assert "done" in text
    return out


def test_zoo_records_the_architecture(user_zoo):
    cfg = Zoo.open(user_zoo).config
    assert cfg["archs"] == [["vgg_gelu", 1, 1, 0]]
    rec = cfg["user_archs"]["vgg_gelu"]
    assert rec["factory"] == FACTORY and rec["spec"] == archs.spec_hash(archs.spec("vgg_gelu", "digits"))
    zoo = Zoo.open(user_zoo)
    assert {e["architecture"] for e in zoo.instances()} == {"vgg_gelu"}
    import my_vgg

    for e in zoo.instances():  # the user's own module takes the zoo's state dicts strictly
        my_vgg.vgg_gelu().load_state_dict(zoo.state_dict(e["id"]), strict=True)
    assert "vgg_gelu [digits]: 2 instances" in run("zoo", "info", user_zoo)


def test_single_space_eval_explore_export(user_zoo, tmp_path):
    space = tmp_path / "space"
    run("train", "single", "--zoo", user_zoo, "--out", space, "--preset", "digits-tiny-single", "--no-progress")
    out = run("eval", space, "--split", "val")
    assert "vgg_gelu: 1 networks" in out
    ids = [e["id"] for e in Zoo.open(user_zoo).instances()]
    run("interpolate", space, "--a", ids[0], "--b", ids[1], "--steps", "3", "--out", tmp_path / "interp")
    assert (tmp_path / "interp" / "interpolation.csv").is_file()
    run("optimize", space, "--from", ids[0], "--steps", "3", "--out", tmp_path / "opt", "--no-progress")
    assert (tmp_path / "opt" / "best.safetensors").is_file()
    run("visualize", space, "--id", ids[0], "--out", tmp_path / "v.png")
    run("audit", space, "--out", tmp_path / "audit", "--split", "val")
    assert (tmp_path / "audit" / "audit.csv").is_file()
    run("export", space, "--id", ids[0], "--out", tmp_path / "dec.safetensors")
    state = load_file(tmp_path / "dec.safetensors")
    net = archs.SpecNet(archs.spec("vgg_gelu", "digits"), batchnorm=False)
    net.load_state_dict(state, strict=True)  # the BN-free (folded) form of the user's network
    assert torch.isfinite(net(torch.randn(2, 3, 32, 32))).all()


def test_reopening_without_the_factory_is_one_clear_line(user_zoo, tmp_path):
    saved = archs._REGISTRY.pop("vgg_gelu")
    mod = sys.modules.pop("my_vgg")
    while str(EXAMPLES) in sys.path:
        sys.path.remove(str(EXAMPLES))
    try:
        archs._spec_cached.cache_clear()
        with pytest.raises(ValueError) as e:
            Zoo.open(user_zoo)
        msg = str(e.value)
        assert "architecture 'vgg_gelu' comes from the factory 'my_vgg:vgg_gelu'" in msg
        assert "PYTHONPATH" in msg and "\n" not in msg
        r = CliRunner().invoke(cli, ["zoo", "info", str(user_zoo)])
        assert r.exit_code != 0 and "PYTHONPATH" in r.output
    finally:
        sys.path.insert(0, str(EXAMPLES))
        sys.modules["my_vgg"] = mod
        archs._REGISTRY["vgg_gelu"] = saved
        archs._spec_cached.cache_clear()
    # a factory whose network changed since the zoo was made is refused
    manifest = json.loads((user_zoo / "manifest.json").read_text())
    manifest["config"]["user_archs"]["vgg_gelu"]["spec"] = "0" * 16
    changed = tmp_path / "changed"
    changed.mkdir()
    (changed / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="has changed since it was recorded"):
        Zoo.open(changed)


def test_unsupported_factory_is_refused_before_training(on_path, tmp_path, monkeypatch):
    import types

    from torch import nn

    mod = types.ModuleType("bad_nets_for_tests")

    def with_norm():
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm([4, 30, 30]), nn.Flatten(), nn.Linear(3600, 10))

    with_norm.__module__ = mod.__name__
    mod.with_norm = with_norm
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    r = CliRunner().invoke(cli, ["zoo", "train", "--preset", "digits-tiny", "--arch", "bad_nets_for_tests:with_norm",
                                 "--out", str(tmp_path / "z"), "--no-progress"])
    assert r.exit_code != 0 and "1: nn.LayerNorm is not supported" in r.output
    assert not (tmp_path / "z").exists()
    archs._REGISTRY.pop("with_norm", None)


def test_multi_space_with_a_user_architecture_next_to_built_in_ones(on_path, tmp_path, monkeypatch):
    """The zoo holds LeNetLike, ResNet32 and the user's VGG (and the ResNet56 teacher): the space's
    ClassIds are the four built-in ones, then the VGG's (4); the ClassId head has 5 outputs."""
    from netspace_fast.space import presets as space_presets

    # the tiny Multi preset, its epoch one step on 128 images (the preset's: 3 steps on 512 each, 16 of
    # this test's 35 s): the ClassId bookkeeping checked here does not depend on how long it trains
    base = space_presets.SPACE_PRESETS["digits-tiny-multi"]
    monkeypatch.setitem(space_presets.SPACE_PRESETS, "digits-tiny-multi",
                        space_presets.SpacePreset(**{**base.__dict__, "image_batch": 128, "images_per_epoch": 128}))
    name = archs.resolve(FACTORY)
    zoo = tmp_path / "zoo"
    init_zoo(zoo, {"seed": 0, "dataset": "digits", "user_archs": {
        name: {"factory": FACTORY, "spec": archs.spec_hash(archs.spec(name, "digits"))}}})
    torch.manual_seed(0)
    for i, (arch, split) in enumerate([("lenetlike", "train"), ("resnet32", "train"), (name, "train"),
                                       (name, "val"), ("lenetlike", "val"), ("resnet56", "test")]):
        write_instance(zoo, archs.build(arch, "digits").eval(), id=f"{arch}-{i}", arch=arch, dataset="digits",
                       protocol="multi", seed=i, epoch=0, acc={"train": None, "val": None, "test": None},
                       split=split)
    run("train", "multi", "--zoo", zoo, "--out", tmp_path / "run", "--preset", "digits-tiny-multi", "--epochs", "1",
        "--no-progress")
    recipe = json.loads((tmp_path / "run" / "run.json").read_text())["config"]["recipe"]
    assert recipe["archs"][-1] == name and len(recipe["archs"]) == 5
    from netspace_fast.space import Space

    space = Space.load(tmp_path / "run")
    assert [s.name for s in space.specs][-1] == name
    assert space.decoder.arch_classifier.out_features == 5
    out = run("eval", tmp_path / "run", "--split", "val", "--csv", tmp_path / "rows.csv")
    assert f"{name}-3,{name},4," in (tmp_path / "rows.csv").read_text()
    assert "ClassId accuracy" in out
    # latent optimization towards the user architecture's ClassId, from a LeNetLike's embedding
    run("optimize", tmp_path / "run", "--from", "lenetlike-0", "--arch", FACTORY, "--steps", "2",
        "--out", tmp_path / "opt", "--no-progress")
    assert json.loads((tmp_path / "opt" / "summary.json").read_text())["arch"] == name  # the wanted one
    run("sample-unseen", tmp_path / "run", "--out", tmp_path / "unseen", "--alphas", "0.5", "--no-progress")
    assert (tmp_path / "unseen" / "samples.csv").is_file()
    run("interpolate", tmp_path / "run", "--a", f"{name}-2", "--b", "lenetlike-0", "--steps", "3",
        "--out", tmp_path / "interp")

