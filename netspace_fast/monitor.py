"""Progress of the long jobs (zoo and NetSpace training): optional TensorBoard scalars."""

from __future__ import annotations

__all__ = ["tensorboard_writer"]


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
