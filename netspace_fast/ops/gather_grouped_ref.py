"""Pure-PyTorch reference of the op `netspace_fast::gather_grouped` and its argument checks.

The minibatch gather of batched zoo training: ``netspace_fast::gather_grouped``.

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
import torch.nn.functional as F


def check_gather_args(images, index, offsets, flips, pad, fill=None) -> None:
    """ValueError/TypeError naming the argument, before any kernel runs."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images: expected an (M, C, H, W) tensor, got {got}")
    if images.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"images: expected float32 or float64, got {images.dtype}")
    if images.requires_grad:
        raise ValueError("images: gather_grouped is a data-loading op and not differentiable; pass images.detach()")
    if not isinstance(index, torch.Tensor) or index.dim() != 2:
        got = tuple(index.shape) if isinstance(index, torch.Tensor) else type(index).__name__
        raise ValueError(f"index: expected a (B, n) tensor, got {got}")
    if index.dtype != torch.int64:
        raise TypeError(f"index: expected int64, got {index.dtype}")
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad: expected an int >= 0, got {pad!r}")
    B, n = index.shape
    for name, t in (("index", index), ("offsets", offsets), ("flips", flips)):
        if t is not None and t.device != images.device:
            raise ValueError(f"{name}: expected a tensor on {images.device} (the device of images), got {t.device}")
    M = images.shape[0]
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= M):
        raise ValueError(f"index: values must lie in [0, {M}) (the images), got min {int(index.min())}, "
                         f"max {int(index.max())}")
    if offsets is not None:
        if offsets.dtype != torch.int64:
            raise TypeError(f"offsets: expected int64, got {offsets.dtype}")
        if tuple(offsets.shape) != (B, n, 2):
            raise ValueError(f"offsets: expected shape (B, n, 2) = {(B, n, 2)}, got {tuple(offsets.shape)}")
        if offsets.numel() and (int(offsets.min()) < 0 or int(offsets.max()) > 2 * pad):
            raise ValueError(f"offsets: values must lie in [0, 2*pad] = [0, {2 * pad}], got min "
                             f"{int(offsets.min())}, max {int(offsets.max())}")
    if fill is not None:
        if not isinstance(fill, (list, tuple)) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                          for v in fill):
            raise TypeError(f"fill: expected a list of {images.shape[1]} numbers (one per channel), got {fill!r}")
        if len(fill) != images.shape[1]:
            raise ValueError(f"fill: expected one value per channel ({images.shape[1]}), got {len(fill)}")
    if flips is not None:
        if flips.dtype != torch.bool:
            raise TypeError(f"flips: expected bool, got {flips.dtype}")
        if tuple(flips.shape) != (B, n):
            raise ValueError(f"flips: expected shape (B, n) = {(B, n)}, got {tuple(flips.shape)}")


def gather_grouped_ref(images: torch.Tensor, index: torch.Tensor, offsets: torch.Tensor | None = None,
                       flips: torch.Tensor | None = None, pad: int = 0, fill=None) -> torch.Tensor:
    """Pure-PyTorch reference (the oracle, and the path on devices without a kernel)."""
    M, C, H, W = images.shape
    B, n = index.shape
    x = images[index.reshape(-1)]  # (B*n, C, H, W)
    if offsets is not None or flips is not None or pad:
        off = (offsets.reshape(-1, 2) if offsets is not None
               else torch.full((B * n, 2), pad, dtype=torch.int64, device=images.device))
        xp = F.pad(x, (pad, pad, pad, pad))
        if fill is not None and pad:
            inside = torch.zeros(H + 2 * pad, W + 2 * pad, dtype=torch.bool, device=x.device)
            inside[pad:pad + H, pad:pad + W] = True
            fv = torch.tensor(fill, dtype=x.dtype, device=x.device).view(1, C, 1, 1)
            xp = torch.where(inside, xp, fv)
        rows = (off[:, 0:1] + torch.arange(H, device=x.device))[:, None, :, None].expand(B * n, C, H, W + 2 * pad)
        x = xp.gather(2, rows)
        cols = off[:, 1:2] + torch.arange(W, device=x.device)
        if flips is not None:
            cols = torch.where(flips.reshape(-1, 1), cols.flip(1), cols)
        x = x.gather(3, cols[:, None, None, :].expand(B * n, C, H, W))
    return (x.view(B, n, C, H, W).transpose(0, 1).reshape(n, B * C, H, W)
            .contiguous(memory_format=torch.channels_last))


__all__ = ["check_gather_args", "gather_grouped_ref"]
