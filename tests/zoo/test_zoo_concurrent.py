"""The manifest lock under contention (netspace_fast/zoo/format.py ``write_instance``, the directory
lock ``netspace_fast.storage.locked``): several processes write different instances into one zoo at
the same time, as the ranks of a distributed ``zoo train`` do. Nothing may be lost (every instance
in the manifest, in its split, exactly once), nothing torn (the manifest is valid JSON at every
moment a reader looks, and never loses an entry it had; every file's sha256 matches, no orphan or
temporary file: ``Zoo.verify()``), every stored state dict is the one its writer meant, and an
instance that every writer writes (identical weights and metadata, as a resumed rank may) is
recorded once.

Without the lock, two writers read the same manifest and the later ``os.replace`` drops the other's
entry: this test then fails (lost instances, orphan files, a reader seeing the count go down).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch

from netspace_fast import archs
from netspace_fast.zoo.format import MANIFEST_NAME, Zoo

WRITERS, PER_WRITER = 2, 9
SPLITS = ("train", "val", "test")

WORKER = r"""
import os, sys, time
import torch
from netspace_fast import archs
from netspace_fast.zoo.format import write_instance

zoo, k, n, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(1)
models = []
for i in range(n):
    torch.manual_seed(1000 * k + i)
    models.append(archs.build("lenetlike", "digits"))
open(f"{go}.ready{k}", "w").close()
while not os.path.exists(go):  # start together
    time.sleep(0.0005)
torch.manual_seed(99)
shared = archs.build("lenetlike", "digits")  # the same instance from every writer: recorded once
for i, m in enumerate(models):
    write_instance(zoo, m, id=f"w{k}-{i}", arch="lenetlike", dataset="digits", protocol="concurrent",
                   seed=1000 * k + i, epoch=1, acc={"train": 0.5}, split=("train", "val", "test")[i % 3])
    if i == n // 2:
        write_instance(zoo, shared, id="shared", arch="lenetlike", dataset="digits", protocol="concurrent",
                       seed=99, epoch=1, acc={"train": 0.5}, split="train")
"""


def _expected_state(k: int, i: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(1000 * k + i)
    return archs.build("lenetlike", "digits").state_dict()


def test_concurrent_writers_lose_nothing(tmp_path):
    zoo = tmp_path / "zoo"  # created by the writers themselves (write_instance makes it if absent)
    go = tmp_path / "go"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(zoo), str(k), str(PER_WRITER), str(go)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(WRITERS)]
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"go.ready{k}").exists() for k in range(WRITERS)):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs if p.poll() is not None]
            assert time.monotonic() < deadline, "writers did not start"
            time.sleep(0.01)
        go.touch()
        # read the manifest while they write: always valid JSON, never fewer entries than before
        reads, seen = 0, 0
        while any(p.poll() is None for p in procs):
            try:
                data = (zoo / MANIFEST_NAME).read_bytes()
            except FileNotFoundError:
                continue
            count = len(json.loads(data)["instances"])  # a torn manifest would not parse
            assert count >= seen, f"the manifest lost entries while being written: {seen} -> {count}"
            seen, reads = count, reads + 1
            time.sleep(0.001)
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert reads > 0

    manifest = json.loads((zoo / MANIFEST_NAME).read_text())
    ids = sorted(["shared"] + [f"w{k}-{i}" for k in range(WRITERS) for i in range(PER_WRITER)])
    got = [e["id"] for e in manifest["instances"]]
    assert sorted(got) == ids, f"lost: {sorted(set(ids) - set(got))}, duplicated: {len(got) - len(set(got))}"
    for s, split in enumerate(SPLITS):
        assert sorted(manifest["splits"][split]) == sorted([f"w{k}-{i}" for k in range(WRITERS)
                                                            for i in range(PER_WRITER) if i % 3 == s]
                                                           + (["shared"] if split == "train" else []))
    z = Zoo.open(zoo)
    assert z.verify() == []  # every sha256, no orphan file, no temporary file
    assert len(z) == WRITERS * PER_WRITER + 1
    assert sorted(os.listdir(zoo)) == sorted([MANIFEST_NAME] + [f"{i}.safetensors" for i in ids])
    for k in range(WRITERS):
        for i in range(PER_WRITER):
            sd = z.state_dict(f"w{k}-{i}")
            want = _expected_state(k, i)
            assert sd.keys() == want.keys()
            assert all(torch.equal(sd[n], want[n]) for n in want), f"w{k}-{i}"
            assert z.entry(f"w{k}-{i}")["seed"] == 1000 * k + i
    torch.manual_seed(99)
    want = archs.build("lenetlike", "digits").state_dict()
    assert all(torch.equal(z.state_dict("shared")[n], want[n]) for n in want)
