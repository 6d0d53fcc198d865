"""The minibatch gather of batched zoo training: ``netspace_fast::gather_grouped``.

Every instance ``b`` of a zoo job draws its own sample ``index[b, j]`` for batch position ``j``
(and, with augmentation, its own crop offset and horizontal flip). The grouped network
(:mod:`netspace_fast.engine.cpu`, :class:`netspace_fast.zoo.BatchedZooNet`) wants its input as ONE
(n, B*C, H, W) channels-last tensor with instance ``b``'s channels at ``b*C .. b*C+C-1``::

    out[j, b*C + c, y, x] = images[index[b, j], c, y + oy - pad, x' + ox - pad]   (fill[c] outside the image)
    x' = W-1-x if flips[b, j] else x;  (oy, ox) = offsets[b, j], or (pad, pad) when offsets is None

i.e. a random crop of the image padded by ``pad`` at offset (oy, ox), then mirrored; ``fill``
(one value per channel, default 0) is the padding value: for normalized images, pass the
normalized black, ``-mean / std``, to pad as torchvision's ``RandomCrop(padding=...)`` does before
normalization. The C++
CPU kernel writes this in one pass over the batch; the pure-PyTorch reference
(:func:`gather_grouped_ref`, also the path on other devices) does it with index + pad + gather +
relayout. A data-loading op: not differentiable (images are data).
"""

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
