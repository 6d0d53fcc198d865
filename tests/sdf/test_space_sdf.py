"""NetSpace on MLPs (netspace_fast/sdf/space.py, ``netspace train sdf``): the SDF step (one batched call
per set of MLPs), the paper's metric against a per-network computation, training (the loss falls),
the run folder, resume after a real SIGKILL bit-identical to an uninterrupted run, stopping at the
target, the bad inputs (a classification zoo, a missing zoo, an SDF zoo without validation MLPs),
and the acceptance run (``make accept``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from netspace_fast import archs
from netspace_fast.cli import cli
from netspace_fast.prep import load_prep, pack_preps
from netspace_fast.sdf import space as sdf_space
from netspace_fast.sdf.space import (SDF_SPACE_PRESETS, SdfSpace, build_sdf_space, eval_points, sdf_step,
                                     train_sdf_space, uniform_points, within_fraction)
from netspace_fast.space.run import Run
from netspace_fast.zoo.format import write_instance

from sdf_helpers import SPHERES, sphere_mlp, write_sphere_zoo

W = 1024  # the tiny preset's PRep width


@pytest.fixture(scope="module")
def sphere_zoo(tmp_path_factory):
    path = tmp_path_factory.mktemp("sdfzoo") / "zoo"
    write_sphere_zoo(path)
    return path


def _preps(models):
    with torch.no_grad():
        return pack_preps(models, W).detach()


def _one_line_error(result, contains: str) -> str:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code != 0
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert contains in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------
# the metric and the step


def test_within_fraction_matches_per_network_modules():
    """The batched metric equals a direct per-network computation with ordinary modules, including
    the two exact cases (a uniform shift inside / outside the tolerance)."""
    inputs = [sphere_mlp(0.4), sphere_mlp(0.5, (0.1, 0.0, 0.0)), archs.build("siren")]
    decoded = [sphere_mlp(0.4), sphere_mlp(0.5, (0.1, 0.0, 0.0)), archs.build("siren")]
    with torch.no_grad():
        decoded[0].get_submodule("fc3").bias += 0.004  # every point within 0.01
        decoded[1].get_submodule("fc3").bias += 0.03  # no point within 0.01
        for p in decoded[2].parameters():  # a partial overlap
            p.mul_(1.0 + 0.02 * torch.randn_like(p))
    x = uniform_points(3000, torch.Generator().manual_seed(3))
    got = within_fraction(_preps(decoded), _preps(inputs), x, chunk=2, point_chunk=1000)
    with torch.no_grad():
        direct = torch.stack([((d(x) - i(x)).abs() <= 0.01).float().mean() for d, i in zip(decoded, inputs)])
    assert got[0] == 1.0 and got[1] == 0.0
    assert 0.05 < float(direct[2]) < 0.95  # the third case is a real partial one
    assert torch.allclose(got, direct, atol=2 / 3000)  # at most a couple of points on the 0.01 boundary


def test_uniform_points_in_the_cube_and_seeded():
    a = uniform_points(5000, torch.Generator().manual_seed(1))
    b = uniform_points(5000, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (5000, 3)
    assert a.min() >= -1 and a.max() <= 1 and a.min() < -0.99 and a.max() > 0.99


def test_step_is_two_batched_calls_and_the_mse(monkeypatch):
    """One step: ONE batched call for the input MLPs (no gradient) and ONE for the decoded ones, on
    the same points; the loss is the MSE between them and ``within`` the metric on those points."""
    calls = []
    real = sdf_space.batched_forward

    def counting(spec, preps, x, **kw):
        calls.append((spec.name, tuple(preps.shape), preps.requires_grad, x))
        return real(spec, preps, x, **kw)

    monkeypatch.setattr(sdf_space, "batched_forward", counting)
    p = SDF_SPACE_PRESETS["sdf-tiny"]
    enc, dec = build_sdf_space(p, seed=0)
    preps = _preps([sphere_mlp(0.3), sphere_mlp(0.4), sphere_mlp(0.5)])
    x = uniform_points(200, torch.Generator().manual_seed(0))
    out = sdf_step(enc, dec, preps, x)
    assert len(calls) == 2
    (n0, s0, g0, x0), (n1, s1, g1, x1) = calls
    assert n0 == n1 == "siren" and s0 == s1 == (3, 68, W) and not g0 and g1 and x0 is x and x1 is x
    with torch.no_grad():
        ref = [load_prep(archs.build("siren"), d)(x) - load_prep(archs.build("siren"), i)(x)
               for d, i in zip(out.decoded, preps)]
    per = torch.stack([r.square().mean() for r in ref])
    assert torch.allclose(out.per_network, per, rtol=1e-4, atol=1e-9)
    assert torch.allclose(out.loss, per.mean(), rtol=1e-4)
    assert torch.equal(out.within, torch.stack([(r.abs() <= 0.01).float().mean() for r in ref]))
    out.loss.backward()
    assert dec.scalelayer.bias.grad is not None and enc.conv1[0].weight.grad is not None


def test_training_steps_are_batched(sphere_zoo, tmp_path, monkeypatch):
    """A whole epoch of the loop: every training step makes exactly two batched calls (input and
    decoded MLPs of its whole meta-batch), and the metric one call per set of MLPs."""
    calls, steps = [], []
    real_forward, real_step = sdf_space.batched_forward, sdf_space.sdf_step

    def counting_forward(spec, preps, x, **kw):
        calls.append(preps.shape[0])
        return real_forward(spec, preps, x, **kw)

    def counting_step(enc, dec, preps, points, **kw):
        before = len(calls)
        out = real_step(enc, dec, preps, points, **kw)
        steps.append((preps.shape[0], len(calls) - before))
        return out

    monkeypatch.setattr(sdf_space, "batched_forward", counting_forward)
    monkeypatch.setattr(sdf_space, "sdf_step", counting_step)
    train_sdf_space(tmp_path / "run", sphere_zoo, "sdf-tiny", epochs=1, progress=False)
    # 3 training MLPs, meta-batch 2: meta-batches of 2 and 1, two calls each
    assert sorted(steps) == [(1, 2), (2, 2)]
    # then the metric: decoded and input MLPs of the train split (3) and of the val split (1)
    assert sorted(calls[4:]) == [1, 1, 3, 3]


def test_mean_init_and_centered_encoder():
    """``prep_init="mean"``: the decoder's scale-layer bias starts as the mean training PRep, so a fresh
    decoder's MLPs are that mean MLP up to the scale layer's small term; ``center``: the encoder sees
    each PRep minus that mean (a buffer, saved with the weights)."""
    import dataclasses

    p = dataclasses.replace(SDF_SPACE_PRESETS["sdf-tiny"], prep_init="mean", center=True)
    preps = _preps([sphere_mlp(0.3), sphere_mlp(0.4, (0.1, 0.0, 0.0)), sphere_mlp(0.5)])
    mean = preps.mean(0)
    enc, dec = build_sdf_space(p, seed=0, train_preps=preps)
    assert torch.equal(dec.scalelayer.bias.detach(), mean) and torch.equal(enc.center, mean)
    assert "center" in enc.state_dict()
    plain, _ = build_sdf_space(dataclasses.replace(p, center=False), seed=0)
    plain.load_state_dict({k: v for k, v in enc.state_dict().items() if k != "center"})
    with torch.no_grad():
        assert torch.allclose(enc(preps), plain(preps - mean), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(enc(preps), plain(preps), rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="train_preps: expected PReps"):
        build_sdf_space(p, seed=0, train_preps=preps[:, :10])
    with pytest.raises(ValueError, match="prep_init: expected one of"):
        dataclasses.replace(p, prep_init="zeros")


def test_centered_run_saves_and_reloads_its_center(sphere_zoo, tmp_path, monkeypatch):
    import dataclasses

    monkeypatch.setitem(sdf_space.SDF_SPACE_PRESETS, "sdf-tiny-c",
                        dataclasses.replace(SDF_SPACE_PRESETS["sdf-tiny"], prep_init="mean", center=True))
    run = train_sdf_space(tmp_path / "run", sphere_zoo, "sdf-tiny-c", epochs=1, progress=False)
    space = SdfSpace.load(run.path, which="last")  # built from the recipe in run.json, not the preset table
    train = space.preps(["sphere-a", "sphere-b", "sphere-c"])
    assert torch.allclose(space.encoder.center, train.mean(0))


# ---------------------------------------------------------------------------------------------
# points from the zoo's shapes (points_from="shapes", the original's way)


def _npz_folder(d, names=("a", "b")):
    import numpy as np

    d.mkdir()
    rng = np.random.default_rng(0)
    for k, name in enumerate(names):
        p = rng.uniform(-1, 1, (2000, 3)).astype(np.float32)
        s = (np.linalg.norm(p, axis=1) - 0.3 - 0.1 * k).astype(np.float32)[:, None]  # spheres
        rows = np.concatenate([p, s], 1)
        np.savez(d / f"{name}.npz", pos=rows[rows[:, 3] >= 0], neg=rows[rows[:, 3] < 0])
    return d


@pytest.fixture(scope="module")
def fitted_zoo(tmp_path_factory):
    """A real fit-sdf zoo of three procedural chairs (a few steps): two training MLPs, one validation."""
    import dataclasses

    from netspace_fast.sdf.fit import fit_sdf_zoo
    from netspace_fast.sdf.presets import SDF_PRESETS

    path = tmp_path_factory.mktemp("fitted") / "zoo"
    p = dataclasses.replace(SDF_PRESETS["tiny"], n_shapes=3, steps=3, split=(0.34, 0.0))
    fit_sdf_zoo(path, "procedural", p, seed=2, progress=False)
    return path


def _shape_preset(**kw):
    import dataclasses

    return dataclasses.replace(SDF_SPACE_PRESETS["sdf-tiny"], points_from="shapes", points=64, eval_points=100, **kw)


def test_shape_points_are_each_mlps_own_samples(fitted_zoo):
    from netspace_fast.sdf.shapes import ProceduralChairs

    data = sdf_space.load_sdf_data(fitted_zoo, W, shapes=sdf_space.zoo_shapes(fitted_zoo))
    assert isinstance(data.shapes, ProceduralChairs) and len(data.shapes) == 3
    for split, ids in data.ids.items():  # instance ids are the shapes' ids
        assert [data.shapes.ids[i] for i in data.shape_index[split]] == ids
    p = _shape_preset()
    nets = torch.tensor([1, 0])
    x = sdf_space.step_points(p, torch.Generator().manual_seed(9), data, nets, "cpu")
    g = torch.Generator().manual_seed(9)
    expect = [data.shapes.sample(data.shape_index["train"][k], 64, g)[0] for k in (1, 0)]
    assert x.shape == (2, 64, 3) and torch.equal(x, torch.stack(expect))
    fixed = sdf_space.metric_points(p, 0, data, "cpu")
    for split, index in data.shape_index.items():
        assert fixed[split].shape == (len(index), 100, 3)
        for b, i in enumerate(index):
            assert torch.equal(fixed[split][b], data.shapes.heldout(i)[0][:100])
    # per-network points in the metric: the same as one network at a time
    preps = data.preps["train"]
    other = preps.flip(0).contiguous()
    both = within_fraction(other, preps, fixed["train"], tolerance=0.05)
    alone = torch.cat([within_fraction(other[b:b + 1], preps[b:b + 1], fixed["train"][b], tolerance=0.05)
                       for b in range(2)])
    assert torch.equal(both, alone)
    with pytest.raises(ValueError, match=r"points: expected \(N, 3\) or \(2, N, 3\)"):
        within_fraction(other, preps, fixed["train"][:1])


def test_training_with_shape_points(fitted_zoo, tmp_path, monkeypatch):
    """Each step's two batched calls get (B, N, 3) points; the run resumes like a uniform one."""
    shapes_seen = []
    real = sdf_space.batched_forward

    def recording(spec, preps, x, **kw):
        shapes_seen.append((preps.shape[0], tuple(x.shape)))
        return real(spec, preps, x, **kw)

    monkeypatch.setattr(sdf_space, "batched_forward", recording)
    monkeypatch.setitem(sdf_space.SDF_SPACE_PRESETS, "t-shapes", _shape_preset())
    run = train_sdf_space(tmp_path / "run", fitted_zoo, "t-shapes", epochs=1, progress=False)
    assert run.config["recipe"]["points_from"] == "shapes"
    steps = shapes_seen[:2]  # 2 training MLPs at meta-batch 2: one step, two calls
    assert steps == [(2, (2, 64, 3)), (2, (2, 64, 3))]
    assert (1, (1, 100, 3)) in shapes_seen[2:]  # the validation MLP's metric on its own points
    h = run.state()["history"][-1]
    assert 0 <= h["train_within"] <= 1 and 0 <= h["val_within"] <= 1
    # cut after epoch 1 of 2, then resumed == two epochs straight (each epoch's shape points come from
    # the epoch's generator)
    monkeypatch.setattr(sdf_space, "batched_forward", real)

    def cut(epoch):
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(sdf_space, "after_checkpoint", cut)
    with pytest.raises(KeyboardInterrupt):
        train_sdf_space(tmp_path / "cut", fitted_zoo, "t-shapes", epochs=2, progress=False)
    monkeypatch.setattr(sdf_space, "after_checkpoint", lambda epoch: None)
    train_sdf_space(tmp_path / "cut", fitted_zoo, "t-shapes", epochs=2, progress=False)
    train_sdf_space(tmp_path / "straight", fitted_zoo, "t-shapes", epochs=2, progress=False)
    a = load_file(tmp_path / "cut" / "ckpt-00002.safetensors")
    b = load_file(tmp_path / "straight" / "ckpt-00002.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_shape_points_need_the_zoos_shapes(sphere_zoo, tmp_path, monkeypatch):
    monkeypatch.setitem(sdf_space.SDF_SPACE_PRESETS, "t-shapes", _shape_preset())
    with pytest.raises(ValueError, match="records no shapes"):
        train_sdf_space(tmp_path / "run", sphere_zoo, "t-shapes", progress=False)
    assert not (tmp_path / "run").exists()  # refused before a run folder exists
    from netspace_fast.sdf.fit import fit_sdf_zoo

    folder = _npz_folder(tmp_path / "npz")
    fit_sdf_zoo(tmp_path / "zoo", folder, "tiny", progress=False)
    assert sdf_space.zoo_shapes(tmp_path / "zoo").describe()["source"] == "deepsdf-npz"
    (folder / "b.npz").write_bytes((folder / "a.npz").read_bytes())  # a file changed since fitting
    with pytest.raises(ValueError, match="changed since fitting"):
        sdf_space.zoo_shapes(tmp_path / "zoo")
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    with pytest.raises(ValueError, match="cannot be reopened"):
        sdf_space.zoo_shapes(tmp_path / "zoo")


# ---------------------------------------------------------------------------------------------
# training runs


def test_training_lowers_the_loss(sphere_zoo):
    """A few dozen Adam steps on the tiny preset lower the MSE at fixed points by a large factor."""
    p = SDF_SPACE_PRESETS["sdf-tiny"]
    enc, dec = build_sdf_space(p, seed=0)
    preps = _preps([sphere_mlp(r, c) for r, c, _ in SPHERES.values()])
    fixed = uniform_points(1000, torch.Generator().manual_seed(5))
    with torch.no_grad():
        before = sdf_step(enc, dec, preps, fixed).loss.item()
    # the training loop's optimizer (the scale layer at prep_lr): one Adam lr of 1e-3 on the scale
    # layer, whose bias IS the SIREN weights, makes the run chaotic (the loss after 40 steps then
    # depends on the thread count: 2.19 at 1 thread, 4.9 at 2)
    opt = torch.optim.Adam(sdf_space.param_groups(enc, dec, p), lr=p.lr)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        out = sdf_step(enc, dec, preps, uniform_points(256, g))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    with torch.no_grad():
        after = sdf_step(enc, dec, preps, fixed).loss.item()
    assert after < 0.2 * before, (before, after)


def test_run_folder_metric_history_and_cli(sphere_zoo, tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["train", "sdf", "--zoo", str(sphere_zoo), "--out", str(out), "--preset", "sdf-tiny",
                                 "--epochs", "2", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "within 0.01 on training MLPs" in r.output and "done: run written" in r.output
    files = sorted(p.name for p in out.iterdir())
    assert files == ["best.json", "best.safetensors", "ckpt-00002.safetensors", "run.json", "state.json"]
    run = Run.open(out)
    assert run.command == "train sdf" and run.config["recipe"]["protocol"] == "sdf"
    assert run.config["archs"] == ["siren"] and run.config["target"] == 0.8
    state = run.state()
    assert state["epoch"] == 2 and [h["epoch"] for h in state["history"]] == [1, 2]
    for h in state["history"]:
        assert 0.0 <= h["train_within"] <= 1.0 and 0.0 <= h["val_within"] <= 1.0 and h["loss"] > 0
    best = json.loads((out / "best.json").read_text())
    assert best["val_within"] == max(h["val_within"] for h in state["history"])
    tensors = load_file(out / "ckpt-00002.safetensors")
    assert any(k.startswith("decoder.") for k in tensors) and any(k.startswith("opt.") for k in tensors)
    # the recorded metric is the metric of the saved weights
    space = SdfSpace.load(out, which="last")
    zoo_preps = space.preps(["sphere-d"])
    x = eval_points(SDF_SPACE_PRESETS["sdf-tiny"], seed=0)  # the run's fixed metric points
    w = within_fraction(space.decode(space.encode(zoo_preps)), zoo_preps, x)
    assert abs(float(w[0]) - state["history"][-1]["val_within"]) < 1e-6
    # a rerun of the finished run does nothing and changes nothing
    before = (out / "state.json").read_bytes()
    r = CliRunner().invoke(cli, ["train", "sdf", "--zoo", str(sphere_zoo), "--out", str(out), "--preset", "sdf-tiny",
                                 "--epochs", "2", "--no-progress"])
    assert r.exit_code == 0 and (out / "state.json").read_bytes() == before
    # classification commands refuse an SDF run in one line
    _one_line_error(CliRunner().invoke(cli, ["eval", str(out)]), "SDF run")
    from netspace_fast.space import Space

    with pytest.raises(ValueError, match="SDF run"):
        Space.load(out)


def test_stops_at_the_target(sphere_zoo, tmp_path):
    """A target below the first validation's metric stops the run there (of an epoch budget of 3);
    the run records it, and a rerun of the same command returns at once."""
    run = train_sdf_space(tmp_path / "run", sphere_zoo, "sdf-tiny", epochs=3, target=1e-9, progress=False)
    state = run.state()
    assert state["stopped"] == "target" and state["epoch"] == 1
    assert state["history"][-1]["train_within"] >= 1e-9
    run = train_sdf_space(tmp_path / "run", sphere_zoo, "sdf-tiny", epochs=3, target=1e-9, progress=False)
    assert run.state()["epoch"] == 1


def _cmd(zoo, out):
    return [sys.executable, "-m", "netspace_fast.cli", "train", "sdf", "--zoo", str(zoo), "--out", str(out), "--preset",
            "sdf-tiny", "--no-progress"]


def test_sigkill_then_rerun_is_bit_identical(sphere_zoo, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(_cmd(sphere_zoo, tmp_path / "full"), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    killed = subprocess.run(_cmd(sphere_zoo, tmp_path / "cut"), capture_output=True, text=True, timeout=600,
                            env=dict(env, NETSPACE_TEST_SIGKILL_AFTER_EPOCH="1"))
    assert killed.returncode == -9
    assert json.loads((tmp_path / "cut" / "state.json").read_text())["epoch"] == 1
    r = subprocess.run(_cmd(sphere_zoo, tmp_path / "cut"), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    a = load_file(tmp_path / "full" / "ckpt-00003.safetensors")
    b = load_file(tmp_path / "cut" / "ckpt-00003.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa = json.loads((tmp_path / "full" / "state.json").read_text())
    sb = json.loads((tmp_path / "cut" / "state.json").read_text())
    assert sa == sb


# ---------------------------------------------------------------------------------------------
# bad input


def test_classification_zoo_is_one_line_naming_the_zoo(tmp_path):
    zoo = tmp_path / "classifiers"
    write_instance(zoo, archs.build("lenetlike", "digits"), id="l0", arch="lenetlike", dataset="digits",
                   protocol="test", seed=0, epoch=1, acc={}, split="train")
    r = CliRunner().invoke(cli, ["train", "sdf", "--zoo", str(zoo), "--out", str(tmp_path / "run")])
    line = _one_line_error(r, str(zoo))
    assert "not an SDF zoo" in line and "lenetlike" in line
    assert not (tmp_path / "run").exists()  # refused before a run folder is made


def test_missing_zoo_and_bad_options_are_one_line(sphere_zoo, tmp_path):
    r = CliRunner().invoke(cli, ["train", "sdf", "--zoo", str(tmp_path / "nope"), "--out", str(tmp_path / "run")])
    _one_line_error(r, str(tmp_path / "nope"))
    r = CliRunner().invoke(cli, ["train", "sdf", "--zoo", str(sphere_zoo), "--out", str(tmp_path / "r2"), "--preset",
                                 "digits-single"])
    _one_line_error(r, "unknown SDF preset 'digits-single'")
    r = CliRunner().invoke(cli, ["train", "sdf", "--zoo", str(sphere_zoo), "--out", str(tmp_path / "r3"), "--target",
                                 "1.5"])
    assert r.exit_code == 2 and "Traceback" not in r.output and "--target" in r.output


def test_sdf_zoo_without_validation_mlps(tmp_path):
    zoo = tmp_path / "zoo"
    write_instance(zoo, sphere_mlp(0.4), id="s0", arch="siren", dataset=None, protocol="t", seed=0, epoch=0, acc={},
                   split="train")
    with pytest.raises(ValueError, match=r"split 'val' .* has no siren MLPs"):
        train_sdf_space(tmp_path / "run", zoo, "sdf-tiny", progress=False)


def test_argument_errors(sphere_zoo, tmp_path):
    with pytest.raises(ValueError, match="target"):
        train_sdf_space(tmp_path / "r", sphere_zoo, "sdf-tiny", target=0.0)
    with pytest.raises(ValueError, match="epochs"):
        train_sdf_space(tmp_path / "r", sphere_zoo, "sdf-tiny", epochs=0)
    with pytest.raises(ValueError, match="preset"):
        train_sdf_space(tmp_path / "r", sphere_zoo, "nope")
    with pytest.raises(ValueError, match="decoded, inputs"):
        within_fraction(torch.zeros(2, 68, W), torch.zeros(3, 68, W), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="points"):
        within_fraction(torch.zeros(2, 68, W), torch.zeros(2, 68, W), torch.zeros(4, 2))


# ---------------------------------------------------------------------------------------------
# acceptance (make accept): the small procedural preset on 2 CPU cores


@pytest.mark.accept
def test_accept_sdf_space_and_interpolation(tmp_path):
    """Fit the small procedural SDF zoo (``netspace zoo fit-sdf --preset small``; or reuse the zoo in
    $NETSPACE_SDF_ZOO), train NetSpace on its MLPs with ``sdf-small`` until 0.8 of the points (each MLP's
    held-out shape points) are within 0.01 on the training MLPs, report the validation figure, and
    interpolate two training chairs: at least 5 steps, every mesh non-empty and closed."""
    from netspace_fast.sdf.mesh import interpolate_shapes

    zoo = os.environ.get("NETSPACE_SDF_ZOO")
    if not zoo:
        from netspace_fast.sdf.fit import fit_sdf_zoo

        zoo = tmp_path / "zoo"
        t = time.perf_counter()
        fit_sdf_zoo(zoo, "procedural", "small", progress=True)
        print(f"\nzoo fitted in {time.perf_counter() - t:.0f} s")
    out = Path(os.environ.get("NETSPACE_SDF_ACCEPT_OUT", tmp_path))
    t = time.perf_counter()
    run = train_sdf_space(out / "run", zoo, "sdf-small", progress=True)
    seconds = time.perf_counter() - t
    state = run.state()
    last = [h for h in state["history"] if "train_within" in h][-1]
    best = json.loads((out / "run" / "best.json").read_text())
    print(f"\nNetSpace sdf-small: {state['epoch']} epochs in {seconds:.0f} s; within 0.01: training MLPs "
          f"{last['train_within']:.4f}, validation MLPs {last['val_within']:.4f}; best validation "
          f"{best['val_within']:.4f}"
          f" (epoch {best['epoch']})")
    assert last["train_within"] >= 0.8
    ids = json.loads((Path(zoo) / "manifest.json").read_text())["splits"]["train"]
    res = interpolate_shapes(out / "run", ids[0], ids[1], 7, out / "interp")
    print("\n".join(res.summary_lines()))
    steps = res.decoded_rows
    assert len(steps) >= 5 and all(r["non_empty"] and r["watertight"] for r in steps)
    assert (out / "interp" / "interpolation.png").stat().st_size > 10_000
