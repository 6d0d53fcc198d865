"""Per-layer choice between the two CPU layouts of B networks' convolutional activations.

* grouped: ONE (N, B*C, H, W) channels-last tensor, network-major channels; a conv is ONE grouped
  oneDNN call (groups = B).
* split: a list of B (N, C, H, W) channels-last tensors; a conv is B ordinary oneDNN calls.

Which is faster depends on the work per network (measured, 2-core Xeon, oneDNN via torch 2.14,
forward + backward of one conv, ms grouped vs split)::

    B=8  N=128 3->16  32x32 out            47 vs 27     split
    B=8  N=128 16->16 32x32 out            75 vs 55     split
    B=8  N=128 32->32 16x16 out            52 vs 45     split
    B=8  N=128 16->32 16x16 out (stride 2) 56 vs 38     split
    B=64 N=128 16->16 32x32 out          1066 vs 450    split
    B=8  N=128 64->64 8x8 out              42 vs 39     ~even
    B=8  N=16  16->16 32x32 out           8.6 vs 8.5    even
    B=8  N=32  64->64 8x8 out            10.3 vs 12.0   grouped
    B=32 N=128 3->6   14x14 out (LeNet)    41 vs 76     grouped
    B=32 N=128 6->16  5x5 out (LeNet)      13 vs 32     grouped
    forward only: B=32 N=512 6->16 5x5 out 14.3 vs 13.2 split, N=256 5.8 vs 6.7 grouped
    whole zoo epoch, 8 ResNet8, batch 128: 8x8 layers grouped 1969 ms, split 1938 ms

i.e. small per-network convolutions (few output channels or few output pixels) gain from one
grouped call, large ones lose to the grouped kernel's poorer blocking. :func:`use_split` encodes
that rule; it is deterministic (same choice every run, so training is reproducible).
"""

from __future__ import annotations

import torch

from .. import settings

CL = torch.channels_last

#: split when a network's conv writes at least this many output pixels (N * OH * OW) ...
SPLIT_MIN_PIXELS = 8192
#: ... and at least this many output channels
SPLIT_MIN_CHANNELS = 16


LAYOUTS = settings.CONV_LAYOUTS


def use_split(n: int, cout: int, out_hw: int, device: torch.device | str = "cpu") -> bool:
    """Whether a conv with ``cout`` output channels over ``n`` images of ``out_hw`` output pixels
    runs per network (split) rather than as one grouped call.

    The rule above is measured on CPUs; on other devices ``auto`` keeps the grouped call (kernel
    launches independent of B) until measured there. ``NETSPACE_CONV_LAYOUT=grouped|split``
    forces one layout everywhere (for benchmarks and A/B measurements on new machines)."""
    choice = settings.conv_layout()
    if choice != "auto":
        return choice == "split"
    if torch.device(device).type != "cpu":
        return False
    return cout >= SPLIT_MIN_CHANNELS and n * out_hw >= SPLIT_MIN_PIXELS


def plan_blocks(layers, n: int, hw0: tuple[int, int], device) -> list[tuple[int, int, bool]]:
    """Cut a network into blocks ``(start, stop, split)``.

    ``layers``: per layer ``(kind, src, dst, cout, k, stride, padding)`` (value ids as in
    :class:`netspace_fast.archs.LayerSpec`; for an "avgpool" k and stride are the pool's); ``n``
    images of spatial size ``hw0``. A split block is a maximal run of convs that :func:`use_split`
    sends per network, plus the pools between them: callers run it network by network (each
    network's activations flow from layer to layer while still in cache: ResNet8's forward, B=8,
    N=128, 98 ms against 126 ms layer by layer). Every other layer is a block of its own, run for all
    networks at once."""
    hw = {0: tuple(hw0)}
    split_vals: set[int] = set()
    flags = []
    for kind, src, dst, cout, k, stride, padding in layers:
        flag = False
        if kind in ("conv", "avgpool") and src in hw:
            H, W = hw[src]
            hw[dst] = ((H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1)
            flag = (use_split(n, cout, hw[dst][0] * hw[dst][1], device) if kind == "conv" else src in split_vals)
        if flag:
            split_vals.add(dst)
        flags.append(flag)
    blocks, i = [], 0
    while i < len(flags):
        j = i + 1
        if flags[i]:
            while j < len(flags) and flags[j]:
                j += 1
        blocks.append((i, j, flags[i]))
        i = j
    return blocks


def to_split(v, B: int) -> list[torch.Tensor]:
    """B (N, C, H, W) channels-last tensors from a grouped (N, B*C, H, W) tensor (or as given)."""
    if isinstance(v, list):
        return v
    C = v.shape[1] // B
    return [v[:, b * C:(b + 1) * C].contiguous(memory_format=CL) for b in range(B)]


def to_grouped(v) -> torch.Tensor:
    """The grouped (N, B*C, H, W) channels-last tensor of a split list (or as given)."""
    if isinstance(v, list):
        return torch.cat(v, 1).contiguous(memory_format=CL)
    return v


class _FlattenGrouped(torch.autograd.Function):
    """(N, B*C, H, W) -> (B, N, C*H*W) in one copy, whose gradient comes back channels-last.

    Autograd's own backward of the reshape would hand the previous layer an NCHW-contiguous
    gradient while its saved activation is channels-last; elementwise backward kernels (the
    activation's) over mismatched layouts run ~9x slower (measured: LeakyReLU backward of a
    (64, 512, 5, 5) tensor 1.75 ms vs 0.19 ms)."""

    @staticmethod
    def forward(ctx, v, B):
        n, bc, hh, ww = v.shape
        ctx.B, ctx.shape = B, v.shape
        # splitting the channel dim is a view in any layout: one copy in all
        return v.unflatten(1, (B, bc // B)).permute(1, 0, 2, 3, 4).reshape(B, n, -1)

    @staticmethod
    def backward(ctx, g):
        n, bc, hh, ww = ctx.shape
        B = ctx.B
        gi = torch.empty(ctx.shape, dtype=g.dtype, device=g.device, memory_format=CL)
        gi.unflatten(1, (B, bc // B)).copy_(g.reshape(B, n, bc // B, hh, ww).permute(1, 0, 2, 3, 4))
        return gi, None


def flatten(v, B: int) -> torch.Tensor:
    """(B, N, C*H*W), each network's features in its own (c, h, w) order, from either layout."""
    if isinstance(v, list):
        return torch.stack([t.reshape(t.shape[0], -1) for t in v])
    return _FlattenGrouped.apply(v, B)


__all__ = ["LAYOUTS", "plan_blocks", "use_split", "to_split", "to_grouped", "flatten", "SPLIT_MIN_PIXELS", "SPLIT_MIN_CHANNELS"]
