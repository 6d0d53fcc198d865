"""The GPU program rehearsed on CPU (netspace_fast.engine.gpu): with NETSPACE_GPU_REHEARSAL=1 (and
TRITON_INTERPRET=1) CPU tensors take the CUDA code path (cuDNN's place held by oneDNN: the same
grouped calls; the fused epilogue and the linear layers' Triton kernels interpreted; the CUDA-graph
bookkeeping of engine/graphs.py), and every training and exploration command runs on it end to end
on a tiny preset. Each is compared with the CPU program's result.

Tolerances. One call (forward and PRep gradient): ``rel_err`` <= 1e-4 against the CPU program, the
whole-network estimate of tests/conftest.py (the two programs round differently: the bias added by
the epilogue instead of inside the convolution, the linear layers' Triton tiles instead of the C++
kernel). Commands train for a few steps from gradients that differ by that rounding; plain SGD
passes such differences on linearly (zoo training: weights within 1e-4 relative), while Adam's
normalized step turns a gradient component that is zero up to rounding into a step of up to
``lr`` either way, so after Adam training the results are compared where they are robust: losses
and accuracies (1e-3 relative, or the 1/N granularity of an accuracy on N images at most one
prediction apart), optimized embeddings within the bound of Adam's steps.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from conftest import assert_prep_grad_close, rel_err
from netspace_fast import archs, batched_forward, data
from netspace_fast.cli import cli
from netspace_fast.engine import graphs
from netspace_fast.prep.layout import PRepLayout, prep_shape
from netspace_fast.zoo.format import Zoo, init_zoo, write_instance

pytestmark = [pytest.mark.triton,
              pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                 reason="the rehearsal runs Triton kernels on CPU: needs TRITON_INTERPRET=1")]

N_IMAGES = 64
_real_tensors = data.tensors


def _few_tensors(name, split, root=None, seed=0):
    x, y = _real_tensors(name, split, root=root, seed=seed)
    return x[:N_IMAGES], y[:N_IMAGES]


@pytest.fixture
def rehearsal(monkeypatch):
    def set_(on: bool):
        if on:
            monkeypatch.setenv("NETSPACE_GPU_REHEARSAL", "1")
        else:
            monkeypatch.delenv("NETSPACE_GPU_REHEARSAL", raising=False)
    return set_


# ------------------------------------------------------------------------------------------------
# one call of the engine


def _preps(spec, B, width=1024, seed=0):
    g = torch.Generator().manual_seed(seed)
    H, _ = prep_shape(spec.num_params, width)
    return (0.2 * torch.randn(B, H, width, generator=g)).requires_grad_()


@pytest.mark.parametrize("name,shared,layout", [("lenetlike", True, "rule"), ("resnet8", True, "rule"),
                                                ("resnet8", False, "rule"), ("resnet8", True, "split"),
                                                ("resnet8", False, "nchw"),
                                                ("vanillacnn", False, "rule"), ("siren", True, "rule")])
def test_batched_forward_matches_the_cpu_program(name, shared, layout, rehearsal, monkeypatch):
    """Forward, PRep and input gradients of three calls (eager, captured, replayed); ``split``: every
    conv per network (the split blocks of the executor inside the GPU program); ``nchw``: every conv
    grouped in NCHW (its output back in channels-last before the fused epilogue)."""
    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", layout)
    spec = archs.spec(name, "sdf" if name == "siren" else "digits")
    B, N = 2, 3
    feat = tuple(spec.input_shape)
    x = torch.randn(*((N,) if shared else (B, N)), *feat, requires_grad=True)
    preps = _preps(spec, B)
    graphs.ENGINE.clear()
    results = {}
    for on in (False, True):
        rehearsal(on)
        for call in range(3):  # eager, then captured, then replayed
            p, xx = preps.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
            out = batched_forward(spec, p, xx)
            g = torch.randn(out.shape, generator=torch.Generator().manual_seed(call))
            out.backward(g)
            results[on, call] = (out.detach(), p.grad, xx.grad)
    stats = graphs.ENGINE.stats()
    assert stats["captured"] == 1 and stats["replayed"] == 2 and stats["eager"] == 1
    layout = PRepLayout.for_spec(spec, preps.shape[2], preps.shape[1])
    for call in range(3):
        (o0, p0, x0), (o1, p1, x1) = results[False, call], results[True, call]
        assert rel_err(o1, o0) <= 1e-4
        assert_prep_grad_close(p1, p0, layout)
        assert rel_err(x1, x0) <= 1e-4


def test_zoo_epochs_match_the_cpu_program(rehearsal):
    """Zoo training of 2 ResNet8 with BatchNorm (residual blocks, per-instance statistics), two
    epochs of SGD: the GPU program (fused epilogues, each step replayed from the net's graphs) gives
    the CPU program's weights and statistics within 1e-4 relative (SGD passes rounding on linearly)."""
    from netspace_fast.zoo.loop import DataOrder, evaluate, make_optimizer, train_epoch
    from netspace_fast.zoo.model import BatchedZooNet

    x, y = _few_tensors("digits", "train")
    x, y = x[:24], y[:24]
    torch.manual_seed(1)
    models = [archs.build("resnet8", "digits") for _ in range(2)]
    nets = {}
    for on in (False, True):
        rehearsal(on)
        net = BatchedZooNet([m for m in models])
        opt = make_optimizer(net, "multi", 0.05)
        order = DataOrder.from_seeds([0, 1])
        for _ in range(2):
            train_epoch(net, opt, x, y, order, batch_size=8, augment_pad=2)
        acc = evaluate(net, x, y)
        nets[on] = (net, acc)
    rehearsal(False)
    (cpu, acc_c), (gpu, acc_g) = nets[False], nets[True]
    stats = gpu.graphs.stats()
    assert stats["captured"] >= 1 and stats["replayed"] >= 4 and cpu.graphs.stats()["replayed"] == 0
    sc, sg = cpu.state_dict(), gpu.state_dict()
    for k in sc:
        if sc[k].is_floating_point():
            assert rel_err(sg[k], sc[k]) <= 1e-4, k
        else:
            assert torch.equal(sg[k], sc[k]), k  # num_batches_tracked: each step counted once
    assert all(_close_acc(a, b, 24) for a, b in zip(acc_g.tolist(), acc_c.tolist()))


def test_the_program_switch(rehearsal, monkeypatch):
    from netspace_fast.engine.gpu import gpu_program, uses_gpu_program

    rehearsal(True)
    cpu = torch.device("cpu")
    assert gpu_program(cpu) and uses_gpu_program(cpu, "cpp", None)
    assert not uses_gpu_program(cpu, "cpp", "cpp")  # a backend demanded: no rehearsal
    cuda = torch.device("cuda")
    assert uses_gpu_program(cuda, "triton", None) and not uses_gpu_program(cuda, "triton", "triton")
    monkeypatch.setenv("NETSPACE_BACKEND", "triton")
    assert not uses_gpu_program(cuda, "triton", None)  # the older per-layer Triton program, asked for
    rehearsal(False)
    assert not gpu_program(cpu)


# ------------------------------------------------------------------------------------------------
# every command end to end


def _cli(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 0, r.output + (repr(r.exception) if r.exception else "")
    return r.output


def _both(rehearsal, tmp, make_args):
    """Runs the command on the CPU program and on the rehearsed GPU program; returns their output
    folders (or whatever ``make_args(out)`` names) and texts."""
    outs = {}
    for on in (False, True):
        rehearsal(on)
        graphs.ENGINE.clear()
        out = tmp / ("gpu" if on else "cpu")
        text = _cli(*make_args(out, on))
        outs[on] = (out, text, graphs.ENGINE.stats())
    rehearsal(False)
    return outs


def _numbers(path: Path) -> list[list[float]]:
    rows = []
    with open(path) as f:
        for row in csv.DictReader(f):
            vals = []
            for k, v in row.items():
                if "second" in k or "time" in k:  # wall-clock columns differ, of course
                    continue
                try:
                    vals.append(float(v))
                except (TypeError, ValueError):
                    pass
            rows.append(vals)
    return rows


def _close_acc(a: float, b: float, n: int) -> bool:
    """Two accuracies on n images: equal up to one prediction (argmax ties broken by rounding)."""
    return abs(a - b) <= 1.0 / n + 1e-9


@pytest.fixture(scope="module")
def small_data():
    mp = pytest.MonkeyPatch()
    mp.setattr(data, "tensors", _few_tensors)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def zoos(small_data, tmp_path_factory):
    """The zoo train command on both programs (digits-tiny: 2 LeNetLike, SGD), and a written
    unseen-style zoo for the Multi commands."""
    base = tmp_path_factory.mktemp("rehearsal")
    mp = pytest.MonkeyPatch()
    out = {}
    for on in (False, True):
        if on:
            mp.setenv("NETSPACE_GPU_REHEARSAL", "1")
        z = base / ("zoo-gpu" if on else "zoo-cpu")
        _cli("zoo", "train", "--preset", "digits-tiny", "--out", z, "--no-progress", "--seed", "3")
        out[on] = z
        mp.delenv("NETSPACE_GPU_REHEARSAL", raising=False)
    mp.undo()
    multi = base / "multi"
    init_zoo(multi, {"seed": 0})
    torch.manual_seed(0)
    for i, (name, split) in enumerate([("lenetlike", "train"), ("resnet32", "train"), ("lenetlike", "val"),
                                       ("resnet32", "val"), ("vanillacnn", "test"), ("resnet8", "test"),
                                       ("resnet56", "train")]):
        write_instance(multi, archs.build(name, "digits").eval(), id=f"{name}-{i}", arch=name, dataset="digits",
                       protocol="multi", seed=i, epoch=0, acc={"train": None, "val": None, "test": None}, split=split)
    return out, multi


def test_zoo_train(zoos):
    zc, zg = Zoo.open(zoos[0][False]), Zoo.open(zoos[0][True])
    ids = [e["id"] for e in zc.instances()]
    assert ids == [e["id"] for e in zg.instances()] and ids
    for i in ids:
        a, b = zc.state_dict(i), zg.state_dict(i)
        for k in a:
            if a[k].is_floating_point():
                assert rel_err(b[k], a[k]) <= 1e-4, k
    for ec, eg in zip(zc.instances(), zg.instances()):
        for key in ("train_acc", "val_acc", "test_acc"):
            assert _close_acc(eg[key], ec[key], N_IMAGES), (key, ec[key], eg[key])


@pytest.fixture(scope="module")
def single_runs(zoos, tmp_path_factory):
    base = tmp_path_factory.mktemp("single")
    zoo = zoos[0][False]
    mp = pytest.MonkeyPatch()
    runs, stats = {}, {}
    for on in (False, True):
        if on:
            mp.setenv("NETSPACE_GPU_REHEARSAL", "1")
        graphs.ENGINE.clear()
        run = base / ("gpu" if on else "cpu")
        _cli("train", "single", "--zoo", zoo, "--out", run, "--preset", "digits-tiny-single", "--epochs", "2",
             "--no-progress")
        runs[on], stats[on] = run, graphs.ENGINE.stats()
        mp.delenv("NETSPACE_GPU_REHEARSAL", raising=False)
    mp.undo()
    return runs, stats, zoo


def _history(run: Path) -> list[dict]:
    return json.loads((run / "state.json").read_text())["history"]


def _same_history(a, b, fraction_tol: float, key: str = "") -> None:
    """Two runs' metrics histories agree: losses within 1e-3 relative; fractions that count
    predictions or points (accuracies, points within a distance) within ``fraction_tol`` (what a
    few of them crossing the argmax or the threshold changes); times not compared."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (key, a, b)
        for k in a:
            _same_history(a[k], b[k], fraction_tol, k)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), (key, a, b)
        for x, y in zip(a, b):
            _same_history(x, y, fraction_tol, key)
    elif isinstance(a, float) and a != a:  # NaN: undefined on both (a statistic of one network)
        assert b != b, (key, a, b)
    elif isinstance(a, float) and not any(w in key for w in ("time", "sec")):
        tol = fraction_tol if any(w in key for w in ("acc", "within")) else 1e-3 * max(abs(a), 1e-3)
        assert abs(b - a) <= tol, (key, a, b)
    else:
        assert a == b or isinstance(a, float), (key, a, b)


def test_train_single(single_runs):
    runs, stats, _ = single_runs
    assert stats[True]["replayed"] > 0 and stats[False]["replayed"] == 0  # the rehearsal replayed graphs
    hc, hg = _history(runs[False]), _history(runs[True])
    assert len(hc) == len(hg) and hc
    _same_history(hc, hg, 1.0 / N_IMAGES)


def test_eval_interpolate_optimize(single_runs, rehearsal, tmp_path):
    runs, _, zoo = single_runs
    run = runs[False]
    outs = _both(rehearsal, tmp_path / "eval", lambda out, on: ("eval", run, "--split", "val"))
    assert outs[True][2]["replayed"] + outs[True][2]["eager"] > 0
    ids = [e["id"] for e in Zoo.open(zoo).instances()]
    outs = _both(rehearsal, tmp_path / "interp", lambda out, on: (
        "interpolate", run, "--a", ids[0], "--b", ids[1], "--steps", "3", "--out", out, "--no-progress"))
    a, b = (_numbers(outs[on][0] / "interpolation.csv") for on in (False, True))
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b):
        for va, vb in zip(ra, rb):
            assert _close_acc(vb, va, N_IMAGES) or abs(vb - va) <= 1e-3 * abs(va)
    outs = _both(rehearsal, tmp_path / "opt", lambda out, on: (
        "optimize", run, "--from", ids[0], "--steps", "3", "--out", out, "--no-progress"))
    # 3 Adam steps at lr 1e-4 on the embedding: a step moves a coordinate by at most
    # lr (1 - beta1) / sqrt(1 - beta2) = 3.17 lr (Kingma and Ba, Sec. 2.1), so two runs stay within
    # 2 x 3 x 3.17 lr of each other whatever their gradients' rounding
    ea, eb = (load_file(str(outs[on][0] / "best_embedding.safetensors")) for on in (False, True))
    assert ea.keys() == eb.keys() and ea
    for k in ea:
        assert (ea[k] - eb[k]).abs().max() <= 2 * 3 * 3.17 * 1e-4 + 1e-6, k
    a, b = (_numbers(outs[on][0] / "curve.csv") for on in (False, True))
    assert len(a) == len(b) and a
    for ra, rb in zip(a, b):
        for va, vb in zip(ra, rb):
            assert _close_acc(vb, va, N_IMAGES) or abs(vb - va) <= 1e-3 * abs(va)


def test_train_multi_and_sample_unseen(zoos, rehearsal, tmp_path):
    multi = zoos[1]
    outs = _both(rehearsal, tmp_path / "multi", lambda out, on: (
        "train", "multi", "--zoo", multi, "--out", out, "--preset", "digits-unseen", "--epochs", "1",
        "--no-progress"))
    assert outs[True][2]["replayed"] + outs[True][2]["captured"] > 0
    hc, hg = _history(outs[False][0]), _history(outs[True][0])
    assert len(hc) == len(hg) and hc
    _same_history(hc, hg, 1.0 / N_IMAGES)
    runs = {on: outs[on][0] for on in (False, True)}
    outs = _both(rehearsal, tmp_path / "unseen", lambda out, on: (
        "sample-unseen", runs[False], "--out", out, "--no-progress"))
    a, b = (_numbers(outs[on][0] / "samples.csv") for on in (False, True))
    assert len(a) == len(b) and a
    for ra, rb in zip(a, b):
        for va, vb in zip(ra, rb):
            assert _close_acc(vb, va, N_IMAGES) or abs(vb - va) <= 1e-3 * abs(va)


def test_fit_sdf_and_train_sdf(rehearsal, tmp_path, monkeypatch):
    from dataclasses import replace

    from netspace_fast.sdf.presets import SDF_PRESETS

    # the tiny preset, smaller: 6 steps on 128 points (an lr decay and a checkpoint every 3 steps) instead
    # of 20 on 512, smaller pools: the GPU program's interpreted SIREN kernels made the preset's fit most of
    # this test's 2.3 minutes, the largest share of the Triton part; what is compared (the two programs'
    # weights after the same Adam steps, within the steps' lr) is the same
    tiny = replace(SDF_PRESETS["tiny"], steps=6, decay_every=3, checkpoint_every=3, points=128, pool_size=1_000,
                   heldout_size=250)
    monkeypatch.setitem(SDF_PRESETS, "tiny", tiny)
    outs = _both(rehearsal, tmp_path / "fit", lambda out, on: (
        "zoo", "fit-sdf", "--shapes", "procedural", "--out", out, "--preset", "tiny", "--no-progress"))
    zc, zg = Zoo.open(outs[False][0]), Zoo.open(outs[True][0])
    assert len(zc.instances()) == len(zg.instances()) == tiny.n_shapes
    for ec, eg in zip(zc.instances(), zg.instances()):
        assert ec["epoch"] == eg["epoch"] == tiny.steps
        a, b = zc.state_dict(ec["id"]), zg.state_dict(eg["id"])
        for k in a:  # Adam, steps of at most lr each: each value within steps * lr of the CPU program's
            assert (a[k] - b[k]).abs().max() <= tiny.steps * tiny.lr + 1e-5, k
    # train sdf needs validation MLPs: the sphere zoo of the SDF tests (3 train, 1 val)
    helpers = importlib.util.spec_from_file_location("sdf_helpers", Path(__file__).parent / "sdf" / "sdf_helpers.py")
    mod = importlib.util.module_from_spec(helpers)
    helpers.loader.exec_module(mod)
    zoo = tmp_path / "spheres"
    mod.write_sphere_zoo(zoo)
    outs = _both(rehearsal, tmp_path / "space", lambda out, on: (
        "train", "sdf", "--zoo", zoo, "--out", out, "--preset", "sdf-tiny", "--epochs", "1", "--no-progress"))
    hc, hg = _history(outs[False][0]), _history(outs[True][0])
    assert len(hc) == len(hg) and hc
    _same_history(hc, hg, 0.01)
    assert outs[True][2]["replayed"] + outs[True][2]["captured"] > 0
