"""Files that survive a crash: the one atomic-write helper of the zoo format, the zoo checkpoints
and (next) NetSpace runs.

:func:`atomic_write_bytes` writes a temporary file in the target's directory, flushes and fsyncs
it, moves it over the target with :func:`os.replace` and fsyncs the directory: a crash at any
point leaves either the previous or the new version of the file, never a partial one.
:func:`locked` serializes read-modify-write updates of one directory's files between processes
(an advisory ``flock`` on the directory). Temporary files start with :data:`TMP_PREFIX`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import secrets
from pathlib import Path

from .killpoint import reached

TMP_PREFIX = ".tmp-"

__all__ = ["TMP_PREFIX", "atomic_write_bytes", "fsync_dir", "load_error_reason", "locked", "sha256_bytes", "sha256_file",
           "config_differences", "strict_json"]


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems refuse fsync on a directory; the data is still replaced
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _create_temp(directory: Path, prefix: str) -> tuple[int, str]:
    """A new file ``directory/prefix<random>`` opened for writing, created with mode 0o666 so the
    process umask applies (and a default ACL of the directory) as for any ``open(path, "w")``;
    :func:`tempfile.mkstemp` would make it 0o600, unreadable to the colleagues of a shared zoo."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = os.path.join(directory, prefix + secrets.token_hex(6))
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no unused temporary name {prefix}* in {str(directory)!r}")


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, replace, fsync dir).

    The file gets the mode a plain ``open(path, "wb")`` would create: 0o666 minus the process umask."""
    path = Path(path)
    directory = path.parent
    fd, tmp = _create_temp(directory, f"{TMP_PREFIX}{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        reached(f"write-tmp{path.suffix}")  # test hook (netspace_fast.killpoint): a kill inside the write
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    reached(f"write-done{path.suffix}")
    fsync_dir(directory)


@contextlib.contextmanager
def locked(directory: Path):
    """An exclusive advisory lock on ``directory`` for a read-modify-write of its files."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def strict_json(obj):
    """``obj`` with every NaN or infinite float replaced by None: what strict JSON readers accept (a
    metric of a diverged epoch is written as null, not as a bare NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def config_differences(old, new, whose: str = "the existing", prefix: str = "") -> list[str]:
    """Where two JSON configurations differ: one short phrase per differing key (a dotted path), with
    both values (``whose`` names the first: "the run's"), for a one-line refusal to resume."""
    def shown(v) -> str:
        text = json.dumps(v, sort_keys=True)
        return text if len(text) <= 60 else text[:57] + "..."

    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            name = f"{prefix}{k}"
            if k not in old:
                out.append(f"{name}: not in {whose[:-2] if whose.endswith(chr(39) + 's') else whose} configuration, "
                           f"given {shown(new[k])}")
            elif k not in new:
                out.append(f"{name}: {whose} {shown(old[k])}, not given")
            else:
                out += config_differences(old[k], new[k], whose, name + ".")
        return out
    if old == new:
        return []
    return [f"{prefix[:-1] or 'config'}: {whose} {shown(old)}, given {shown(new)}"]


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # terminal colour codes in torch's messages


def load_state_dict_file(path, where: str) -> dict:
    """A state dict saved with ``torch.save`` (a mapping of names to tensors), read with
    ``torch.load(..., weights_only=True)``: nothing is unpickled. Anything else is a ValueError of one
    line starting with ``where`` (the file and what it is for), and why (:func:`load_error_reason`)."""
    from collections.abc import Mapping

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the unpickler's refusals come in many types
        raise ValueError(f"{where} is not a state dict torch.load(..., weights_only=True) can read "
                         f"({load_error_reason(e)})") from None
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in state.items()):
        raise ValueError(f"{where}: expected a state dict (a mapping of names to tensors), found "
                         f"{type(state).__name__}")
    return dict(state)


def load_error_reason(e: Exception) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, on one line (at most 300 characters):
    the unpickler's own words (which global, which opcode), without torch's advice to trust the file."""
    lines = [line.strip() for line in _ANSI.sub("", str(e)).splitlines() if line.strip()]
    if not lines or not lines[0].startswith("Weights only load failed"):
        return f"{type(e).__name__}: {' '.join(lines)}"[:300]
    why = []
    for line in lines[1:]:
        if "WeightsUnpickler error:" in line:
            line = line.split("WeightsUnpickler error:", 1)[1].strip()
        elif line.startswith(("(1)", "(2)", "Check the documentation")):
            continue
        line = line.split(" Please use", 1)[0]
        if line:
            why.append(line)
    return (f"{type(e).__name__}: it pickles objects other than tensors, numbers and containers, which "
            f"weights_only refuses" + (f": {' '.join(why)}" if why else ""))[:300]
