"""The zoo training loop: one epoch of B instances (each in its own data order, with its own
augmentation), evaluation, and the protocols' optimizers."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.calls import images_per_call
from ..ops.gather_grouped import gather_grouped
from .augment import crop_flip_draws
from .model import BatchedZooNet

CL = torch.channels_last

__all__ = ["DataOrder", "evaluate", "make_optimizer", "train_epoch"]


@dataclass
class DataOrder:
    """Per-instance data order and augmentation draws: one generator per instance."""

    gens: list[torch.Generator]

    @classmethod
    def from_seeds(cls, seeds: list[int]) -> "DataOrder":
        return cls([torch.Generator().manual_seed(10_000 + int(s)) for s in seeds])


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor of the minibatch's draws to ``device`` without waiting for the device: on CUDA
    through pinned memory, non-blocking (a plain ``.to('cuda')`` from pageable memory synchronizes
    the stream: once per minibatch, three times here). Values drawn on the CPU, valid by
    construction (permutations of range(M), offsets in [0, 2*pad])."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def train_epoch(net: BatchedZooNet, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
                order: DataOrder, batch_size: int, augment_pad: int = 0, flip: bool = True, fill=None,
                limit: int = 0) -> torch.Tensor:
    """One epoch over (images, labels) for every instance, each in its own order; returns (B,) mean loss.
    ``limit`` > 0: the epoch is the first ``limit`` images of each instance's order (a fresh random
    subset every epoch) instead of all of them.

    ``augment_pad``: random crops with that padding (value ``fill[c]`` per channel, default 0; for
    normalized images the normalized black, :data:`NORMALIZED_BLACK`, pads like torchvision's
    ``RandomCrop`` before normalization), and random horizontal flips if ``flip``."""
    net.train()
    B, M = net.B, images.shape[0]
    perms = [torch.randperm(M, generator=g) for g in order.gens]
    if limit and limit < M:
        perms, M = [p[:limit] for p in perms], limit
    steps = math.ceil(M / batch_size)
    total = torch.zeros(B, device=images.device)
    images = images.detach().contiguous(memory_format=CL)  # once per epoch: the gather then reads C floats at once
    for t in range(steps):
        idx = torch.stack([p[t * batch_size:(t + 1) * batch_size] for p in perms])  # (B, n)
        idx = _to_device(idx, images.device)
        off = flips = None
        if augment_pad:  # each instance's own draws, from its own generator
            draws = [crop_flip_draws(idx.shape[1], augment_pad, g, flip) for g in order.gens]
            off = _to_device(torch.stack([d[0] for d in draws]), images.device)
            flips = _to_device(torch.stack([d[1] for d in draws]), images.device)
        # one pass from the dataset to the grouped channels-last input, augmentation included
        xb = gather_grouped(images, idx, off, flips, augment_pad, fill)
        yb = labels[idx]
        out = net.graphed(xb, grouped=True)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), yb.reshape(-1), reduction="none")
        per_instance = loss.view(B, -1).mean(1)
        optimizer.zero_grad(set_to_none=True)
        per_instance.sum().backward()  # instances are independent: the sum keeps each one's gradient
        optimizer.step()
        total += per_instance.detach() * idx.shape[1]
    return (total / M).cpu()


@torch.no_grad()
def evaluate(net: BatchedZooNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """(B,) accuracy of every instance on the same images."""
    net.eval()
    correct = torch.zeros(net.B, device=images.device)
    batch_size = images_per_call(net.B, batch_size, images.device)  # CPU: B x batch capped (engine.calls)
    for s in range(0, images.shape[0], batch_size):
        x = images[s:s + batch_size]
        out = net.graphed(x.unsqueeze(0).expand(net.B, *x.shape))
        correct += (out.argmax(-1) == labels[s:s + batch_size]).sum(1)
    return (correct / images.shape[0]).cpu()


def make_optimizer(net: nn.Module, protocol: str, lr: float) -> torch.optim.Optimizer:
    """The protocol's optimizer over the stacked parameters (METHOD.md section 3): Adam for
    ``single``, SGD (momentum 0.9, weight decay 5e-4) otherwise. The fused implementation (one
    pass per parameter for decay, momentum and update) where this torch has it for the device;
    the same arithmetic, per element, so per-instance state stays per instance."""
    kind, kw = ((torch.optim.Adam, {}) if protocol == "single"
                else (torch.optim.SGD, {"momentum": 0.9, "weight_decay": 5e-4}))
    try:
        return kind(net.parameters(), lr=lr, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device / torch version
        return kind(net.parameters(), lr=lr, **kw)

