"""Progress of the long jobs (zoo and NetSpace training): a tqdm bar on a terminal, optional
TensorBoard scalars."""

from __future__ import annotations

import sys

__all__ = ["progress_bar", "tensorboard_writer"]


def tensorboard_writer(logdir):
    """A ``SummaryWriter`` for ``logdir``, None without one; a missing ``tensorboard`` package is one
    clear ValueError, raised before any work starts."""
    if logdir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ValueError(f"tensorboard: logging scalars to {str(logdir)!r} needs the 'tensorboard' package, which "
                         f"is not installed (pip install tensorboard): {e}") from None
    return SummaryWriter(str(logdir))


def progress_bar(progress: bool, desc: str, start: int, epochs: int):
    """A tqdm bar over epochs on stderr. None without progress; also when stderr is not a terminal
    (a log file gets one line per epoch, not carriage-return redraws) or tqdm is missing (a bare
    environment such as the GPU machine)."""
    if not progress or not sys.stderr.isatty():
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=epochs, initial=start, desc=desc, unit="epoch", dynamic_ncols=True, file=sys.stderr)
