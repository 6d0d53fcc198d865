"""NetSpace runs (netspace_fast/space/train.py, run.py, evaluate.py and the CLI): training on small
digits zoos, the run folder (safetensors + JSON), resume after a real SIGKILL with bit-identical
weights, evaluation rows and CSV, and the bad inputs the issue names."""

from __future__ import annotations

import dataclasses

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from netspace_fast import archs
from netspace_fast.cli import cli
from netspace_fast.space import presets as space_presets
from netspace_fast.space.evaluate import spearman, summarize
from netspace_fast.space.train import train_space
from netspace_fast.zoo import train_zoo
from netspace_fast.zoo.format import init_zoo, write_instance


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    """2 LeNetLike on digits (train 1, val 1), trained 3 epochs."""
    path = tmp_path_factory.mktemp("zoo") / "z"
    train_zoo(path, "digits-tiny", progress=False)
    return path


def _run_cli(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    return r.exit_code, r.output


def test_single_run_folder_and_eval(tiny_zoo, tmp_path):
    code, out = _run_cli("train", "single", "--zoo", tiny_zoo, "--out", tmp_path / "run", "--preset",
                         "digits-tiny-single", "--epochs", "2", "--no-progress")
    assert code == 0, out
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["best.json", "best.safetensors", "ckpt-00002.safetensors", "run.json", "state.json"]
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["epoch"] == 2 and len(state["history"]) == 2 and "val" in state["history"][-1]
    tensors = load_file(tmp_path / "run" / "ckpt-00002.safetensors")  # no pickle anywhere
    assert any(k.startswith("encoder.") for k in tensors) and any(k.startswith("opt.") for k in tensors)
    code, out = _run_cli("eval", tmp_path / "run", "--split", "all", "--csv", tmp_path / "rows.csv")
    assert code == 0, out
    assert "network,arch,class_id,predicted_class_id,input_acc,decoded_acc" in out and "spearman" in out
    rows = list(csv.DictReader(open(tmp_path / "rows.csv")))
    assert [r["network"] for r in rows] == ["lenetlike-000", "lenetlike-001"]
    assert all(0.0 <= float(r["input_acc"]) <= 1.0 and 0.0 <= float(r["decoded_acc"]) <= 1.0 for r in rows)
    # no test networks in this zoo: one clear error
    code, out = _run_cli("eval", tmp_path / "run", "--split", "test")
    assert code != 0 and "no networks" in out


def _train_cmd(zoo, out):
    return [sys.executable, "-m", "netspace_fast.cli", "train", "single", "--zoo", str(zoo), "--out", str(out),
            "--preset", "digits-tiny-single", "--no-progress"]


def test_sigkill_then_rerun_is_bit_identical(tiny_zoo, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(_train_cmd(tiny_zoo, tmp_path / "full"), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    killed = subprocess.run(_train_cmd(tiny_zoo, tmp_path / "cut"), capture_output=True, text=True, timeout=600,
                            env=dict(env, NETSPACE_TEST_SIGKILL_AFTER_EPOCH="1"))
    assert killed.returncode == -9
    assert json.loads((tmp_path / "cut" / "state.json").read_text())["epoch"] == 1
    r = subprocess.run(_train_cmd(tiny_zoo, tmp_path / "cut"), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    a = load_file(tmp_path / "full" / "ckpt-00003.safetensors")
    b = load_file(tmp_path / "cut" / "ckpt-00003.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == sorted(p.name for p in (tmp_path / "full").iterdir())


def test_a_run_resumes_when_only_its_presets_description_was_reworded(tiny_zoo, tmp_path, monkeypatch):
    """A newer release may word a preset's description differently: the run resumes (keeping the words it
    was started with); any value of the recipe changed is still refused."""
    run = tmp_path / "run"
    train_space(run, tiny_zoo, "single", "digits-tiny-single", epochs=1, progress=False)
    started = json.loads((run / "run.json").read_text())
    preset = space_presets.SPACE_PRESETS["digits-tiny-single"]
    monkeypatch.setitem(space_presets.SPACE_PRESETS, "digits-tiny-single",
                        dataclasses.replace(preset, description=preset.description + " (reworded)"))
    train_space(run, tiny_zoo, "single", "digits-tiny-single", epochs=1, progress=False)
    assert json.loads((run / "run.json").read_text()) == started
    monkeypatch.setitem(space_presets.SPACE_PRESETS, "digits-tiny-single", dataclasses.replace(preset, lr=preset.lr * 2))
    with pytest.raises(ValueError, match=r"another configuration.*recipe\.lr"):
        train_space(run, tiny_zoo, "single", "digits-tiny-single", epochs=1, progress=False)


def test_refusals(tiny_zoo, tmp_path):
    run = tmp_path / "run"
    train_space(run, tiny_zoo, "single", "digits-tiny-single", epochs=1, progress=False)
    with pytest.raises(ValueError, match="another configuration"):
        train_space(run, tiny_zoo, "single", "digits-tiny-single", epochs=1, seed=5, progress=False)
    with pytest.raises(ValueError, match="belongs to another command"):
        train_space(run, tiny_zoo, "multi", "digits-tiny-multi", epochs=1, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="is not a run folder"):
        train_space(tmp_path / "other", tiny_zoo, "single", "digits-tiny-single", progress=False)
    with pytest.raises(ValueError, match="dataset"):
        train_space(tmp_path / "r2", tiny_zoo, "single", "cifar10-single", progress=False)
    with pytest.raises(ValueError, match="needs a resnet56 teacher"):
        train_space(tmp_path / "r3", tiny_zoo, "multi", "digits-tiny-multi", progress=False)
    with pytest.raises(ValueError, match="is a single preset"):
        train_space(tmp_path / "r4", tiny_zoo, "multi", "digits-tiny-single", progress=False)
    code, out = _run_cli("train", "single", "--zoo", tiny_zoo, "--out", run, "--preset", "digits-tiny-single",
                         "--epochs", "1", "--seed", "7")
    assert code == 1 and out.startswith("error: ") and "Traceback" not in out


@pytest.fixture(scope="module")
def multi_zoo(tmp_path_factory):
    """Untrained networks of the four architectures (train: one each; val: LeNetLike, ResNet32) and a
    ResNet56 teacher, written with the zoo format's own writer."""
    path = tmp_path_factory.mktemp("mzoo") / "z"
    init_zoo(path, {"seed": 0})
    torch.manual_seed(0)
    specs = [("lenetlike", "train"), ("vanillacnn", "train"), ("resnet8", "train"), ("resnet32", "train"),
             ("lenetlike", "val"), ("resnet32", "val"), ("resnet56", "test")]
    for i, (name, split) in enumerate(specs):
        write_instance(path, archs.build(name, "digits").eval(), id=f"{name}-{i}", arch=name, dataset="digits",
                       protocol="multi", seed=i, epoch=0, acc={"train": None, "val": None, "test": None}, split=split)
    return path


def test_multi_run(multi_zoo, tmp_path, monkeypatch):
    preset = space_presets.SPACE_PRESETS["digits-tiny-multi"]
    monkeypatch.setitem(space_presets.SPACE_PRESETS, "digits-tiny-multi",
                        space_presets.SpacePreset(**{**preset.__dict__, "epochs": 1, "clip_grad": 0.5,
                                                     "images_per_epoch": 256, "image_batch": 128}))  # 2 steps
    clipped = []
    real_clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda params, max_norm, *a, **k: clipped.append(max_norm) or real_clip(params, max_norm, *a, **k))
    run = train_space(tmp_path / "run", multi_zoo, "multi", "digits-tiny-multi", progress=False)
    assert clipped and set(clipped) == {0.5}  # the preset's clip_grad, before every step
    state = run.state()
    val = state["history"][-1]["val"]
    assert set(val["per_arch"]) <= {"lenetlike", "resnet32"} and 0.0 <= val["class_id_acc"] <= 1.0
    code, out = _run_cli("eval", tmp_path / "run", "--split", "val")
    assert code == 0, out
    assert "ClassId accuracy" in out


def test_summary_and_spearman():
    rows = [{"network": str(i), "arch": "a", "class_id": 1, "predicted_class_id": p, "input_acc": x,
             "decoded_acc": y} for i, (p, x, y) in enumerate([(1, 0.5, 0.4), (0, 0.7, 0.8), (1, 0.9, 0.85)])]
    s = summarize(rows)
    assert s["mean_abs_gap"] == pytest.approx((0.1 + 0.1 + 0.05) / 3)
    assert s["spearman"] == pytest.approx(1.0) and s["class_id_acc"] == pytest.approx(2 / 3)
    assert spearman([0.1, 0.2, 0.3], [0.3, 0.2, 0.1]) == pytest.approx(-1.0)
    assert spearman([0.1], [0.2]) != spearman([0.1], [0.2])  # NaN: too few values


def test_space_python_api(tiny_zoo, tmp_path):
    """netspace_fast.space.Space: encode, decode, decoded networks as modules, evaluate."""
    import netspace_fast as nf
    from netspace_fast import batched_forward, data

    train_space(tmp_path / "run", tiny_zoo, "single", "digits-tiny-single", epochs=1, progress=False)
    space = nf.space.Space.load(tmp_path / "run")
    from netspace_fast.zoo.format import Zoo

    preps = Zoo.open(tiny_zoo).preps("train", "lenetlike", width=1024)
    z = space.encode(preps)
    decoded = space.decode(z)
    assert z.shape == (1, 256) and decoded.shape == preps.shape
    nets = space.decoded_networks(z)
    x, _ = data.tensors("digits", "test")
    with torch.no_grad():
        torch.testing.assert_close(nets[0](x[:16]), batched_forward(space.specs[0], decoded, x[:16])[0],
                                   rtol=1e-4, atol=1e-5)
    rows = space.evaluate("val")
    assert [r["network"] for r in rows] == ["lenetlike-001"]


class _FakeWriter:
    made: list = []

    def __init__(self, logdir):
        self.logdir, self.scalars, self.closed = logdir, [], False
        _FakeWriter.made.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_tensorboard_scalars(tiny_zoo, tmp_path, monkeypatch):
    import types

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = _FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    _FakeWriter.made.clear()
    train_space(tmp_path / "run", tiny_zoo, "single", "digits-tiny-single", epochs=2, progress=False,
                tensorboard=tmp_path / "tb")
    (w,) = _FakeWriter.made
    assert w.closed and w.logdir == str(tmp_path / "tb")
    assert [s for t, _, s in w.scalars if t == "train/loss"] == [1, 2]
    assert [s for t, _, s in w.scalars if t == "val/mean_abs_gap"] == [1, 2]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # the package missing: one clear error
    with pytest.raises(ValueError, match="needs the 'tensorboard' package"):
        train_space(tmp_path / "run2", tiny_zoo, "single", "digits-tiny-single", progress=False,
                    tensorboard=tmp_path / "tb2")
    assert not (tmp_path / "run2").exists()


def test_progress_bar_on_a_terminal(tiny_zoo, tmp_path, monkeypatch):
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    err = Tty()
    monkeypatch.setattr(sys, "stderr", err)
    train_space(tmp_path / "run", tiny_zoo, "single", "digits-tiny-single", epochs=2, progress=True)
    text = err.getvalue()
    assert "NetSpace single" in text and "2/2" in text and "mean |gap|" in text
    assert "epoch 1/2" not in text  # the bar replaces the per-epoch lines


def test_progress_lines_when_not_a_terminal(tiny_zoo, tmp_path, capsys):
    train_space(tmp_path / "run", tiny_zoo, "single", "digits-tiny-single", epochs=2, progress=True)
    err = capsys.readouterr().err
    assert "epoch 1/2 loss" in err and "epoch 2/2 loss" in err


def test_space_presets_follow_the_issue():
    """The paper's recipes: Single meta-batch 8; Multi 2; the unseen presets one (LeNetLike, ResNet32) pair a
    step, as the original's NetsDatasetMissing; the paper's Adam lr 1e-4 and exact configuration (no `space`
    overrides: E = 4096, width 10,000, the original's bias init)."""
    P = space_presets.SPACE_PRESETS
    for name, p in P.items():
        expected = 8 if p.protocol == "single" else 2
        if "tiny" not in name:
            assert p.meta_batch == expected, name
        if name.endswith("-unseen"):
            assert p.pairs and p.train_archs == ("lenetlike", "resnet32"), name
        if name.startswith(("cifar10", "tinyimagenet")):
            assert p.lr == 1e-4 and p.width == 10_000 and p.space == {} and p.clip_grad == 0, name
        if p.protocol == "multi":
            assert p.archs == ("lenetlike", "vanillacnn", "resnet8", "resnet32"), name
    assert {"digits-single", "digits-multi", "digits-unseen", "cifar10-unseen"} <= set(P)
    # every dataset a zoo can hold (an imported one too) has a Single preset its zoos default to
    from netspace_fast import data

    for ds in data.DATASETS:
        name = space_presets.default_preset("single", ds)
        assert P[name].dataset == ds and P[name].protocol == "single", ds
    assert P["mnist-single"] == dataclasses.replace(P["fmnist-single"], description=P["mnist-single"].description,
                                                    dataset="mnist")


def test_lr_milestones_are_a_function_of_the_epoch():
    """lr_milestones: x0.1 after each milestone epoch, computed from the epoch alone (so a resumed run
    continues with the same rate); a recipe recorded before the field existed reads as none."""
    p = space_presets.SpacePreset("t", "digits", "single", 1024, epochs=10, meta_batch=8, image_batch=8, lr=1e-3,
                                  lr_milestones=(4, 7))
    assert [round(p.lr_at(e), 12) for e in (1, 4, 5, 7, 8, 10)] == [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5]
    assert space_presets.SpacePreset.from_json(p.to_json()) == p
    old = {k: v for k, v in p.to_json().items() if k != "lr_milestones"}
    assert space_presets.SpacePreset.from_json(old).lr_milestones == ()


def test_lr_schedules():
    """Warm-up, cosine and exponential decay: a function of the epoch and the run's length alone; the
    scale layer's rate on the same schedule; recorded only where set (older records stay equal)."""
    import math

    P = space_presets.SpacePreset
    base = dict(description="t", dataset="digits", protocol="single", width=1024, epochs=11, meta_batch=8,
                image_batch=8, lr=1e-3)
    cos = P(**base, lr_schedule="cosine", lr_final=0.1, warmup_epochs=2, prep_lr=5e-3)
    # warm-up: epoch 1 half the rate, epoch 2 all of it; then cosine from 1 (epoch 3) to 0.1 (epoch 11)
    got = [cos.lr_factor(e) for e in range(1, 12)]
    want = [0.5, 1.0] + [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (e - 3) / 8)) for e in range(3, 12)]
    assert got == pytest.approx(want, abs=1e-12) and got[-1] == pytest.approx(0.1)
    assert cos.lr_at(6) == pytest.approx(1e-3 * got[5]) and cos.prep_lr_at(6) == pytest.approx(5e-3 * got[5])
    assert cos.lr_factor(21, epochs=21) == pytest.approx(0.1)  # a run of --epochs 21 ends at lr_final too
    exp = P(**base, lr_schedule="exp", lr_final=0.01)
    assert [exp.lr_factor(e) for e in (1, 6, 11)] == pytest.approx([1.0, 0.1, 0.01])
    assert P(**base).prep_lr_at(3) == 1e-3  # no prep_lr: the scale layer at lr
    for q in (cos, exp):
        assert P.from_json(q.to_json()) == q
    assert not {"lr_schedule", "lr_final", "warmup_epochs", "prep_lr"} & set(P(**base).to_json())
    for bad, msg in (({"lr_schedule": "linear"}, "lr_schedule: expected one of"),
                     ({"lr_schedule": "exp"}, r"lr_final: expected a fraction in \(0, 1\], got 0.0"),
                     ({"lr_final": 2.0}, "lr_final: expected a fraction in"),
                     ({"warmup_epochs": -1}, "warmup_epochs: expected an int >= 0"),
                     ({"prep_lr": -1.0}, "prep_lr: expected a rate >= 0")):
        with pytest.raises(ValueError, match=msg):
            P(**base, **bad)


def test_best_weights_weigh_the_class_id_accuracy_where_the_preset_asks(multi_zoo, tmp_path, monkeypatch):
    """class_id_weight w: the best weights are the validation's with the largest mean decoded accuracy +
    w x ClassId accuracy; w = 0 (the original's rule): the largest mean decoded accuracy alone. The
    validations' figures are scripted, the training loop is real."""
    from netspace_fast.space import train as train_mod

    P = space_presets.SpacePreset
    Single = P("t", "digits", "single", 1024, epochs=1, meta_batch=1, image_batch=8)
    gap = {"mean_abs_gap": 0.03, "mean_decoded_acc": 0.9, "class_id_acc": 0.0}
    assert train_mod._score(gap, dataclasses.replace(Single, class_id_weight=1.0)) == -0.03
    with pytest.raises(ValueError, match="class_id_weight: expected a weight >= 0, got -1.0"):
        dataclasses.replace(Single, class_id_weight=-1.0)
    # (mean decoded acc, ClassId acc) per epoch: epoch 2 has every ClassId right but is 20 points worse than
    # epoch 1; epoch 3 every ClassId right and 5 points below epoch 4, which reads one of 8 wrong
    scripted = [(0.80, 0.875), (0.60, 1.0), (0.78, 1.0), (0.83, 0.875)]
    for w, want in ((1.0, 3), (0.0, 4), (0.1, 4), (10.0, 3)):
        calls = iter(scripted)

        def summary(rows, calls=calls):
            acc, cid = next(calls)
            return {"mean_decoded_acc": acc, "class_id_acc": cid, "mean_abs_gap": 0.1, "networks": len(rows)}

        monkeypatch.setattr(train_mod, "summarize", summary)
        name = f"t-best-{w}"
        monkeypatch.setitem(space_presets.SPACE_PRESETS, name, dataclasses.replace(
            space_presets.SPACE_PRESETS["digits-tiny-multi"], epochs=4, val_every=1, image_batch=256,
            class_id_weight=w))
        run = train_space(tmp_path / name, multi_zoo, "multi", name, progress=False)
        best = json.loads((run.path / "best.json").read_text())
        assert best["epoch"] == want, (w, best)
        assert best["score"] == pytest.approx(scripted[want - 1][0] + w * scripted[want - 1][1])
        assert json.loads((run.path / "run.json").read_text())["config"]["recipe"].get("class_id_weight", 0.0) == w


def test_the_scale_layer_gets_its_own_rate():
    """With prep_lr the scale layer is Adam's second group (and only then: older runs' optimizer state
    has one group)."""
    from netspace_fast.space.nets import Decoder, Encoder, SpaceConfig
    from netspace_fast.space.train import param_groups

    P = space_presets.SpacePreset
    c = SpaceConfig(height=4, width=1024, **space_presets._TINY)
    enc, dec = Encoder(c), Decoder(c)
    base = dict(description="t", dataset="digits", protocol="single", width=1024, epochs=3, meta_batch=2,
                image_batch=8, lr=1e-3)
    (one,) = param_groups(enc, dec, P(**base))
    assert len(one["params"]) == len(list(enc.parameters())) + len(list(dec.parameters()))
    rest, scale = param_groups(enc, dec, P(**base, prep_lr=1e-2))
    assert {id(t) for t in scale["params"]} == {id(t) for t in dec.scalelayer.parameters()} and scale["lr"] == 1e-2
    assert len(rest["params"]) + len(scale["params"]) == len(one["params"]) and rest["lr"] == 1e-3


def test_bad_zoos_and_sizes(tiny_zoo, multi_zoo, tmp_path):
    """NetSpace training's bad input, each one clear line: a zoo whose architectures do not fit the preset, an
    empty split, and weights of another PRep size."""
    from netspace_fast.space.run import Run
    from netspace_fast.space.train import build_space, load_space_data

    single = space_presets.SPACE_PRESETS["digits-tiny-single"]
    with pytest.raises(ValueError, match="a Single-Architecture run needs one architecture in the train split"):
        load_space_data(multi_zoo, single)
    multi = space_presets.SPACE_PRESETS["digits-tiny-multi"]
    with pytest.raises(ValueError, match=r"zoo: split 'test' of .* has no networks of"):
        load_space_data(multi_zoo, multi, splits=("test",))  # the test split holds only the teacher
    run = train_space(tmp_path / "run", tiny_zoo, "single", "digits-tiny-single", epochs=1, progress=False)
    enc, dec = build_space(single, 12, 0)  # PReps of 12 rows, the run's are 64
    with pytest.raises(ValueError, match=r"checkpoint: the (encoder|decoder)'s weights do not fit this configuration") as e:
        Run.open(run.path).load_weights(enc, dec)
    assert "\n" not in str(e.value)


def test_digits_unseen_meta_batch_can_form_an_l_gamma_pair():
    """The unseen experiment decodes VanillaCNN / ResNet8 from interpolations only because L_gamma
    trains the ClassId head on interpolated LeNetLike-ResNet32 embeddings: a meta-batch must be able to
    hold both (at meta-batch 1 the plan is always empty)."""
    from netspace_fast.space.losses import gamma_plan

    p = space_presets.SPACE_PRESETS["digits-unseen"]
    assert p.meta_batch >= 2
    assert [t for _, _, _, t in gamma_plan([0, 3][:p.meta_batch], len(p.archs))] == [1, 2]
    assert gamma_plan([0], len(p.archs)) == []


def test_arch_pairs_match_the_original():
    """The unseen-architecture meta-batches as the original's NetsDatasetMissing forms them: A[i] with
    B[i] in zoo order, then the larger group's leftovers two by two (an odd one out dropped)."""
    from netspace_fast.space.train import arch_pairs

    ids = torch.tensor([0, 0, 3, 3, 3, 3, 3, 0])
    assert arch_pairs(ids) == [(0, 2), (1, 3), (7, 4), (5, 6)]
    assert arch_pairs(torch.tensor([3, 0, 0, 0, 0])) == [(1, 0), (2, 3)]  # leftover 4 has no partner
    assert arch_pairs(torch.tensor([0, 3])) == [(0, 1)]
    with pytest.raises(ValueError, match="exactly two architectures"):
        arch_pairs(torch.tensor([0, 1, 3]))


def test_unseen_preset_trains_on_pairs_of_its_train_archs(multi_zoo, tmp_path, monkeypatch):
    """train_archs leaves the zoo's other training networks out; pairs: every step's meta-batch is one
    LeNetLike and one ResNet32; images_per_epoch: the steps of an epoch; val_images: the images
    validation uses."""
    from netspace_fast.space import train as space_train

    base = space_presets.SPACE_PRESETS["digits-tiny-multi"]
    preset = space_presets.SpacePreset(**{**base.__dict__, "epochs": 2, "image_batch": 64, "images_per_epoch": 192,
                                          "val_images": 100, "pairs": True,
                                          "train_archs": ("lenetlike", "resnet32"), "kd_temperature": 2.0})
    monkeypatch.setitem(space_presets.SPACE_PRESETS, "digits-tiny-unseen", preset)
    seen_nets, val_sizes, temperatures = [], [], []
    real_loss, real_eval = space_train.rank_loss, space_train.evaluate_networks

    def spy_loss(enc, dec, protocol, specs, preps, class_ids, nets, *a, **k):
        seen_nets.append(sorted(class_ids[nets].tolist()))
        temperatures.append(k["T"])
        return real_loss(enc, dec, protocol, specs, preps, class_ids, nets, *a, **k)

    def spy_eval(enc, dec, groups, x, y, specs, **kw):
        val_sizes.append(len(y))
        return real_eval(enc, dec, groups, x, y, specs, **kw)

    monkeypatch.setattr(space_train, "rank_loss", spy_loss)
    monkeypatch.setattr(space_train, "evaluate_networks", spy_eval)
    run = train_space(tmp_path / "run", multi_zoo, "multi", "digits-tiny-unseen", progress=False)
    assert seen_nets == [[0, 3]] * 6  # 192 images / 64 a step, 2 epochs; one LeNetLike + one ResNet32 each
    assert val_sizes == [100, 100] and temperatures == [2.0] * 6  # the preset's distillation temperature
    recipe = run.config["recipe"]
    assert recipe["train_archs"] == ["lenetlike", "resnet32"] and recipe["pairs"] is True
    assert space_presets.SpacePreset.from_json(recipe) == preset
    d = space_train.load_space_data(multi_zoo, preset)
    assert [g.spec.name for g in d.groups["train"]] == ["lenetlike", "resnet32"]
    assert [g.spec.name for g in d.groups["val"]] == ["lenetlike", "resnet32"]  # val keeps every architecture


def test_slope_intercept_and_span_ratio():
    """summarize's least-squares fit of decoded on input accuracy: an exact line comes back; decoded
    networks that collapse to one accuracy give slope 0 and span ratio 0."""
    from netspace_fast.space.evaluate import fit_line

    x = [0.4, 0.55, 0.7, 0.9]
    slope, intercept, span = fit_line(x, [0.5 * v + 0.1 for v in x])
    assert slope == pytest.approx(0.5) and intercept == pytest.approx(0.1) and span == pytest.approx(0.5)
    assert fit_line(x, [0.8] * 4)[0] == 0 and fit_line(x, [0.8] * 4)[2] == 0
    assert all(v != v for v in fit_line([0.5, 0.5], [0.1, 0.2]))  # no spread in x: NaN
    rows = [{"network": str(i), "arch": "lenetlike", "class_id": None, "predicted_class_id": None,
             "input_acc": a, "decoded_acc": 2 * a - 0.3} for i, a in enumerate(x)]
    s = summarize(rows)
    assert s["slope"] == pytest.approx(2.0) and s["intercept"] == pytest.approx(-0.3)
    assert s["per_arch"]["lenetlike"]["mean_abs_gap"] == pytest.approx(s["mean_abs_gap"])


def test_augment_images_is_the_zoo_augmentation():
    """NetSpace's training-image augmentation is the zoo's: the same draws from the same generator give
    the reference crop + flip (padding S // 8 with normalized black)."""
    from netspace_fast.space.train import augment_images
    from netspace_fast.zoo.augment import NORMALIZED_BLACK, random_crop_flip

    x = torch.randn(6, 3, 32, 32)
    got = augment_images(x, torch.Generator().manual_seed(3))
    ref = random_crop_flip(x, 4, torch.Generator().manual_seed(3), True, list(NORMALIZED_BLACK))
    assert torch.equal(got, ref) and not torch.equal(got, x)


def test_augmented_multi_training_distills_on_the_augmented_images(multi_zoo, tmp_path, monkeypatch):
    """augment: every step's images are augmented and the teacher runs on those very images (not the
    precomputed logits of the plain ones); the paper presets augment, the CPU presets state they do not."""
    from netspace_fast.space import train as space_train

    base = space_presets.SPACE_PRESETS["digits-tiny-multi"]
    monkeypatch.setitem(space_presets.SPACE_PRESETS, "digits-tiny-aug",
                        space_presets.SpacePreset(**{**base.__dict__, "epochs": 1, "image_batch": 96,
                                                     "images_per_epoch": 192, "augment": True}))  # 2 steps
    seen = []
    real = space_train.rank_loss

    def spy(enc, dec, protocol, specs, preps, class_ids, nets, x, y, teacher_logits, idx, *a, **k):
        seen.append((x[idx].clone(), teacher_logits[idx].clone()))
        return real(enc, dec, protocol, specs, preps, class_ids, nets, x, y, teacher_logits, idx, *a, **k)

    monkeypatch.setattr(space_train, "rank_loss", spy)
    train_space(tmp_path / "run", multi_zoo, "multi", "digits-tiny-aug", progress=False)
    d = space_train.load_space_data(multi_zoo, space_presets.SPACE_PRESETS["digits-tiny-aug"])
    assert len(seen) == 2
    for xb, tb in seen:
        torch.testing.assert_close(tb, d.teacher(xb), rtol=1e-5, atol=1e-5)
        assert not any(torch.equal(xb[0], x0) for x0 in d.images["train"][0])  # augmented (shifted or flipped)
    P = space_presets.SPACE_PRESETS
    assert all(P[n].augment for n in P if n.startswith(("cifar10", "tinyimagenet")))
    assert not any(P[n].augment for n in P if n.startswith(("digits", "fmnist")) and n != "digits-tiny-aug")


def test_validation_reuses_the_inputs_accuracies(multi_zoo, monkeypatch):
    """evaluate_networks with an input cache: the first call fills it, a second call on the same images
    runs only the decoded networks, and both give the rows of a call without a cache."""
    from netspace_fast.space import evaluate as ev
    from netspace_fast.space.train import build_space, load_space_data

    preset = space_presets.SPACE_PRESETS["digits-tiny-multi"]
    d = load_space_data(multi_zoo, preset)
    enc, dec = build_space(preset, d.stacked("val")[0].shape[1], 0)
    enc.eval(), dec.eval()
    x, y = d.images["val"]
    x, y = x[:40], y[:40]
    plain = ev.evaluate_networks(enc, dec, d.groups["val"], x, y, d.specs)
    calls, real = [], ev._accuracy
    monkeypatch.setattr(ev, "_accuracy", lambda spec, preps, *a: calls.append(preps) or real(spec, preps, *a))
    cache: dict = {}
    first = ev.evaluate_networks(enc, dec, d.groups["val"], x, y, d.specs, input_cache=cache)
    n_first = len(calls)
    second = ev.evaluate_networks(enc, dec, d.groups["val"], x, y, d.specs, input_cache=cache)
    assert first == plain and second == plain
    assert set(cache) == {r["network"] for r in plain}
    inputs = [g.preps for g in d.groups["val"]]
    assert sum(any(c is p for p in inputs) for c in calls[:n_first]) == len(inputs)  # first call: every input group
    assert not any(any(c is p for p in inputs) for c in calls[n_first:])  # second call: decoded networks only
