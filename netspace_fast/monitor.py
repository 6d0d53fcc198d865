"""Progress of the long jobs (zoo and NetSpace training): a tqdm bar on a terminal, optional
TensorBoard scalars, and the end of one training epoch as both NetSpace trainings report it
(:func:`end_epoch`)."""

from __future__ import annotations

import sys

__all__ = ["end_epoch", "log", "progress_bar", "tensorboard_writer"]


def log(progress: bool, msg: str) -> None:
    """One line on stderr (flushed), when ``progress``."""
    if progress:
        print(msg, file=sys.stderr, flush=True)


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
    return _LazyWriter(SummaryWriter, str(logdir))


class _LazyWriter:
    """A ``SummaryWriter`` made at its first use: LOGDIR is created with the first scalars, so a start
    that fails on its inputs leaves no empty log folder behind."""

    def __init__(self, cls, logdir: str) -> None:
        self._cls, self._logdir, self._writer = cls, logdir, None

    def __getattr__(self, name: str):
        if self._writer is None:
            self._writer = self._cls(self._logdir)
        return getattr(self._writer, name)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


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


def end_epoch(epoch: int, epochs: int, line: str, *, progress: bool, bar, writer=None, scalars=None) -> None:
    """Report a finished epoch: ``scalars`` (tag -> value, in order) to the TensorBoard ``writer`` (when
    there is one; flushed), then ``line`` as the bar's postfix with the bar one epoch further, or
    without a bar as the line ``epoch E/N <line>`` on stderr (when ``progress``)."""
    if writer is not None:
        for tag, value in (scalars or {}).items():
            writer.add_scalar(tag, value, epoch)
        writer.flush()
    if bar is not None:
        bar.set_postfix_str(line, refresh=False)
        bar.update(1)
    else:
        log(progress, f"epoch {epoch}/{epochs} {line}")
