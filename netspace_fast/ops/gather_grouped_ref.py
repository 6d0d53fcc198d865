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
normalization. The C++ CPU kernel writes this in one pass over the batch, as does the Triton
kernel on CUDA; the pure-PyTorch reference (:func:`gather_grouped_ref`) does it with index + gathers + relayout. A
data-loading op: not differentiable (images are data).

Values out of range: the CPU paths refuse an index outside [0, M) or an offset outside
[0, 2*pad] (a ValueError; reading CPU values is free). On CUDA nothing reads them on the host
(that would be a device sync per minibatch): the kernel masks, an index outside [0, M) gives that
sample as fill, offsets follow the formula (fill outside the image); the reference does the same,
and nothing ever reads out of bounds.
"""

from __future__ import annotations

import torch


def check_gather_args(images, index, offsets, flips, pad, fill=None) -> None:
    """ValueError/TypeError naming the argument, before any kernel runs: types, shapes, dtypes and
    devices only (free: no tensor value is read, so no device sync and no graph break under
    torch.compile). The values of index and offsets: :func:`check_gather_values`."""
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
    for name, t in (("offsets", offsets), ("flips", flips)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a tensor or None, got {type(t).__name__}")
    for name, t in (("index", index), ("offsets", offsets), ("flips", flips)):
        if t is not None and t.device != images.device:
            raise ValueError(f"{name}: expected a tensor on {images.device} (the device of images), got {t.device}")
    if offsets is not None:
        if offsets.dtype != torch.int64:
            raise TypeError(f"offsets: expected int64, got {offsets.dtype}")
        if tuple(offsets.shape) != (B, n, 2):
            raise ValueError(f"offsets: expected shape (B, n, 2) = {(B, n, 2)}, got {tuple(offsets.shape)}")
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


def check_gather_values(images, index, offsets, pad) -> None:
    """ValueError unless every index lies in [0, M) and every offset in [0, 2*pad]. Reads the
    values: meant for CPU tensors (on CUDA it would be a device sync per minibatch; the GPU kernel
    masks instead). Call after :func:`check_gather_args`."""
    M = images.shape[0]
    if index.numel():
        lo, hi = torch.aminmax(index)
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi >= M:
            raise ValueError(f"index: values must lie in [0, {M}) (the images), got min {lo}, max {hi}")
    if offsets is not None and offsets.numel():
        lo, hi = torch.aminmax(offsets)
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi > 2 * pad:
            raise ValueError(f"offsets: values must lie in [0, 2*pad] = [0, {2 * pad}], got min {lo}, max {hi}")


def gather_grouped_ref(images: torch.Tensor, index: torch.Tensor, offsets: torch.Tensor | None = None,
                       flips: torch.Tensor | None = None, pad: int = 0, fill=None) -> torch.Tensor:
    """Pure-PyTorch reference (the oracle, and the path on devices without a kernel).

    Reads nothing out of range whatever the values: an index outside [0, M) gives that sample as
    fill, offsets outside [0, 2*pad] follow the formula (fill outside the image), as the Triton
    kernel does. (The wrappers refuse such values where they can read them for free: on the CPU.)"""
    M, C, H, W = images.shape
    B, n = index.shape
    dev, BN = images.device, B * n
    k = index.reshape(-1)
    ok = (k >= 0) & (k < M)
    x = (images[k.clamp(0, M - 1)] if M else images.new_zeros(BN, C, H, W))  # (B*n, C, H, W)
    fv = (torch.tensor(fill, dtype=images.dtype).to(dev) if fill is not None
          else images.new_zeros(C)).view(1, C, 1, 1)
    valid = ok.view(BN, 1, 1, 1)
    if offsets is not None or flips is not None or pad:
        off = (offsets.reshape(-1, 2) if offsets is not None
               else torch.full((BN, 2), pad, dtype=torch.int64, device=dev))
        sy = off[:, 0:1] - pad + torch.arange(H, device=dev)  # (B*n, H) source rows
        cols = torch.arange(W, device=dev).expand(BN, W)
        if flips is not None:
            cols = torch.where(flips.reshape(-1, 1), W - 1 - cols, cols)
        sx = off[:, 1:2] - pad + cols  # (B*n, W) source columns
        x = x.gather(2, sy.clamp(0, max(H - 1, 0))[:, None, :, None].expand(BN, C, H, W))
        x = x.gather(3, sx.clamp(0, max(W - 1, 0))[:, None, None, :].expand(BN, C, H, W))
        valid = (valid & ((sy >= 0) & (sy < H))[:, None, :, None] & ((sx >= 0) & (sx < W))[:, None, None, :])
    x = torch.where(valid, x, fv)
    return (x.reshape(B, n, C, H, W).transpose(0, 1).reshape(n, B * C, H, W)
            .contiguous(memory_format=torch.channels_last))


__all__ = ["check_gather_args", "check_gather_values", "gather_grouped_ref"]
