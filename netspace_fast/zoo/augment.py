"""Data augmentation of zoo training: per-instance random crops (with padding) and horizontal flips,
drawn from each instance's own generator (METHOD.md section 3)."""

from __future__ import annotations

import torch

from ..data import MEAN, STD
from ..ops.gather_grouped import gather_grouped_ref

__all__ = ["NORMALIZED_BLACK", "crop_flip_draws", "random_crop_flip"]

#: the padding value of random crops of images normalized as in netspace_fast.data: black
NORMALIZED_BLACK = tuple(-m / s for m, s in zip(MEAN, STD))



def crop_flip_draws(M: int, pad: int, gen: torch.Generator, flip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One instance's augmentation draws for M samples: crop offsets (M, 2) in [0, 2*pad] and flips (M,)."""
    off = torch.randint(0, 2 * pad + 1, (M, 2), generator=gen)
    flips = (torch.rand(M, generator=gen) < 0.5) & flip
    return off, flips


def random_crop_flip(x: torch.Tensor, pad: int, gen: torch.Generator, flip: bool = True, fill=None) -> torch.Tensor:
    """Random crop with padding ``pad`` (value ``fill[c]``, default 0) and (if ``flip``) random horizontal
    flip, per sample of x (M, C, S, S)."""
    M = x.shape[0]
    off, flips = crop_flip_draws(M, pad, gen, flip)
    out = gather_grouped_ref(x, torch.arange(M)[None], off[None], flips[None], pad, fill)  # (M, C, S, S), B = 1
    return out.contiguous()

