"""netspace_fast/storage.py: files written atomically get the mode a plain ``open(path, "wb")`` gives
them (0o666 minus the process umask), so a zoo on a shared file system is readable to colleagues."""

from __future__ import annotations

import os
import stat

import pytest

from netspace_fast.storage import TMP_PREFIX, atomic_write_bytes


@pytest.fixture
def umask():
    """Set the process umask for the test; the previous one is restored afterwards."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_write_respects_umask(tmp_path, umask, mask):
    umask(mask)
    path = tmp_path / "manifest.json"
    atomic_write_bytes(path, b"first")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    atomic_write_bytes(path, b"second")  # replacing an existing file: the same mode
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert path.read_bytes() == b"second"
    plain = tmp_path / "plain"
    with open(plain, "wb") as f:
        f.write(b"x")
    assert path.stat().st_mode == plain.stat().st_mode  # as open() would
    assert sorted(os.listdir(tmp_path)) == ["manifest.json", "plain"]  # no temporary file left


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_zoo_files_readable_as_the_umask_allows(tmp_path, umask, mask):
    """A zoo's manifest and instance files, written by the zoo format, under the usual shared umask."""
    from netspace_fast import archs
    from netspace_fast.zoo import format as zoo_format

    umask(mask)
    zoo = tmp_path / "zoo"
    zoo_format.init_zoo(zoo, {"preset": "test"})
    zoo_format.write_instance(zoo, archs.build("lenetlike"), id="lenetlike-0", arch="lenetlike", dataset="cifar10",
                              protocol="multi", seed=0, epoch=1, acc={"train": 0.5, "val": 0.5, "test": 0.5},
                              split="train")
    files = sorted(p.name for p in zoo.iterdir())
    assert files == ["lenetlike-0.safetensors", "manifest.json"]
    for name in files:
        assert stat.S_IMODE((zoo / name).stat().st_mode) == 0o666 & ~mask, name


def test_atomic_write_failure_leaves_no_temp_file(tmp_path, monkeypatch):
    def boom(src, dst):
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="simulated crash"):
        atomic_write_bytes(tmp_path / "f.bin", b"data")
    monkeypatch.undo()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(TMP_PREFIX)]
    assert not (tmp_path / "f.bin").exists()
