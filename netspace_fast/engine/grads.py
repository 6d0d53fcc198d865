"""Gradient bookkeeping shared by the whole-network autograd nodes (batched.py, cpu.py)."""

from __future__ import annotations

import torch


def prep_grad_buffer(preps2d: torch.Tensor) -> torch.Tensor:
    """The one (B, P) PRep gradient of a backward pass, all zeros. The layers' backwards write their
    slices; what none writes must read zero: the padding after the parameters, and the slices of
    layers whose output does not reach the network's output (no gradient arrives, their backward
    is skipped). Zeroing it all is one memset, small next to the backward itself."""
    return torch.zeros(preps2d.shape, dtype=preps2d.dtype, device=preps2d.device)


class ValueGrads(dict):
    """value id -> gradient, seeded with a copy of the output's gradient.

    Every gradient stored for a value is a tensor of our own whose other use (as a layer's grad_z)
    is over by the time a second one arrives, so later ones accumulate in place. The seed is a copy
    of the caller's ``grad_out`` (the network's output gradient: (B, N, classes), small): a layer
    without activation hands grad_y on as its grad_z and flatten reshapes, so without the copy the
    caller's tensor could be the one accumulated into.
    """

    def __init__(self, out_value: int, grad_out: torch.Tensor) -> None:
        super().__init__({out_value: grad_out.clone(memory_format=torch.contiguous_format)})

    def add(self, value: int, grad: torch.Tensor) -> None:
        if value in self:
            self[value].add_(grad)
        else:
            self[value] = grad
