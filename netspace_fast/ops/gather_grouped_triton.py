"""Triton kernel of the op `netspace_fast::gather_grouped` (its CUDA kernel: there is no native
CUDA kernel of this op; see gather_grouped.py for how it is registered and called).

One program per output row (j, y) and block of that row's W*B*C values (channels-last: a row is W
pixels of B*C channels, stored contiguously), so the stores are coalesced; each value reads its
instance's sample index, crop offset and flip, then one pixel of the image (any strides).

Nothing here reads the index values on the host (that would cost a device sync per minibatch):
the kernel masks instead. A sample index outside [0, M) reads nothing and that sample comes out
as fill; offsets outside [0, 2*pad] follow the formula (positions outside the image are fill),
exactly as the pure-PyTorch reference does. Runs on CPU tensors under TRITON_INTERPRET=1 (the
tests), on CUDA tensors compiled.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .gather_grouped_ref import check_gather_args

MAX_BLOCK = 1024


@triton.jit
def _gather_grouped_kernel(images, index, offsets, flips, fill, out, M, C, H, W, B, n, pad, s0, s1, s2, s3,
                           HAS_OFF: tl.constexpr, HAS_FLIP: tl.constexpr, HAS_FILL: tl.constexpr,
                           BLOCK: tl.constexpr):
    # positions within a row and (b, j) numbers in int32 (the launcher checks W*B*C and 2*B*n fit):
    # cheaper divisions than int64; addresses in int64
    jy = tl.program_id(0)  # output row (j, y)
    j = jy // H
    y = jy - j * H
    BC = B * C
    row = W * BC
    e = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # position in the row: x * B*C + b * C + c
    mask = e < row
    x = e // BC
    bc = e - x * BC
    b = bc // C
    c = bc - b * C
    k = tl.where(mask, b * n + j, 0)  # (b, j) in the (B, n) draws
    src = tl.load(index + k, mask=mask, other=-1)  # int64
    if HAS_OFF:
        oy = tl.load(offsets + 2 * k, mask=mask, other=0)
        ox = tl.load(offsets + 2 * k + 1, mask=mask, other=0)
    else:
        oy = pad
        ox = pad
    if HAS_FLIP:
        fl = tl.load(flips + k, mask=mask, other=0)
        x = tl.where(fl != 0, W - 1 - x, x)
    sy = y + oy - pad
    sx = x + ox - pad
    valid = mask & (src >= 0) & (src < M) & (sy >= 0) & (sy < H) & (sx >= 0) & (sx < W)
    # masked-off lanes point at element 0: no address is ever formed from an out-of-range value
    src = tl.where(valid, src, 0).to(tl.int64)
    sy = tl.where(valid, sy, 0).to(tl.int64)
    sx = tl.where(valid, sx, 0).to(tl.int64)
    v = tl.load(images + src * s0 + c.to(tl.int64) * s1 + sy * s2 + sx * s3, mask=valid, other=0.0)
    if HAS_FILL:
        f = tl.load(fill + c, mask=mask, other=0.0)
        v = tl.where(valid, v, f)
    tl.store(out + jy.to(tl.int64) * row + e, v, mask=mask)


@functools.lru_cache(maxsize=32)
def _fill_tensor(fill: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The per-channel fill values on the device, made once per (values, dtype, device): a host to
    device copy per call would be one more transfer per minibatch (and a stream sync unless pinned)."""
    t = torch.tensor(fill, dtype=dtype)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def gather_grouped_forward(images: torch.Tensor, index: torch.Tensor, offsets: torch.Tensor | None = None,
                           flips: torch.Tensor | None = None, pad: int = 0, fill=None) -> torch.Tensor:
    """Launcher (the op's CUDA kernel; callable on CPU tensors under TRITON_INTERPRET=1). Checks
    shapes, dtypes and devices (free); never reads the index values on the host (see module doc)."""
    check_gather_args(images, index, offsets, flips, pad, fill)
    M, C, H, W = images.shape
    B, n = index.shape
    if W * B * C >= 2 ** 31 or 2 * B * n >= 2 ** 31 or n * H >= 2 ** 31:
        raise ValueError(f"images, index: the kernel indexes an output row of W*B*C values, the (B, n, 2) offsets "
                         f"and the n*H rows with 32-bit integers; got W*B*C = {W * B * C}, 2*B*n = {2 * B * n}, "
                         f"n*H = {n * H}")
    out = torch.empty((n, B * C, H, W), dtype=images.dtype, device=images.device,
                      memory_format=torch.channels_last)
    if out.numel() == 0:
        return out
    device = images.device
    index = index.contiguous()
    offs = offsets.contiguous() if offsets is not None else index  # a placeholder pointer when absent
    fl = flips.contiguous().view(torch.uint8) if flips is not None else index
    fv = _fill_tensor(tuple(float(v) for v in fill), images.dtype, device) if fill is not None else images
    row = W * B * C
    block = min(MAX_BLOCK, triton.next_power_of_2(row))
    grid = (n * H, triton.cdiv(row, block))
    _gather_grouped_kernel[grid](
        images, index, offs, fl, fv, out, M, C, H, W, B, n, pad, *images.stride(),
        HAS_OFF=offsets is not None, HAS_FLIP=flips is not None, HAS_FILL=fill is not None, BLOCK=block)
    return out


__all__ = ["MAX_BLOCK", "gather_grouped_forward"]
