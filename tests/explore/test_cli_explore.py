"""The exploration commands of the ``netspace`` CLI and the shared ``--config FILE`` (YAML) option:
files written, CSV columns, and user mistakes as one ``error: ...`` line with a non-zero exit."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from netspace_fast.cli import cli


def _run(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    return r.exit_code, r.output


def _one_error_line(code, out, *words):
    assert code != 0, out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out, out
    for w in words:
        assert w in lines[0], (w, out)


@pytest.mark.parametrize("command", ["interpolate", "sample-unseen", "optimize", "export", "visualize", "train",
                                     "eval"])
def test_help(command):
    code, out = _run(command, "--help")
    assert code == 0 and "Usage: " in out
    if command != "train":
        assert "--config" in out and "--device" in out


def test_interpolate_cli(single_run, tmp_path):
    code, out = _run("interpolate", single_run, "--a", "lenetlike-0", "--b", "lenetlike-2", "--steps", "4", "--out",
                     tmp_path / "o", "--no-progress")
    assert code == 0, out
    assert "raw weights" in out and "done:" in out
    with open(tmp_path / "o" / "interpolation.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and list(rows[0]) == ["step", "alpha", "embedding_acc", "weights_acc", "predicted_class_id",
                                                "predicted_arch"]
    assert (tmp_path / "o" / "interpolation.png").is_file()


def test_config_file_and_flags(single_run, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run: {single_run}\na: lenetlike-0\nb: lenetlike-3\nsteps: 5\nout: {tmp_path / 'o'}\n")
    code, out = _run("interpolate", "--config", cfg, "--steps", "3")  # the flag wins over the file
    assert code == 0, out
    with open(tmp_path / "o" / "interpolation.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    cfg.write_text("stepz: 3\n")
    _one_error_line(*_run("interpolate", single_run, "--config", cfg), "unknown key 'stepz'", "valid keys", "steps")
    cfg.write_text("steps: [1\n")
    _one_error_line(*_run("interpolate", single_run, "--config", cfg), "not valid YAML")
    cfg.write_text("- 1\n- 2\n")
    _one_error_line(*_run("interpolate", single_run, "--config", cfg), "mapping")
    _one_error_line(*_run("interpolate", single_run, "--config", tmp_path / "missing.yaml"))


def test_train_config(single_zoo, tmp_path):
    cfg = tmp_path / "t.yaml"
    cfg.write_text(f"zoo: {single_zoo}\npreset: digits-tiny-single\nepochs: 3\nno-progress: true\n")
    code, out = _run("train", "single", "--config", cfg, "--out", tmp_path / "run", "--epochs", "1")
    assert code == 0, out
    config = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert config["epochs"] == 1 and config["preset"] == "digits-tiny-single"
    cfg.write_text(f"zoo: {single_zoo}\npreset: no-such-preset\n")
    _one_error_line(*_run("train", "single", "--config", cfg, "--out", tmp_path / "run2"), "unknown",
                    "no-such-preset")


def test_export_visualize_optimize_cli(single_run, multi_run, tmp_path):
    code, out = _run("export", single_run, "--id", "lenetlike-3", "--out", tmp_path / "n.safetensors")
    assert code == 0 and (tmp_path / "n.safetensors").is_file(), out
    save_file({"embedding": torch.zeros(256)}, str(tmp_path / "z.safetensors"))
    code, out = _run("export", single_run, "--embedding", tmp_path / "z.safetensors", "--out", tmp_path / "m.safetensors")
    assert code == 0 and "lenetlike (digits)" in out, out
    code, out = _run("visualize", multi_run, "--id", "lenetlike-0", "--out", tmp_path / "p.png")
    assert code == 0 and (tmp_path / "p.png").is_file(), out
    code, out = _run("optimize", single_run, "--from", "lenetlike-0", "--steps", "2", "--eval-every", "1",
                     "--image-batch", "16", "--out", tmp_path / "opt", "--no-progress")
    assert code == 0, out
    assert sorted(p.name for p in (tmp_path / "opt").iterdir()) == [
        "best.safetensors", "best_embedding.safetensors", "curve.csv", "curve.png", "summary.json"]
    assert "best: step" in out


def test_sample_unseen_cli(multi_run, tmp_path):
    code, out = _run("sample-unseen", multi_run, "--alphas", "0.5", "--out", tmp_path / "u", "--no-progress")
    assert code == 0, out
    assert "arch,source,count,mean,min,max" in out and "vanillacnn,zoo,1," in out and "resnet8,zoo,1," in out
    assert {p.name for p in (tmp_path / "u").iterdir()} == {"samples.csv", "table.csv", "unseen.png"}


def test_user_mistakes(single_run, multi_run, tmp_path):
    _one_error_line(*_run("interpolate", tmp_path / "nowhere", "--a", "x", "--b", "y", "--out", tmp_path / "o"),
                    "not a run folder")
    _one_error_line(*_run("interpolate", single_run, "--a", "lenetlike-0", "--b", "nope", "--out", tmp_path / "o"),
                    "no instance 'nope'")
    _one_error_line(*_run("sample-unseen", single_run, "--out", tmp_path / "u"), "Single-Architecture",
                    "Multi-Architecture")
    _one_error_line(*_run("sample-unseen", multi_run, "--alphas", "a,b", "--out", tmp_path / "u"), "--alphas")
    _one_error_line(*_run("optimize", single_run, "--out", tmp_path / "o"), "--from", "--random")
    _one_error_line(*_run("optimize", single_run, "--random", "--from", "lenetlike-0", "--out", tmp_path / "o"))
    _one_error_line(*_run("optimize", single_run, "--random", "--arch", "resnet8", "--out", tmp_path / "o"),
                    "arch")
    _one_error_line(*_run("optimize", single_run, "--random", "--steps", "0", "--out", tmp_path / "o"), "steps")
    _one_error_line(*_run("export", single_run, "--out", tmp_path / "n.safetensors"), "--id", "--embedding")
    _one_error_line(*_run("export", single_run, "--embedding", tmp_path / "missing.safetensors", "--out",
                          tmp_path / "n.safetensors"), "embedding")
    _one_error_line(*_run("visualize", single_run, "--id", "resnet8-5", "--out", tmp_path / "p.png"),
                    "no instance 'resnet8-5'")
    (tmp_path / "notrun").mkdir()
    (tmp_path / "notrun" / "run.json").write_text(json.dumps({"schema": 1, "command": "train sdf", "config": {}}))
    _one_error_line(*_run("visualize", tmp_path / "notrun", "--id", "x", "--out", tmp_path / "p.png"), "SDF run")
    if not torch.cuda.is_available():
        _one_error_line(*_run("visualize", single_run, "--id", "lenetlike-0", "--out", tmp_path / "p.png", "--device",
                              "cuda"), "CUDA")
