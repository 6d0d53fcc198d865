"""Kill tests of the zoo job: SIGKILL from outside at random moments and, to hit them for
certain, at every kind of point inside the writes (a checkpoint, an instance file, the manifest:
the temporary file complete but not renamed, or renamed but the directory not fsynced), for both
protocols (the single protocol writes instances mid-run); then the rerun ends with a zoo equal to
an uninterrupted run's, instance by instance (sha256 of every file, every manifest field), with no
leftover temporary or orphan file. Under torchrun one rank is killed inside its checkpoint write
while the other waits at a known point; the rerun proves each rank resumed from exactly its own
checkpoint, and a rerun with another number of ranks is refused in one line naming both counts.

Determinism: training on the CPU with one thread is bit-reproducible given the seed (the
uninterrupted reference is itself run twice and compared), and the kill points are counted
writes, not moments, so every expectation below (which file exists, which epoch a checkpoint
holds, which instances the manifest lists, which epoch a rerun resumes from) is exact. The random
kills (seeded delays) assert only what holds wherever they land: the final zoo.

Every run is a fork of one "zygote" process that imported netspace_fast once (a fresh interpreter
per run would spend ~3 s importing torch); the zygote is the outside process that kills its child.
"""

from __future__ import annotations

import json
import os
import random
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from netspace_fast.storage import TMP_PREFIX, sha256_file
from netspace_fast.zoo import Preset
from netspace_fast.zoo import job as zoo_job
from netspace_fast.zoo.format import Zoo

TINY_SINGLE = Preset("test: single protocol, 2 runs, snapshots 1 and 3", "digits", "single",
                     (("lenetlike", 0, 0, 0),), epochs=3, batch_size=64, lr=1e-4, runs=2, snapshots=(1, 3),
                     crop_pad=0, flip=False)
PRESETS = {"multi": "digits-tiny", "single": "tiny-single"}

_ZYGOTE = r"""
import json, os, sys, time, traceback
import torch
torch.set_num_threads(1)
from netspace_fast.zoo import PRESETS, Preset, train_zoo
from netspace_fast.zoo import job as zoo_job
from netspace_fast import data
for split in ("train", "val", "test"):  # the digits' first load imports and decodes (~2 s): once, here
    data.tensors("digits", split)
for line in sys.stdin:
    req = json.loads(line)
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.environ.update(req["env"])
            if req["preset_repr"]:
                PRESETS[req["preset"]] = eval(req["preset_repr"], {"Preset": Preset})
            if req["rank"] is not None:  # rank r of K, without a process group (the ranks share nothing)
                zoo_job.setup_distributed = lambda device, r=req["rank"], k=req["world"]: (r, k, device, None, False)
            train_zoo(req["out"], req["preset"], progress=True)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    if req["kill_after"] is not None:  # from outside: this process kills its child
        time.sleep(req["kill_after"])
        os.kill(pid, 9)  # (a child that already exited is a zombie until waited for: no other pid is hit)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "wall": time.monotonic() - t0}), flush=True)
"""


class Zygote:
    """A process that imported netspace_fast; each :meth:`run` is a fork of it running ``train_zoo``."""

    def __init__(self, logs: Path) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        for k in ("WORLD_SIZE", "RANK", "NETSPACE_TEST_KILL_AT", "NETSPACE_TEST_HOLD_AT",
                  "NETSPACE_TEST_SIGKILL_AFTER_EPOCH"):
            env.pop(k, None)
        self.proc = subprocess.Popen([sys.executable, "-c", _ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        self.logs, self.n = logs, 0

    def run(self, out: Path, protocol: str, *, kill_at: str | None = None, kill_after: float | None = None,
            rank: int | None = None, world: int = 1) -> tuple[int, str, float]:
        """(exit code, the run's stderr, wall seconds); -9 if it was killed."""
        self.n += 1
        log = self.logs / f"run{self.n}.log"
        req = {"out": str(out), "preset": PRESETS[protocol], "log": str(log), "kill_after": kill_after,
               "preset_repr": repr(TINY_SINGLE) if protocol == "single" else None, "rank": rank, "world": world,
               "env": {"NETSPACE_TEST_KILL_AT": kill_at} if kill_at else {}}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], 600)
        assert ready, f"run {req} did not end within 600 s"
        got = json.loads(self.proc.stdout.readline())
        return got["rc"], log.read_text(), got["wall"]

    def close(self) -> None:
        self.proc.kill()  # (its children have all been waited for)
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("logs"))
    yield z
    z.close()


@pytest.fixture(scope="module")
def reference(zygote, tmp_path_factory):
    """protocol -> (an uninterrupted zoo, its wall seconds); run twice: it must be bit-reproducible,
    or no comparison with a resumed zoo could be exact."""
    base = tmp_path_factory.mktemp("reference")
    refs = {}
    for protocol in PRESETS:
        rc, log, wall = zygote.run(base / protocol, protocol)
        assert rc == 0, log
        rc, log, _ = zygote.run(base / f"{protocol}-again", protocol)
        assert rc == 0, log
        assert_same_zoo(base / f"{protocol}-again", base / protocol)
        refs[protocol] = (base / protocol, wall)
    return refs


def _temps(path: Path) -> list[str]:
    return sorted(p.name for p in path.glob(f"{TMP_PREFIX}*")) if path.is_dir() else []


def assert_same_zoo(got: Path, want: Path, ordered: bool = True) -> None:
    """Same instances with the same files (sha256), the same manifest fields and splits, the same
    files in the folder (no orphan, no temporary file), and no temporary checkpoint left."""
    zg, zw = Zoo.open(got), Zoo.open(want)
    eg, ew = {e["id"]: e for e in zg.instances()}, {e["id"]: e for e in zw.instances()}
    assert sorted(eg) == sorted(ew)
    for i, e in ew.items():
        assert eg[i] == e, i  # every field: accuracies, sha256, split, ...
        assert sha256_file(got / e["file"]) == sha256_file(want / e["file"]) == e["sha256"], i
    if ordered:  # one process writes in a fixed order; ranks race for the manifest lock
        assert zg.splits == zw.splits
    else:
        assert {s: sorted(v) for s, v in zg.splits.items()} == {s: sorted(v) for s, v in zw.splits.items()}
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in want.iterdir())
    assert zg.verify() == []
    assert _temps(got / ".checkpoints") == []


def _ids(out: Path) -> list[str] | None:
    return [e["id"] for e in Zoo.open(out).instances()] if (out / "manifest.json").exists() else None


def _ckpt_epoch(out: Path, name: str = "0-lenetlike.pt") -> int | None:
    f = out / ".checkpoints" / name
    return int(torch.load(f, weights_only=True)["epoch"]) if f.exists() else None


# Each step: (where the run kills itself, the epoch it resumes after (None: it starts over), then on
# disk: the instances in the manifest (None: no manifest yet), the checkpoint's epoch, and which
# temporary file the kill left). Counts are the n-th write of that kind in that run, of one job:
# a fresh run writes the manifest (init), then per epoch [instances: file, manifest]..., checkpoint.
_M = ["lenetlike-000", "lenetlike-001"]
_S = ["lenetlike-r0-e001", "lenetlike-r1-e001", "lenetlike-r0-e003", "lenetlike-r1-e003"]
CHAINS = {
    "multi": [  # 3 epochs, the 2 instances (best on validation) are written at the end
        ("write-tmp.json#1", None, None, None, "manifest.json"),  # the new zoo's first manifest
        ("write-tmp.pt#2", None, [], 1, "0-lenetlike.pt"),  # epoch 2's checkpoint
        ("write-done.pt#1", 1, [], 2, None),  # renamed, directory not fsynced
        ("write-tmp.safetensors#1", 2, [], 3, "lenetlike-000.safetensors"),
        ("write-done.safetensors#1", 3, [], 3, None),  # the file, not yet in the manifest (an orphan)
        ("write-tmp.json#1", 3, [], 3, "manifest.json"),  # the manifest update that records it
        ("write-done.json#1", 3, _M[:1], 3, None),
        (None, 3, _M, 3, None),
    ],
    "single": [  # 3 epochs; snapshots at epochs 1 and 3 are written when reached, before the checkpoint
        ("write-tmp.safetensors#2", None, _S[:1], None, "lenetlike-r1-e001.safetensors"),
        ("write-done.safetensors#1", None, _S[:1], None, None),  # r1-e001 an orphan
        ("write-tmp.json#1", None, _S[:1], None, "manifest.json"),
        ("write-tmp.pt#1", None, _S[:2], None, "0-lenetlike.pt"),
        ("write-done.pt#2", None, _S[:2], 2, None),
        ("write-done.json#1", 2, _S[:3], 2, None),  # r0-e003 recorded, epoch 3's checkpoint not written
        ("write-tmp.pt#1", 2, _S, 2, "0-lenetlike.pt"),
        (None, None, _S, 2, None),  # every instance is in the zoo: nothing to train
    ],
}


@pytest.mark.parametrize("protocol", ["multi", "single"])
def test_killed_inside_every_kind_of_write_then_resumed(zygote, reference, tmp_path, protocol):
    out = tmp_path / "zoo"
    for step, (kill_at, resumed, ids, epoch, temp) in enumerate(CHAINS[protocol]):
        rc, log, _ = zygote.run(out, protocol, kill_at=kill_at)
        where = f"step {step} ({kill_at}):\n{log}"
        assert rc == (-9 if kill_at else 0), where
        said = re.findall(r"resuming after epoch (\d+)", log)
        assert said == ([] if resumed is None else [str(resumed)]), where
        assert _ids(out) == ids, where
        assert _ckpt_epoch(out) == epoch, where
        temps = _temps(out) + _temps(out / ".checkpoints")
        assert [t[len(TMP_PREFIX):].rsplit(".", 1)[0] for t in temps] == ([temp] if temp else []), (temps, where)
    assert_same_zoo(out, reference[protocol][0])


@pytest.mark.parametrize("protocol", ["multi", "single"])
def test_killed_from_outside_at_random_moments_then_resumed(zygote, reference, tmp_path, protocol):
    """Four SIGKILLs at seeded random delays (within an uninterrupted run's duration, so most land in
    training or a write), then a rerun to the end: the zoo of an uninterrupted run, whatever the
    kills hit (a kill may land before anything was saved, or after the run ended: same result)."""
    out = tmp_path / "zoo"
    rng = random.Random(f"kill-{protocol}")
    whole = reference[protocol][1]
    history = []
    for _ in range(4):
        rc, log, wall = zygote.run(out, protocol, kill_after=rng.uniform(0.1, 1.0) * whole)
        history.append((rc, round(wall, 2), re.findall(r"resuming after epoch \d+", log)))
        assert rc in (0, -9), log
    rc, log, _ = zygote.run(out, protocol)
    assert rc == 0, (history, log)
    assert_same_zoo(out, reference[protocol][0])


def _torchrun(out: Path, nproc: int, env_extra: dict | None, logs: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    for k in ("WORLD_SIZE", "RANK", "NETSPACE_TEST_KILL_AT", "NETSPACE_TEST_SIGKILL_AFTER_EPOCH"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "netspace_fast.cli", "zoo", "train", "--preset", "digits-tiny", "--out", str(out)]
    with open(logs / "stdout", "w") as out_f, open(logs / "stderr", "w") as err_f:  # (the child keeps its copies)
        return subprocess.Popen(cmd, stdout=out_f, stderr=err_f, env=env)


def test_torchrun_one_rank_killed_inside_a_write_then_every_rank_resumes(zygote, tmp_path, monkeypatch):
    """digits-tiny under torchrun, 2 ranks (gloo), one instance each. Rank 0 waits after its epoch-2
    checkpoint, rank 1 inside its epoch-2 checkpoint write (the temporary file complete, not
    renamed); then rank 1 is SIGKILLed from outside and torchrun stops rank 0. Known exactly: rank 0
    resumes after epoch 2, rank 1 after epoch 1. A rerun with 1 rank is refused (one line naming 2
    and 1) and changes nothing; a rerun with 3 ranks (the same blocks of instances: rank 0 has none)
    resumes; the torchrun rerun with 2 ranks says that each rank resumed from its own checkpoint.
    Both end with the zoo of an uninterrupted 2-rank run, file by file."""
    import shutil

    out, holds, logs = tmp_path / "two", tmp_path / "holds", tmp_path / "logs"
    holds.mkdir(), logs.mkdir()
    proc = _torchrun(out, 2, {"NETSPACE_TEST_HOLD_DIR": str(holds),
                              "NETSPACE_TEST_HOLD_AT": "checkpoint#2@0,write-tmp.pt#2@1"}, logs)
    try:
        for _ in range(6000):  # both ranks at their points (a hang guard of 600 s, not a timing)
            if (holds / "0").exists() and (holds / "1").exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert proc.poll() is None, (logs / "stderr").read_text()
        assert (holds / "0").exists() and (holds / "1").exists(), (logs / "stderr").read_text()
        os.kill(int((holds / "1").read_text()), 9)  # one rank dies; torchrun stops the other
        assert proc.wait(timeout=300) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ck = out / ".checkpoints"
    assert _ckpt_epoch(out, "0-lenetlike-0-1.pt") == 2 and _ckpt_epoch(out, "0-lenetlike-1-2.pt") == 1
    assert [t[len(TMP_PREFIX):].rsplit(".", 1)[0] for t in _temps(ck)] == ["0-lenetlike-1-2.pt"]
    assert _ids(out) == []
    before = {p.name: p.read_bytes() for p in ck.iterdir()}

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError) as info:  # 1 rank: it would train both instances again from epoch 0
        zoo_job.train_zoo(out, "digits-tiny", progress=False)
    msg = str(info.value)
    assert "\n" not in msg and "0-lenetlike-0-1.pt" in msg
    assert "as trained by 2 ranks; this run has 1 rank: rerun with 2 ranks" in msg
    assert {p.name: p.read_bytes() for p in ck.iterdir()} == before and _ids(out) == []

    # the 2-rank reference, and 3 ranks from the killed zoo: ranks one after the other (no collectives)
    for r in range(2):
        rc, log, _ = zygote.run(tmp_path / "whole", "multi", rank=r, world=2)
        assert rc == 0, log
    shutil.copytree(out, tmp_path / "three")
    said = {}
    for r in range(3):
        rc, log, _ = zygote.run(tmp_path / "three", "multi", rank=r, world=3)
        assert rc == 0, log
        said.update(re.findall(r"rank (\d) of 3: resuming after epoch (\d+)", log))
    assert said == {"1": "2", "2": "1"}
    assert_same_zoo(tmp_path / "three", tmp_path / "whole", ordered=False)

    rerun = _torchrun(out, 2, None, logs)
    assert rerun.wait(timeout=600) == 0, (logs / "stderr").read_text()
    err = (logs / "stderr").read_text()
    assert sorted(re.findall(r"rank \d of 2: resuming after epoch \d+", err)) == [
        "rank 0 of 2: resuming after epoch 2", "rank 1 of 2: resuming after epoch 1"], err
    assert_same_zoo(out, tmp_path / "whole", ordered=False)


@pytest.mark.parametrize("world", [1, 3])
def test_other_rank_count_with_unfinished_checkpoints_is_refused(tmp_path, monkeypatch, world):
    """3 runs killed under 2 ranks (blocks 0..0 and 1..2): 1 or 3 ranks would cut the runs into other
    blocks and train the checkpointed ones again from epoch 0; refused before any work, one line."""
    from netspace_fast.zoo import PRESETS

    monkeypatch.setitem(PRESETS, "three-single", Preset("test: 3 runs", "digits", "single", (("lenetlike", 0, 0, 0),),
                                                        epochs=3, lr=1e-4, runs=3, snapshots=(1, 3), crop_pad=0,
                                                        flip=False))
    monkeypatch.setattr(zoo_job, "setup_distributed", lambda device: (0, world, device, None, False))
    monkeypatch.setattr(zoo_job.data, "tensors", None)  # (loading data would be work: refused before)
    ck = tmp_path / "zoo" / ".checkpoints"
    ck.mkdir(parents=True)
    for name in ("0-lenetlike-0-1.pt", "0-lenetlike-1-3.pt"):  # only the names are read before refusing
        (ck / name).write_bytes(b"")
    with pytest.raises(ValueError) as info:
        zoo_job.train_zoo(tmp_path / "zoo", "three-single", progress=False)
    msg = str(info.value)
    first = {1: "0-lenetlike-0-1.pt' holds lenetlike runs 0..0", 3: "0-lenetlike-1-3.pt' holds lenetlike runs 1..2"}
    assert "\n" not in msg and first[world] in msg
    assert f"as trained by 2 ranks; this run has {world} rank{'s' if world > 1 else ''}: rerun with 2 ranks" in msg
