"""The op ``netspace_fast::gather_grouped``: the minibatch gather of batched zoo training (one pass
from the dataset into the grouped channels-last layout, crops and flips included; semantics and
reference in gather_grouped_ref.py). CPU: the C++ kernel (csrc/gather_grouped_cpu.cpp); other
devices: the reference. Here: the fake kernel and the wrapper."""

from __future__ import annotations

import torch

from .. import _native
from . import backend as _backend
from .gather_grouped_ref import check_gather_args, gather_grouped_ref


def _fake(images, index, offsets, flips, pad, fill=None):
    B, n = index.shape
    M, C, H, W = images.shape
    return images.new_empty((n, B * C, H, W)).contiguous(memory_format=torch.channels_last)


if _native.has_kernel("gather_grouped", "CPU"):
    torch.library.register_fake("netspace_fast::gather_grouped")(_fake)


def gather_grouped(images: torch.Tensor, index: torch.Tensor, offsets: torch.Tensor | None = None,
                   flips: torch.Tensor | None = None, pad: int = 0, fill=None, *,
                   backend: str | None = None) -> torch.Tensor:
    """(n, B*C, H, W) channels-last: instance b's sample index[b, j] at batch position j (see module doc)."""
    check_gather_args(images, index, offsets, flips, pad, fill)
    fill = None if fill is None else [float(v) for v in fill]
    which = _backend.select("gather_grouped", images.device, backend)
    if which == "cpp":
        return torch.ops.netspace_fast.gather_grouped(images, index, offsets, flips, pad, fill)
    return gather_grouped_ref(images, index, offsets, flips, pad, fill)


__all__ = ["gather_grouped", "gather_grouped_ref"]
