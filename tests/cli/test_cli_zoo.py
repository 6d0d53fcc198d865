"""The ``netspace`` command line (netspace_fast/cli.py): zoo info / verify / train.

A tiny real zoo (three lenetlike/digits instances, one per split) is written with the zoo_format
API; ``zoo train`` runs against a fake ``netspace_fast.zoo`` module (the real trainer is tested
elsewhere), so these tests only check the CLI's argument handling and error reporting.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

click = pytest.importorskip("click")
from click.testing import CliRunner  # noqa: E402

from netspace_fast import archs  # noqa: E402
from netspace_fast.cli import cli, main  # noqa: E402
from netspace_fast.zoo.format import init_zoo, write_instance  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ACCS = {"z0": 0.50, "z1": 0.60, "z2": 0.70}


def _runner() -> CliRunner:
    return CliRunner()  # click >= 8.2: stdout and stderr kept apart, result.output is both


def _one_line_error(result, *, contains: str = "") -> str:
    """stderr is exactly one 'error: ...' line (mentioning ``contains``) and no traceback."""
    err = result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert contains in lines[0], err
    return lines[0]


@pytest.fixture
def zoo_dir(tmp_path: Path) -> Path:
    d = tmp_path / "zoo"
    init_zoo(d, {"preset": "tiny", "epochs": 1})
    for i, split in enumerate(("train", "val", "test")):
        m = archs.build("lenetlike", "digits")
        write_instance(d, m, id=f"z{i}", arch="lenetlike", dataset="digits", protocol="test", seed=i, epoch=1,
                       acc={"train": 0.9, "val": 0.8, "test": ACCS[f"z{i}"]}, split=split)
    return d


# ---------------------------------------------------------------------------------------------
# zoo info


def test_info_summary(zoo_dir):
    r = _runner().invoke(cli, ["zoo", "info", str(zoo_dir)])
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "schema version: 2" in out
    assert '"preset": "tiny"' in out
    assert "instances: 3 (train 1, val 1, test 1)" in out
    assert "lenetlike [digits]: 3 instances (train 1, val 1, test 1)" in out
    assert "min 0.5000" in out and "mean 0.6000" in out and "max 0.7000" in out


def test_info_json(zoo_dir):
    import json

    r = _runner().invoke(cli, ["zoo", "info", "--json", str(zoo_dir)])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["instances"] == 3 and s["splits"] == {"train": 1, "val": 1, "test": 1}
    a = s["architectures"]["lenetlike"]
    assert a["instances"] == 3 and a["datasets"] == ["digits"]
    assert a["test_acc"]["min"] == pytest.approx(0.5) and a["test_acc"]["max"] == pytest.approx(0.7)
    assert a["test_acc"]["mean"] == pytest.approx(0.6)


def test_info_empty_zoo_and_missing_test_acc(tmp_path):
    d = tmp_path / "z"
    init_zoo(d, None)
    r = _runner().invoke(cli, ["zoo", "info", str(d)])
    assert r.exit_code == 0, r.output
    assert "instances: 0" in r.stdout and "architectures: none" in r.stdout
    write_instance(d, archs.build("lenetlike", "digits"), id="a", arch="lenetlike", dataset="digits",
                   protocol="p", seed=0, epoch=0, acc={"train": 0.1}, split="train")
    r = _runner().invoke(cli, ["zoo", "info", str(d)])
    assert r.exit_code == 0, r.output
    assert "test_acc: none recorded" in r.stdout


@pytest.mark.parametrize("command", ["info", "verify"])
def test_missing_dir_is_one_line_error(tmp_path, command):
    r = _runner().invoke(cli, ["zoo", command, str(tmp_path / "nope")])
    assert r.exit_code == 1
    _one_line_error(r, contains="does not exist")


@pytest.mark.parametrize("command", ["info", "verify"])
def test_not_a_zoo_is_one_line_error(tmp_path, command):
    r = _runner().invoke(cli, ["zoo", command, str(tmp_path)])  # a folder without manifest.json
    assert r.exit_code == 1
    _one_line_error(r, contains="manifest.json")
    (tmp_path / "manifest.json").write_text("{not json")
    r = _runner().invoke(cli, ["zoo", command, str(tmp_path)])
    assert r.exit_code == 1
    _one_line_error(r, contains="malformed zoo manifest")


# ---------------------------------------------------------------------------------------------
# zoo verify


def test_verify_clean(zoo_dir):
    r = _runner().invoke(cli, ["zoo", "verify", str(zoo_dir)])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == "ok: 3 instances verified"
    assert r.stderr == ""


def test_verify_corrupt_file(zoo_dir):
    f = zoo_dir / "z1.safetensors"
    f.write_bytes(f.read_bytes()[:100])  # truncated
    (zoo_dir / "z2.safetensors").unlink()
    r = _runner().invoke(cli, ["zoo", "verify", str(zoo_dir)])
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    assert any(ln.startswith("z1.safetensors: sha256 mismatch") for ln in lines), r.output
    assert any(ln.startswith("z1.safetensors: corrupt") for ln in lines), r.output
    assert any(ln.startswith("z2.safetensors: missing") for ln in lines), r.output
    assert "z0" not in r.stdout
    assert "ok:" not in r.output
    _one_line_error(r, contains="3 problems")


def test_python_m_subprocess(zoo_dir):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "netspace_fast.cli", "zoo", "verify", str(zoo_dir)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "ok: 3 instances verified"
    (zoo_dir / "z0.safetensors").write_bytes(b"garbage")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert p.returncode == 1
    assert "z0.safetensors" in p.stdout
    assert "Traceback" not in p.stderr and p.stderr.startswith("error: ")


def test_main_entry_point(zoo_dir, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["zoo", "verify", str(zoo_dir)])
    assert exc.value.code == 0
    assert "ok: 3 instances verified" in capsys.readouterr().out


def test_help_and_version():
    r = _runner().invoke(cli, ["--help"])
    assert r.exit_code == 0 and "zoo" in r.stdout
    r = _runner().invoke(cli, ["zoo", "--help"])
    assert r.exit_code == 0 and all(c in r.stdout for c in ("info", "verify", "train"))
    r = _runner().invoke(cli, ["--version"])
    assert r.exit_code == 0 and r.stdout.startswith("netspace ")


# ---------------------------------------------------------------------------------------------
# zoo train (fake trainer module)


@pytest.fixture
def fake_zoo(monkeypatch):
    mod = types.ModuleType("netspace_fast.zoo")
    mod.PRESETS = {"tiny": "a tiny zoo", "paper": "the paper's zoo"}
    mod.calls = []
    mod.raise_ = None

    def train_zoo(out_dir, preset, **kwargs):
        mod.calls.append((out_dir, preset, kwargs))
        if mod.raise_ is not None:
            raise mod.raise_

    mod.train_zoo = train_zoo
    import netspace_fast

    monkeypatch.setitem(sys.modules, "netspace_fast.zoo", mod)
    monkeypatch.setattr(netspace_fast, "zoo", mod, raising=False)
    return mod


def test_train_passes_arguments(fake_zoo, tmp_path):
    out, root = tmp_path / "out", tmp_path / "data"
    r = _runner().invoke(cli, ["zoo", "train", "--preset", "tiny", "--out", str(out), "--root", str(root),
                               "--seed", "7", "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert fake_zoo.calls == [(out, "tiny", {"root": root, "seed": 7, "device": "cpu", "progress": False})]
    assert str(out) in r.stdout


def test_train_tensorboard_option(fake_zoo, tmp_path):
    r = _runner().invoke(cli, ["zoo", "train", "--preset", "tiny", "--out", str(tmp_path / "o"),
                               "--tensorboard", str(tmp_path / "tb")])
    assert r.exit_code == 0, r.output
    assert fake_zoo.calls == [(tmp_path / "o", "tiny", {"progress": True, "tensorboard": tmp_path / "tb"})]


def test_train_config_file(fake_zoo, tmp_path):
    """``--config FILE``: the YAML's values are the options (the required --preset included); a flag
    on the command line wins over the file; an unknown key is one error line, exit 2."""
    cfg = tmp_path / "zoo.yaml"
    cfg.write_text(f"preset: paper\nout: {tmp_path / 'o'}\nseed: 3\nno-progress: true\n")
    r = _runner().invoke(cli, ["zoo", "train", "--config", str(cfg), "--seed", "5"])
    assert r.exit_code == 0, r.output
    assert fake_zoo.calls == [(tmp_path / "o", "paper", {"seed": 5, "progress": False})]
    cfg.write_text("preset: paper\nepochz: 3\n")
    r = _runner().invoke(cli, ["zoo", "train", "--config", str(cfg), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "unknown key 'epochz'" in r.output and "Traceback" not in r.output


def test_train_defaults_left_to_trainer(fake_zoo, tmp_path):
    r = _runner().invoke(cli, ["zoo", "train", "--preset", "paper", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert fake_zoo.calls == [(tmp_path / "o", "paper", {"progress": True})]


def test_train_unknown_preset(fake_zoo, tmp_path):
    r = _runner().invoke(cli, ["zoo", "train", "--preset", "huge", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    line = _one_line_error(r, contains="'huge'")
    assert "paper" in line and "tiny" in line
    assert fake_zoo.calls == []


def test_train_bad_device_and_missing_options(fake_zoo, tmp_path):
    r = _runner().invoke(cli, ["zoo", "train", "--preset", "tiny", "--out", str(tmp_path), "--device", "tpu"])
    assert r.exit_code == 2 and "tpu" in r.stderr
    r = _runner().invoke(cli, ["zoo", "train", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--preset" in r.stderr
    assert fake_zoo.calls == []


@pytest.mark.parametrize("exc", [ValueError("zoo 'o' was created with a different configuration"),
                                 FileNotFoundError("dataset root 'data' does not exist")])
def test_train_library_error_is_one_line(fake_zoo, tmp_path, exc):
    fake_zoo.raise_ = exc
    r = _runner().invoke(cli, ["zoo", "train", "--preset", "tiny", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1
    _one_line_error(r, contains=str(exc))
    assert "Traceback" not in r.output


def test_train_bug_is_not_swallowed(fake_zoo, tmp_path):
    fake_zoo.raise_ = RuntimeError("internal bug")
    r = _runner().invoke(cli, ["zoo", "train", "--preset", "tiny", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1
    assert isinstance(r.exception, RuntimeError)  # a real bug keeps its traceback


def test_train_without_trainer(monkeypatch, tmp_path):
    mod = types.ModuleType("netspace_fast.zoo")  # no train_zoo
    monkeypatch.setitem(sys.modules, "netspace_fast.zoo", mod)
    import netspace_fast

    monkeypatch.setattr(netspace_fast, "zoo", mod, raising=False)
    r = _runner().invoke(cli, ["zoo", "train", "--preset", "tiny", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1
    _one_line_error(r, contains="train_zoo")
