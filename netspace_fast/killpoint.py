"""Test hooks of the long jobs: points where a test makes the process die (or wait to be killed).

Nothing happens unless one of these environment variables is set (a test sets them):

- ``NETSPACE_TEST_SIGKILL_AFTER_EPOCH=k``: SIGKILL right after epoch k's checkpoint is written
  (:func:`after_checkpoint`; the zoo and NetSpace resume tests send it).
- ``NETSPACE_TEST_KILL_AT=SPEC[,SPEC...]``: SIGKILL at the n-th time this process reaches a named
  point (:func:`reached`), e.g. inside an atomic write, between the temporary file and the rename.
- ``NETSPACE_TEST_HOLD_AT=SPEC[,SPEC...]``: at that moment, write this process's pid to
  ``$NETSPACE_TEST_HOLD_DIR/<rank>`` and wait to be killed from outside (the torchrun tests use it
  to stop every rank at a known point before one of them is killed).

``SPEC`` is ``POINT[#N][@RANK]``: the N-th hit (default 1) of ``POINT`` counted in this process, in
the torchrun rank ``RANK`` only (default: any). Points (see :mod:`netspace_fast.storage`):
``write-tmp<suffix>`` (the temporary file of an atomic write of a file ending in ``<suffix>`` is
complete, the target is not replaced yet), ``write-done<suffix>`` (replaced, the directory not yet
fsynced), ``checkpoint`` (after an epoch's checkpoint). Suffixes: ``.pt`` zoo checkpoints,
``.safetensors`` instances, ``.json`` the manifest.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

__all__ = ["after_checkpoint", "reached"]

_hits: Counter[str] = Counter()


def _armed(variable: str, point: str, n: int) -> bool:
    spec = os.environ.get(variable)
    if not spec:
        return False
    rank = os.environ.get("RANK", "0")
    for item in spec.split(","):
        item, _, at_rank = item.strip().partition("@")
        name, _, count = item.partition("#")
        if name == point and int(count or 1) == n and (not at_rank or at_rank == rank):
            return True
    return False


def reached(point: str) -> None:
    """A named point of a write or a job: dies (or waits to be killed) here if a test armed it."""
    if not (os.environ.get("NETSPACE_TEST_KILL_AT") or os.environ.get("NETSPACE_TEST_HOLD_AT")):
        return
    _hits[point] += 1
    n = _hits[point]
    if _armed("NETSPACE_TEST_KILL_AT", point, n):
        os.kill(os.getpid(), signal.SIGKILL)
    if _armed("NETSPACE_TEST_HOLD_AT", point, n):
        marker = os.path.join(os.environ["NETSPACE_TEST_HOLD_DIR"], os.environ.get("RANK", "0"))
        with open(marker + ".tmp", "w") as f:  # (renamed: the test never reads half a pid)
            f.write(str(os.getpid()))
        os.replace(marker + ".tmp", marker)
        while True:  # until the test kills this process
            signal.pause()


def after_checkpoint(epoch: int) -> None:
    """Called right after epoch ``epoch``'s checkpoint is written."""
    if os.environ.get("NETSPACE_TEST_SIGKILL_AFTER_EPOCH") == str(epoch):
        os.kill(os.getpid(), signal.SIGKILL)
    reached("checkpoint")
