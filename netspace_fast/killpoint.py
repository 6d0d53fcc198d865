"""A test hook of the long jobs: ``NETSPACE_TEST_SIGKILL_AFTER_EPOCH=k`` kills the process right after
epoch k's checkpoint is written, the moment a real kill is most likely to lose work (the resume
tests of the zoo and NetSpace runs send it)."""

from __future__ import annotations

import os
import signal

__all__ = ["after_checkpoint"]


def after_checkpoint(epoch: int) -> None:
    if os.environ.get("NETSPACE_TEST_SIGKILL_AFTER_EPOCH") == str(epoch):
        os.kill(os.getpid(), signal.SIGKILL)
