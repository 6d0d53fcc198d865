"""Batched zoo training (issue 4, in progress): B instances of one architecture trained as one job.

The B instances live in one module with every parameter stacked along a leading B dimension and
run as ONE grouped, channels-last network (the layout of :mod:`netspace_fast.grouped`): a conv is
one grouped convolution over all instances, and BatchNorm over the B*C network-major channels IS
per-instance BatchNorm (statistics per instance, running statistics per instance). Adam and SGD
(momentum, weight decay) act elementwise, so one optimizer over the stacked parameters keeps
per-instance optimizer state. Each instance has its own initialization seed and its own data
order and augmentation draws, so training B instances together gives the instances each would
get alone (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import archs
from .archs import LEAKY_SLOPE, ArchSpec, SpecNet

CL = torch.channels_last

__all__ = ["BatchedZooNet", "random_crop_flip", "train_epoch", "evaluate"]


def _key(name: str) -> str:
    return name.replace(".", "__")


class BatchedZooNet(nn.Module):
    """B instances (BN form) of one architecture, parameters stacked: forward (B, N, ...) -> (B, N, out)."""

    def __init__(self, models: list[SpecNet]) -> None:
        super().__init__()
        if not models:
            raise ValueError("models: expected at least one network")
        spec = models[0].spec
        for i, m in enumerate(models):
            if not isinstance(m, SpecNet) or m.spec != spec or m.batchnorm != models[0].batchnorm:
                raise ValueError(f"models: model {i} is not a {spec.name}/{spec.dataset} like model 0")
        self.spec: ArchSpec = spec
        self.B = len(models)
        self.batchnorm = models[0].batchnorm
        self.eps: dict[str, float] = {}
        self.momentum: dict[str, float] = {}
        states = [m.state_dict() for m in models]
        for name in states[0]:
            stacked = torch.stack([s[name].detach().clone() for s in states])
            if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
                self.register_buffer(_key(name), stacked)
            else:
                self.register_parameter(_key(name), nn.Parameter(stacked))
        for layer in spec.layers:
            if self.batchnorm and layer.bn is not None:
                bn = models[0].get_submodule(layer.bn)
                self.eps[layer.bn], self.momentum[layer.bn] = bn.eps, bn.momentum

    def _t(self, name: str) -> torch.Tensor:
        return getattr(self, _key(name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = self.B
        if x.dim() != len(self.spec.input_shape) + 2 or x.shape[0] != B:
            raise ValueError(f"x: expected (B={B}, N, {', '.join(map(str, self.spec.input_shape))}), got "
                             f"{tuple(x.shape)}")
        N = x.shape[1]
        values = {0: x.permute(1, 0, 2, 3, 4).reshape(N, B * x.shape[2], *x.shape[3:]).contiguous(memory_format=CL)}
        for layer in self.spec.layers:
            h = values[layer.src]
            if layer.kind == "conv":
                w = self._t(f"{layer.name}.weight")
                bias = self._t(f"{layer.name}.bias").reshape(-1) if hasattr(self, _key(f"{layer.name}.bias")) else None
                z = F.conv2d(h, w.reshape(-1, *w.shape[2:]), bias, layer.stride, layer.padding, 1, B)
                if self.batchnorm and layer.bn is not None:
                    rm, rv = self._t(f"{layer.bn}.running_mean"), self._t(f"{layer.bn}.running_var")
                    z = F.batch_norm(z, rm.view(-1), rv.view(-1), self._t(f"{layer.bn}.weight").reshape(-1),
                                     self._t(f"{layer.bn}.bias").reshape(-1), self.training,
                                     self.momentum[layer.bn], self.eps[layer.bn])
                    if self.training:
                        self._t(f"{layer.bn}.num_batches_tracked").add_(1)
            elif layer.kind == "linear":
                w = self._t(f"{layer.name}.weight")
                z = torch.baddbmm(self._t(f"{layer.name}.bias").unsqueeze(1), h, w.transpose(1, 2))
            elif layer.kind == "avgpool":
                z = F.avg_pool2d(h, layer.kernel, layer.stride)
            else:  # (N, B*C, H, W) -> (B, N, C*H*W), each instance's own (c, h, w) order
                n, bc, hh, ww = h.shape
                z = h.unflatten(1, (B, bc // B)).permute(1, 0, 2, 3, 4).reshape(B, n, -1)
            if layer.residual is not None:
                z = z + values[layer.residual]
            if layer.act == "leaky_relu":
                z = F.leaky_relu(z, LEAKY_SLOPE)
            elif layer.act == "sin":
                z = torch.sin(archs.SIREN_W0 * z)
            values[layer.dst] = z
        return values[self.spec.layers[-1].dst]

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """One SpecNet state dict per instance (the BN form, as trained)."""
        names = [k.replace("__", ".") for k in self.state_dict()]
        full = self.state_dict()
        return [{n: full[_key(n)][b].detach().clone() for n in names} for b in range(self.B)]

    def instances(self) -> list[SpecNet]:
        out = []
        for sd in self.state_dicts():
            m = archs.build(self.spec.name, self.spec.dataset, batchnorm=self.batchnorm)
            m.load_state_dict(sd)
            out.append(m.eval())
        return out


def random_crop_flip(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding ``pad`` and random horizontal flip, per sample of x (M, C, S, S)."""
    M, C, S, _ = x.shape
    off = torch.randint(0, 2 * pad + 1, (M, 2), generator=gen)
    flip = torch.rand(M, generator=gen) < 0.5
    xp = F.pad(x, (pad, pad, pad, pad))
    ar = torch.arange(S)
    rows = (off[:, 0:1] + ar)[:, None, :, None].expand(M, C, S, S + 2 * pad)
    out = xp.gather(2, rows)
    cols = off[:, 1:2] + ar
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :].expand(M, C, S, S)
    return out.gather(3, cols)


@dataclass
class DataOrder:
    """Per-instance data order and augmentation draws: one generator per instance."""

    gens: list[torch.Generator]

    @classmethod
    def from_seeds(cls, seeds: list[int]) -> "DataOrder":
        return cls([torch.Generator().manual_seed(10_000 + int(s)) for s in seeds])


def train_epoch(net: BatchedZooNet, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
                order: DataOrder, batch_size: int, augment_pad: int = 0) -> torch.Tensor:
    """One epoch over (images, labels) for every instance, each in its own order; returns (B,) mean loss."""
    net.train()
    B, M = net.B, images.shape[0]
    perms = [torch.randperm(M, generator=g) for g in order.gens]
    steps = math.ceil(M / batch_size)
    total = torch.zeros(B)
    for t in range(steps):
        idx = torch.stack([p[t * batch_size:(t + 1) * batch_size] for p in perms])  # (B, n)
        xb = images[idx]  # (B, n, C, S, S)
        if augment_pad:
            xb = torch.stack([random_crop_flip(xb[b], augment_pad, order.gens[b]) for b in range(B)])
        yb = labels[idx]
        out = net(xb)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), yb.reshape(-1), reduction="none")
        per_instance = loss.view(B, -1).mean(1)
        optimizer.zero_grad(set_to_none=True)
        per_instance.sum().backward()  # instances are independent: the sum keeps each one's gradient
        optimizer.step()
        total += per_instance.detach() * idx.shape[1]
    return total / M


@torch.no_grad()
def evaluate(net: BatchedZooNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """(B,) accuracy of every instance on the same images."""
    net.eval()
    correct = torch.zeros(net.B)
    for s in range(0, images.shape[0], batch_size):
        x = images[s:s + batch_size]
        out = net(x.unsqueeze(0).expand(net.B, *x.shape))
        correct += (out.argmax(-1) == labels[s:s + batch_size]).sum(1)
    return correct / images.shape[0]
