"""Batched SIREN fitting (netspace_fast.sdf.fit) and the SDF zoo (`netspace zoo fit-sdf`).

Tolerances: the fused SIREN path against the per-network reference in float64: 1e-12 relative
(forward and PRep gradient); float32, fused vs the batched linear op: 1e-5 absolute on outputs of
magnitude ~0.1; batched fit vs one network at a time after 5 Adam steps: 1e-6 of the largest weight for
99.9% of the weights and 1% of the learning rate for all (see the test); resume after a kill: bit-identical.
The `accept` test fits the small preset (minutes): median held-out fraction within 0.01 >= 0.9.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from netspace_fast import archs
from netspace_fast.cli import cli
from netspace_fast.engine.batched import batched_forward_reference
from netspace_fast.sdf import ProceduralChairs, SirenFitter, SirenStack, fit_sdf_zoo, siren_forward
from netspace_fast.sdf.fit import PREP_WIDTH
from netspace_fast.sdf.presets import SDF_PRESETS
from netspace_fast.zoo.format import SDF_FIELDS, Zoo, write_instance

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def chairs():
    return ProceduralChairs(3, seed=0, pool_size=2000, heldout_size=500)


def _preps(K, dtype=torch.float64):
    f = SirenFitter(ProceduralChairs(K, pool_size=100, heldout_size=10), list(range(K)), points=8)
    return f.preps.detach().to(dtype).clone()


def test_fused_matches_reference_float64():
    p = _preps(3).requires_grad_()
    x = (torch.rand(3, 64, 3, dtype=torch.float64) * 2 - 1).requires_grad_()
    ref = batched_forward_reference(archs.spec("siren"), p, x)[..., 0]
    w = torch.randn_like(ref)
    gp_ref, gx_ref = torch.autograd.grad((ref * w).sum(), (p, x))
    out = siren_forward(p, x, "fused")
    gp, gx = torch.autograd.grad((out * w).sum(), (p, x))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12 * ref.abs().max().item())
    torch.testing.assert_close(gp, gp_ref, rtol=0, atol=1e-12 * gp_ref.abs().max().item())
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=1e-12 * gx_ref.abs().max().item())
    assert gp.view(3, -1)[:, archs.spec("siren").num_params:].abs().max() == 0, "padding gets no gradient"


def test_fused_gradcheck_tiny():
    p = (_preps(2) * 0.5).requires_grad_()  # smaller weights: a better conditioned check
    x = (torch.rand(2, 3, 3, dtype=torch.float64) - 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda p, x: SirenStack.apply(p.view(2, -1), x), (p, x), eps=1e-6, atol=1e-5)


def test_fused_and_op_agree_float32():
    p = _preps(2, torch.float32)
    x = torch.rand(2, 256, 3) * 2 - 1
    torch.testing.assert_close(siren_forward(p, x, "fused"), siren_forward(p, x, "op"), rtol=0, atol=1e-5)


def test_fitting_decreases_the_loss(chairs):
    f = SirenFitter(chairs, [0, 1], points=512, lr=5e-4, decay_every=100)
    losses = torch.stack([f.train_step() for _ in range(40)])
    assert (losses[-5:].mean(0) < 0.3 * losses[:3].mean(0)).all(), losses[[0, -1]]
    mse, within = f.evaluate()
    assert all(m < float(losses[0].max()) for m in mse) and all(0 <= w <= 1 for w in within)


def test_batched_fit_equals_one_at_a_time(chairs):
    both = SirenFitter(chairs, [0, 2], points=256, lr=1e-3)
    alone = [SirenFitter(chairs, [i], points=256, lr=1e-3) for i in (0, 2)]
    for _ in range(5):
        both.train_step()
        for a in alone:
            a.train_step()
    for k, a in enumerate(alone):
        diff = (both.preps.detach()[k] - a.preps.detach()[0]).abs()
        # MKL may block a batch of 2 GEMMs differently from one: last-bit differences, which Adam
        # can enlarge for weights whose gradient is ~0 (its update is ~lr * g / |g|). Bound: 1% of
        # one step's largest update (lr) anywhere, 1e-6 of the largest weight for 99.9% of them.
        assert diff.max() <= 0.01 * 1e-3, diff.max()
        assert (diff <= 1e-6 * a.preps.detach().abs().max()).float().mean() >= 0.999
    assert not torch.equal(both.preps[0], both.preps[1])


def test_checkpoint_round_trip_is_bit_identical(chairs):
    straight = SirenFitter(chairs, [0, 1], points=256, lr=1e-3, decay_every=2)
    for _ in range(6):
        straight.train_step()
    first = SirenFitter(chairs, [0, 1], points=256, lr=1e-3, decay_every=2)
    for _ in range(3):
        first.train_step()
    data = first.state_bytes()
    resumed = SirenFitter(chairs, [0, 1], points=256, lr=1e-3, decay_every=2)
    resumed.load_state_bytes(data)
    assert resumed.step == 3
    for _ in range(3):
        resumed.train_step()
    assert torch.equal(resumed.preps, straight.preps)
    other = SirenFitter(chairs, [1, 2], points=256)
    with pytest.raises(ValueError, match="other networks"):
        other.load_state_bytes(data, "ck.safetensors")
    with pytest.raises(ValueError, match="ck.safetensors.*not a SIREN fit checkpoint"):
        other.load_state_bytes(b"garbage", "ck.safetensors")


def test_shared_init_starts_every_network_from_one_siren(chairs):
    import dataclasses

    shared = SirenFitter(chairs, [0, 2], points=64, seed=3, init="shared")
    p = shared.preps.detach()
    assert torch.equal(p[0], p[1])
    per = SirenFitter(chairs, [0, 2], points=64, seed=3)
    assert not torch.equal(per.preps[0], per.preps[1])
    # the shared init is the zoo seed's, whatever the group: a group of one starts the same
    assert torch.equal(SirenFitter(chairs, [1], points=64, seed=3, init="shared").preps.detach()[0], p[0])
    assert not torch.equal(SirenFitter(chairs, [1], points=64, seed=4, init="shared").preps.detach()[0], p[0])
    # each network still draws its own points: the two trajectories part
    shared.train_step()
    assert not torch.equal(shared.preps[0], shared.preps[1])
    # a per-shape checkpoint does not resume a shared group (and the other way round)
    with pytest.raises(ValueError, match="other networks"):
        SirenFitter(chairs, [0, 2], points=64, seed=3, init="shared").load_state_bytes(per.state_bytes(), "ck")
    with pytest.raises(ValueError, match="other networks"):
        per.load_state_bytes(shared.state_bytes(), "ck")
    with pytest.raises(ValueError, match="init: expected one of"):
        SirenFitter(chairs, [0], init="same")
    with pytest.raises(ValueError, match="init: expected one of"):
        dataclasses.replace(SDF_PRESETS["tiny"], init="x")


def test_shared_init_zoo_records_it(tmp_path):
    import dataclasses

    p = dataclasses.replace(SDF_PRESETS["tiny"], init="shared", steps=2, checkpoint_every=1)
    fit_sdf_zoo(tmp_path / "zoo", ProceduralChairs(2, seed=0, pool_size=500, heldout_size=50), p, seed=5,
                progress=False)
    z = Zoo.open(tmp_path / "zoo")
    assert z.config["preset"]["init"] == "shared"
    assert "init" not in SDF_PRESETS["tiny"].config()  # per-shape zoos keep their old configuration


def test_cli_init_overrides_the_preset(tmp_path):
    r = CliRunner().invoke(cli, ["zoo", "fit-sdf", "--shapes", "procedural", "--out", str(tmp_path / "z"), "--preset",
                                 "tiny", "--init", "shared", "--no-progress"])
    assert r.exit_code == 0, r.output
    z = Zoo.open(tmp_path / "z")
    assert z.config["preset"]["init"] == "shared"
    a, b = (z.model(e["id"]).state_dict()["fc1.weight"] for e in z.instances())
    assert (a - b).abs().max() < 0.05  # 20 steps from one start: first layers still nearly equal
    r = CliRunner().invoke(cli, ["zoo", "fit-sdf", "--shapes", "procedural", "--out", str(tmp_path / "z2"),
                                 "--preset", "tiny", "--init", "same"])
    assert r.exit_code == 2 and "--init" in r.output


def _weights(zoo_dir):
    z = Zoo.open(zoo_dir)
    return {e["id"]: load_file(str(Path(zoo_dir) / e["file"])) for e in z.instances()}


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("NETSPACE_TEST_SIGKILL_AFTER_EPOCH", None)
    return env


def test_zoo_fit_resumes_after_sigkill_with_the_same_weights(tmp_path):
    straight = fit_sdf_zoo(tmp_path / "straight", "procedural", "tiny", seed=3, progress=False)
    cmd = [sys.executable, "-m", "netspace_fast.cli", "zoo", "fit-sdf", "--shapes", "procedural", "--out",
           str(tmp_path / "killed"), "--preset", "tiny", "--seed", "3", "--no-progress"]
    env = _env()
    env["NETSPACE_TEST_SIGKILL_AFTER_EPOCH"] = "10"  # the step-10 checkpoint
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert (tmp_path / "killed" / ".checkpoints" / "sdf-0000.safetensors").is_file()
    assert len(Zoo.open(tmp_path / "killed")) == 0
    r = subprocess.run(cmd[:-1], env=_env(), capture_output=True, text=True, timeout=600)  # with progress lines
    assert r.returncode == 0, r.stderr
    assert "resuming after step 10" in r.stderr
    a, b = _weights(straight), _weights(tmp_path / "killed")
    assert a.keys() == b.keys() == {"chair-0000", "chair-0001"}
    for i in a:
        for k in a[i]:
            assert torch.equal(a[i][k], b[i][k]), (i, k)
    assert not list((tmp_path / "killed" / ".checkpoints").iterdir()), "a finished group's checkpoint is removed"


def test_zoo_manifest_fields_and_verify(tmp_path):
    out = tmp_path / "zoo"
    r = CliRunner().invoke(cli, ["zoo", "fit-sdf", "--shapes", "procedural", "--out", str(out), "--preset", "tiny",
                                 "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "held-out fraction within 0.01: median" in r.output
    z = Zoo.open(out)
    assert z.config["kind"] == "sdf" and z.config["shapes"]["source"] == "procedural"
    assert {len(v) for v in z.splits.values()} == {0, 1} and sum(len(v) for v in z.splits.values()) == 2
    for e in z.instances():
        assert e["architecture"] == "siren" and e["protocol"] == "sdf" and e["epoch"] == SDF_PRESETS["tiny"].steps
        assert set(SDF_FIELDS) <= set(e) and e["shape"] == e["id"]
        assert 0 <= e["sdf_within_0.01"] <= 1 and e["sdf_mse"] > 0
        m = z.model(e["id"])
        assert isinstance(m, archs.SpecNet) and m.spec.name == "siren"
    preps = z.preps("train", "siren", width=PREP_WIDTH)
    assert preps.shape[0] == 1
    r = CliRunner().invoke(cli, ["zoo", "verify", str(out)])
    assert r.exit_code == 0 and "ok: 2 instances verified" in r.output
    # a rerun finds everything done; another preset in the same folder is refused
    r = CliRunner().invoke(cli, ["zoo", "fit-sdf", "--shapes", "procedural", "--out", str(out), "--preset", "tiny",
                                 "--no-progress"])
    assert r.exit_code == 0
    r = CliRunner().invoke(cli, ["zoo", "fit-sdf", "--shapes", "procedural", "--out", str(out), "--preset", "tiny",
                                 "--seed", "5", "--no-progress"])
    assert r.exit_code == 1 and "different configuration" in r.output


def test_fit_from_npz_folder(tmp_path):
    d = tmp_path / "npz"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        p = rng.uniform(-1, 1, (3000, 3)).astype(np.float32)
        s = (np.linalg.norm(p, axis=1) - 0.5).astype(np.float32)[:, None]  # a sphere
        rows = np.concatenate([p, s], 1)
        np.savez(d / f"{name}.npz", pos=rows[rows[:, 3] >= 0], neg=rows[rows[:, 3] < 0])
    fit_sdf_zoo(tmp_path / "zoo", d, "tiny", progress=False)
    z = Zoo.open(tmp_path / "zoo")
    assert [e["shape"] for e in z.instances()] == ["a.npz", "b.npz"]
    assert z.config["shapes"]["source"] == "deepsdf-npz"


def test_cli_bad_input(tmp_path):
    r = CliRunner().invoke(cli, ["zoo", "fit-sdf", "--shapes", "procedural", "--out", str(tmp_path / "z"),
                                 "--preset", "nope"])
    assert r.exit_code == 2 and "valid SDF presets" in r.output
    r = CliRunner().invoke(cli, ["zoo", "fit-sdf", "--shapes", str(tmp_path / "missing"), "--out",
                                 str(tmp_path / "z")])
    assert r.exit_code == 2 and "no such folder" in r.output
    d = tmp_path / "npz"
    d.mkdir()
    np.savez(d / "x.npz", samples=np.zeros((4, 4), np.float32))
    r = CliRunner().invoke(cli, ["zoo", "fit-sdf", "--shapes", str(d), "--out", str(tmp_path / "z2")])
    assert r.exit_code == 1 and "x.npz" in r.output and "'pos' and 'neg'" in r.output
    e = tmp_path / "empty"
    e.mkdir()
    r = CliRunner().invoke(cli, ["zoo", "fit-sdf", "--shapes", str(e), "--out", str(tmp_path / "z3")])
    assert r.exit_code == 1 and "no meshes" in r.output


def test_write_instance_sdf_fields_validated(tmp_path):
    m = archs.build("siren")
    ok = {"shape": "a.obj", "sdf_mse": 1e-4, "sdf_within_0.01": 0.95}
    e = write_instance(tmp_path, m, id="a", arch="siren", dataset=None, protocol="sdf", seed=1, epoch=10, acc={},
                       split="train", sdf=ok)
    assert e["sdf_within_0.01"] == 0.95 and e["shape"] == "a.obj"
    plain = write_instance(tmp_path, m, id="b", arch="siren", dataset=None, protocol="sdf", seed=1, epoch=10, acc={},
                           split="train")
    assert not set(SDF_FIELDS) & set(plain), "entries without SDF fields stay as they were"
    for bad, match in (({"shape": "a"}, "exactly the keys"), (dict(ok, sdf_mse=-1.0), "sdf_mse"),
                       (dict(ok, **{"sdf_within_0.01": 1.5}), r"sdf_within_0\.01"), (dict(ok, shape=""), "shape")):
        with pytest.raises(ValueError, match=match):
            write_instance(tmp_path, m, id="c", arch="siren", dataset=None, protocol="sdf", seed=1, epoch=1, acc={},
                           split="train", sdf=bad)
    man = json.loads((tmp_path / "manifest.json").read_text())
    del man["instances"][0]["sdf_mse"]
    (tmp_path / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ValueError, match="SDF fields come together"):
        Zoo.open(tmp_path)


@pytest.mark.accept
def test_accept_small_preset_median_within_001(tmp_path):
    """SIREN fitting's acceptance: the small procedural preset, median held-out fraction within 0.01 >= 0.9."""
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("NETSPACE_ACCEPT_THREADS", "2")))
    t0 = time.perf_counter()
    try:
        fit_sdf_zoo(tmp_path / "zoo", "procedural", "small", seed=0, progress=True)
    finally:
        torch.set_num_threads(threads)  # the tests after this one run as before
    took = time.perf_counter() - t0
    within = sorted(e["sdf_within_0.01"] for e in Zoo.open(tmp_path / "zoo").instances())
    median = float(np.median(within))
    print(f"\nsdf small preset: {len(within)} chairs in {took:.0f} s; held-out within 0.01: median {median:.4f}, "
          f"min {within[0]:.4f}, max {within[-1]:.4f}")
    assert median >= 0.9


def test_zoo_info_on_an_sdf_zoo(tmp_path):
    """`netspace zoo info` on an SDF zoo (no image dataset, no accuracies): the SDF fit quality, no traceback."""
    m = archs.build("siren")
    for i, w in enumerate((0.90, 0.96)):
        write_instance(tmp_path, m, id=f"s{i}", arch="siren", dataset=None, protocol="sdf", seed=i, epoch=10, acc={},
                       split="train", sdf={"shape": f"s{i}", "sdf_mse": 1e-4, "sdf_within_0.01": w})
    r = CliRunner().invoke(cli, ["zoo", "info", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "siren [-]: 2 instances" in r.output and "min 0.9000  mean 0.9300  max 0.9600" in r.output
    r = CliRunner().invoke(cli, ["zoo", "info", str(tmp_path), "--json"])
    s = json.loads(r.output)["architectures"]["siren"]
    assert r.exit_code == 0 and s["sdf_within_0.01"]["n"] == 2 and s["test_acc"] is None
