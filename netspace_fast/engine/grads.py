"""Gradient bookkeeping shared by the whole-network autograd nodes (batched.py, cpu.py)."""

from __future__ import annotations

import torch


def prep_grad_buffer(preps2d: torch.Tensor, num_params: int) -> torch.Tensor:
    """The one (B, P) PRep gradient of a backward pass. Every parameter slice is written by its
    layer's backward, so only the padding after the parameters is zeroed here."""
    grad = preps2d.new_empty(preps2d.shape)
    grad[:, num_params:].zero_()
    return grad


class ValueGrads(dict):
    """value id -> gradient, seeded with the output's gradient.

    The first gradient stored for a value is a fresh tensor of our own whose other use (as a
    layer's grad_z) is over by the time a second one arrives, so later ones accumulate in place.
    """

    def __init__(self, out_value: int, grad_out: torch.Tensor) -> None:
        super().__init__({out_value: grad_out.contiguous()})

    def add(self, value: int, grad: torch.Tensor) -> None:
        if value in self:
            self[value].add_(grad)
        else:
            self[value] = grad
