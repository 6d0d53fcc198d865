"""Every command as a careless user meets it: an output path that names a run, a zoo or a file they
own is refused before any work (one ``error:`` line naming the folder and what it is, exit 2) and
leaves the run or zoo byte for byte as it was; a mistake (no GPU, a bad number, a start that fails
on its inputs, a file of the wrong kind) is one ``error:`` line, a non-zero exit, and nothing left
behind. Uses the exploration fixtures (tests/explore/conftest.py): a small digits zoo and one-epoch
runs on it."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from netspace_fast.cli import cli
from netspace_fast.zoo.format import Zoo, init_zoo

NO_CUDA = not torch.cuda.is_available()


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _one_error(r, *words, code: int | None = None) -> str:
    """stderr is exactly one 'error: ...' line holding ``words``; no traceback; a non-zero exit."""
    assert r.exit_code != 0, r.output
    if code is not None:
        assert r.exit_code == code, (r.exit_code, r.output)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> sha256): what must not change."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def run_copy(single_run, tmp_path):
    """A private copy of the Single run whose config points at the package's zoo."""
    dst = tmp_path / "run"
    shutil.copytree(single_run, dst)
    return dst


@pytest.fixture
def zoo_copy(single_zoo, tmp_path):
    dst = tmp_path / "zoo"
    shutil.copytree(single_zoo, dst)
    return dst


def _member_file(zoo: Path) -> Path:
    z = Zoo.open(zoo)
    return zoo / z.instances()[0]["file"]


# ---------------------------------------------------------------------------------------------
# no command writes over a run or a zoo


def _writing_commands(run: Path, zoo: Path, tmp: Path):
    """(name, argv, the folder named as owner) for every command that writes, each aimed at a run, a
    zoo or one of their files."""
    member = _member_file(zoo)
    ckpt = tmp / "ckpt.pt"
    ckpt.write_bytes(b"PK\x03\x04")  # never read: the output is refused first
    lists = tmp / "train.txt"
    lists.write_text("")
    return [
        ("optimize --out RUN", ["optimize", run, "--random", "--steps", "1", "--out", run], run),
        ("export --out RUN/best.safetensors", ["export", run, "--id", "lenetlike-0", "--out",
                                               run / "best.safetensors"], run),
        ("export --out ZOO/member", ["export", run, "--id", "lenetlike-0", "--out", member], zoo),
        ("eval --csv RUN/best.json", ["eval", run, "--split", "test", "--csv", run / "best.json"], run),
        ("visualize --out RUN/state.json", ["visualize", run, "--id", "lenetlike-0", "--out", run / "state.json"],
         run),
        ("interpolate --out ZOO", ["interpolate", run, "--a", "lenetlike-0", "--b", "lenetlike-1", "--out", zoo], zoo),
        ("sample-unseen --out RUN", ["sample-unseen", run, "--out", run], run),
        ("audit --out RUN", ["audit", run, "--out", run], run),
        ("probe --out RUN", ["probe", run, "--out", run], run),
        ("train single --out ZOO", ["train", "single", "--zoo", zoo, "--out", zoo], zoo),
        ("train multi --tensorboard RUN", ["train", "multi", "--zoo", zoo, "--out", tmp / "new",
                                           "--tensorboard", run], run),
        ("train sdf --out ZOO", ["train", "sdf", "--zoo", zoo, "--out", zoo], zoo),
        ("zoo train --out RUN", ["zoo", "train", "--preset", "digits-single", "--out", run], run),
        ("zoo train --tensorboard ZOO/.checkpoints", ["zoo", "train", "--preset", "digits-single", "--out",
                                                      tmp / "z2", "--tensorboard", zoo / ".checkpoints"], zoo),
        ("zoo import --out RUN", ["zoo", "import", lists, "--out", run], run),
        ("zoo fit-sdf --out RUN", ["zoo", "fit-sdf", "--shapes", "procedural", "--out", run], run),
        ("import-checkpoint --out ZOO", ["import-checkpoint", ckpt, "--out", zoo, "--arch", "lenetlike",
                                         "--dataset", "digits"], zoo),
        ("demo --out ZOO", ["demo", "--out", zoo, "--size", "smoke"], zoo),
        ("shapes extract-chairs --out RUN", ["shapes", "extract-chairs", tmp, "--out", run], run),
    ]


def test_every_writing_command_refuses_a_run_or_a_zoo(run_copy, zoo_copy, tmp_path):
    cases = _writing_commands(run_copy, zoo_copy, tmp_path)
    before = {run_copy: _snapshot(run_copy), zoo_copy: _snapshot(zoo_copy)}
    for name, argv, owner in cases:
        r = _invoke(*argv)
        line = _one_error(r, code=2)
        kind = "run" if owner == run_copy else "zoo"
        assert str(owner) in line and kind in line, (name, line)
        assert "write" in line, (name, line)  # and where to write instead
        for folder, snap in before.items():
            assert _snapshot(folder) == snap, (name, folder)
    assert not (tmp_path / "new").exists() and not (tmp_path / "z2").exists()


def test_every_writing_command_is_covered(run_copy, zoo_copy, tmp_path):
    """The table above names every command that takes an output: a new command must join it."""
    from netspace_fast.cli.base import _Output

    def walk(group, prefix=()):
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                yield from walk(cmd, prefix + (name,))
            else:
                yield " ".join(prefix + (name,)), cmd

    writing = {path for path, cmd in walk(cli) if any(isinstance(p.type, _Output) for p in cmd.params)}
    covered = {name.split(" --")[0] for name, _, _ in _writing_commands(run_copy, zoo_copy, tmp_path)}
    assert writing == covered, writing ^ covered


def test_a_subfolder_of_a_run_is_fine(run_copy, tmp_path):
    before = _snapshot(run_copy)
    r = _invoke("export", run_copy, "--id", "lenetlike-0", "--out", run_copy / "exports" / "net.safetensors")
    assert r.exit_code == 0, r.output
    assert (run_copy / "exports" / "net.safetensors").is_file()
    r = _invoke("eval", run_copy, "--split", "test", "--csv", run_copy / "eval" / "rows.csv")
    assert r.exit_code == 0, r.output
    after = _snapshot(run_copy)
    assert {k: v for k, v in after.items() if k in before} == before  # the run's own files untouched


def test_resuming_a_run_with_its_own_command_is_not_refused(single_zoo, tmp_path):
    out = tmp_path / "r"
    args = ["train", "single", "--zoo", single_zoo, "--out", out, "--preset", "digits-tiny-single", "--epochs", "1",
            "--no-progress"]
    assert _invoke(*args).exit_code == 0
    r = _invoke(*args)  # a rerun of a finished run: resumed, nothing to do
    assert r.exit_code == 0, r.output


def test_library_writers_refuse_too(run_copy, zoo_copy):
    """The Python API: the same rule where the files are written."""
    from netspace_fast.explore import export_network, visualize

    before = _snapshot(run_copy)
    with pytest.raises(ValueError, match="run"):
        export_network(run_copy, run_copy / "best.safetensors", id="lenetlike-0")
    with pytest.raises(ValueError, match="zoo"):
        visualize(run_copy, "lenetlike-0", _member_file(zoo_copy))
    assert _snapshot(run_copy) == before


def test_demo_fresh_deletes_only_a_demo_folder(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    _one_error(_invoke("demo", "--out", mine, "--fresh", "--size", "smoke", "--no-progress"), "thesis.tex",
               "--fresh")
    assert (mine / "thesis.tex").read_text() == "years of work"


# ---------------------------------------------------------------------------------------------
# mistakes: one line, nothing left behind


@pytest.mark.skipif(not NO_CUDA, reason="a machine with a GPU runs these commands")
@pytest.mark.parametrize("argv", [
    ["zoo", "train", "--preset", "digits-single", "--out", "{tmp}/z", "--device", "cuda"],
    ["train", "single", "--zoo", "{zoo}", "--out", "{tmp}/r", "--device", "cuda"],
    ["train", "multi", "--zoo", "{zoo}", "--out", "{tmp}/r", "--device", "cuda"],
    ["train", "sdf", "--zoo", "{zoo}", "--out", "{tmp}/r", "--device", "cuda"],
    ["zoo", "fit-sdf", "--shapes", "procedural", "--out", "{tmp}/z", "--device", "cuda"],
    ["eval", "{run}", "--device", "cuda"],
    ["interpolate", "{run}", "--a", "lenetlike-0", "--b", "lenetlike-1", "--out", "{tmp}/i", "--device", "cuda"],
    ["optimize", "{run}", "--random", "--out", "{tmp}/o", "--device", "cuda"],
    ["demo", "--out", "{tmp}/d", "--device", "cuda"],
])
def test_no_gpu_is_one_line_and_nothing_written(argv, single_zoo, single_run, tmp_path):
    args = [a.format(tmp=tmp_path, zoo=single_zoo, run=single_run) for a in argv]
    _one_error(_invoke(*args), "--device", "cuda", code=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("epochs", ["0", "-1"])
def test_epochs_below_one(single_zoo, tmp_path, epochs):
    _one_error(_invoke("train", "single", "--zoo", single_zoo, "--out", tmp_path / "r", "--epochs", epochs),
               "--epochs", code=2)
    assert not (tmp_path / "r").exists()


def test_a_failed_start_leaves_nothing_and_a_retry_works(single_zoo, tmp_path):
    out = tmp_path / "r"
    # a Multi space needs the zoo's ResNet56 teacher, which this zoo does not have
    r = _invoke("train", "multi", "--zoo", single_zoo, "--out", out, "--preset", "digits-tiny-multi", "--no-progress",
                "--tensorboard", tmp_path / "tb")
    _one_error(r)
    assert not out.exists() and not (tmp_path / "tb").exists()
    r = _invoke("train", "single", "--zoo", single_zoo, "--out", out, "--preset", "digits-tiny-single", "--epochs",
                "1", "--no-progress")
    assert r.exit_code == 0, r.output
    assert (out / "run.json").is_file() and (out / "state.json").is_file()


def test_another_configuration_is_one_line_naming_the_difference(single_zoo, tmp_path):
    out = tmp_path / "r"
    base = ["train", "single", "--zoo", single_zoo, "--out", out, "--preset", "digits-tiny-single", "--epochs", "1",
            "--no-progress"]
    assert _invoke(*base).exit_code == 0
    line = _one_error(_invoke(*base, "--seed", "3"), "seed", "0", "3")
    assert "another configuration" in line


def test_an_sdf_zoo_for_train_single(tmp_path):
    sdf = tmp_path / "sdfzoo"
    init_zoo(sdf, {"kind": "sdf", "seed": 0})
    _one_error(_invoke("train", "single", "--zoo", sdf, "--out", tmp_path / "r"), "SDF zoo", "train sdf")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("content,what", [(b"just some notes\n", "text file"), (b'{"epoch": 3}\n', "JSON file"),
                                          (b"", "empty file")])
def test_import_checkpoint_of_the_wrong_kind(tmp_path, content, what):
    f = tmp_path / "ckpt.pt"
    f.write_bytes(content)
    r = _invoke("import-checkpoint", f, "--out", tmp_path / "r", "--arch", "lenetlike", "--dataset", "digits")
    _one_error(r, what, "torch.save")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv,words", [
    (["interpolate", "{run}", "--a", "lenetlike-0", "--b", "lenetlike-1", "--out", "{tmp}/i", "--steps", "100000000"],
     ("--steps", "100000", "GB")),
    (["interpolate", "{run}", "--a", "lenetlike-0", "--b", "lenetlike-1", "--out", "{tmp}/i", "--steps", "1"],
     ("--steps",)),
    (["interpolate", "{run}", "--a", "lenetlike-0", "--b", "lenetlike-1", "--out", "{tmp}/i", "--chunk", "0"],
     ("--chunk",)),
    (["optimize", "{run}", "--random", "--out", "{tmp}/o", "--lr", "-1"], ("--lr",)),
    (["optimize", "{run}", "--random", "--out", "{tmp}/o", "--steps", "0"], ("--steps",)),
    (["optimize", "{run}", "--random", "--out", "{tmp}/o", "--eval-every", "0"], ("--eval-every",)),
    (["audit", "{run}", "--out", "{tmp}/a", "--images", "0"], ("--images",)),
    (["sample-unseen", "{run}", "--out", "{tmp}/u", "--alphas", "0.5,2"], ("--alphas",)),
    (["train", "sdf", "--zoo", "{tmp}", "--out", "{tmp}/r", "--target", "1.5"], ("--target",)),
    (["eval", "{run}", "--split", "everything"], ("--split",)),
    (["zoo", "train", "--out", "{tmp}/z"], ("--preset",)),
    (["zoo", "train", "--preset", "digits-single", "--out", "{tmp}/z", "--arch", ":f"], ("arch", "module name")),
    (["optimize", "{run}", "--random", "--out", "{tmp}/o", "--arch", "nosuchpkg.mod:f"], ("arch", "nosuchpkg")),
])
def test_bad_numbers_and_usage_are_one_line_exit_2(argv, words, single_run, tmp_path):
    args = [a.format(tmp=tmp_path, run=single_run) for a in argv]
    _one_error(_invoke(*args), *words, code=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_state_json_is_strict_json(tmp_path):
    """A diverged epoch's NaN metric is written as null: strict JSON readers accept the file."""
    from netspace_fast.space.nets import Decoder, Encoder, SpaceConfig
    from netspace_fast.space.run import Run

    run = Run.create_or_resume(tmp_path / "r", "train single", {"seed": 0})
    assert not (tmp_path / "r").exists()  # nothing written before the first weights
    cfg = SpaceConfig(8, 16, embed=64, view=8, dec_a=8, dec_b=8, dec_c=8)
    enc, dec = Encoder(cfg), Decoder(cfg)
    opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()))
    run.save_checkpoint(enc, dec, opt, {"epoch": 1, "best_score": float("nan"),
                                        "history": [{"epoch": 1, "loss": float("inf"), "val": {"gap": float("nan")}}]})

    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    state = json.loads((tmp_path / "r" / "state.json").read_text(), parse_constant=refuse)
    assert state["best_score"] is None and state["history"][0]["loss"] is None
    assert state["history"][0]["val"]["gap"] is None
    assert (tmp_path / "r" / "run.json").is_file()
