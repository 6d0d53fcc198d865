"""The general batched engine: B networks of ANY supported spec (user architectures: groups,
dilation, rectangular kernels, layers without bias, BatchNorm after linear layers, every
activation, max / average / adaptive pooling, standalone activations and additions), forward and
backward by autograd over a few batched calls per layer.

Layouts of the B networks' values (the fast engine's grouped layout, :mod:`.layout`):

* image values: ONE (N, B*C, H, W) channels-last tensor, network-major channels. A conv with
  ``groups`` g is ONE grouped convolution with B*g groups (depthwise: B*C groups of one channel);
  pools and activations act channel by channel, so they need nothing per network; a shared input
  (N, C, H, W) stays shared through pools and activations and meets its first conv as ONE ordinary
  convolution with the B networks' filters stacked (g = 1) or is expanded once (g > 1).
* feature values: (B, N, F); a linear layer is one batched GEMM (``baddbmm``); a shared (N, F)
  input one GEMM with the B weight matrices.

Weights come from a :class:`GeneralWeights` source: the PRep batch (``batched_forward``: views cut
from the (B, P) PRep rows by ONE ``split``, so the backward writes every parameter's gradient
into one (B, P) buffer by one concatenation), or the zoo trainer's stacked parameters with
per-instance BatchNorm (BatchNorm over B*C network-major channels IS per-instance BatchNorm).

:func:`general_forward` is the engine; :func:`netspace_fast.archs.spec_forward` per network is its
reference (the tests compare both, outputs and gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..archs import ArchSpec, LayerSpec, apply_activation
from ..prep.layout import PRepLayout

CL = torch.channels_last

__all__ = ["GeneralWeights", "PRepGeneralWeights", "general_forward"]


class GeneralWeights:
    """Where the B networks' layer parameters come from."""

    def params(self, layer: LayerSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight (B, *weight_shape), bias (B, out) or None) of a conv/linear layer."""
        raise NotImplementedError

    def norm(self, layer: LayerSpec, z: torch.Tensor, grouped: bool) -> torch.Tensor:
        """The layer's normalization (trained form) of its output ``z``; identity for BN-free weights.
        ``grouped``: z is (N, B*C, H, W); else (B, N, F)."""
        return z


class PRepGeneralWeights(GeneralWeights):
    """Views of a (B, P) PRep batch, cut by ONE split (its backward: one concatenation)."""

    def __init__(self, spec: ArchSpec, preps2d: torch.Tensor, width: int) -> None:
        layout = PRepLayout.for_spec(spec, width)
        B = preps2d.shape[0]
        sizes = layout.split_sizes
        sizes[-1] = preps2d.shape[1] - sum(sizes[:-1])  # the padding (taller PReps: more of it)
        pieces = preps2d.split(sizes, dim=1)
        self.views = {e.name: pieces[i].view(B, *e.shape) for i, e in enumerate(layout.entries)}

    def params(self, layer):
        return self.views[f"{layer.name}.weight"], self.views.get(f"{layer.name}.bias")


def _to_grouped(x: torch.Tensor) -> torch.Tensor:
    """(B, N, C, H, W) -> (N, B*C, H, W) channels-last."""
    B, N, C, H, W = x.shape
    out = torch.empty((N, B * C, H, W), dtype=x.dtype, device=x.device, memory_format=CL)
    out.unflatten(1, (B, C)).copy_(x.transpose(0, 1))
    return out


def _expand_shared(h: torch.Tensor, B: int) -> torch.Tensor:
    """A shared (N, C, H, W) value as the grouped (N, B*C, H, W) of B identical networks' values;
    a shared (N, F) as (B, N, F)."""
    if h.dim() == 4:
        N, C, H, W = h.shape
        return h.unsqueeze(1).expand(N, B, C, H, W).reshape(N, B * C, H, W).contiguous(memory_format=CL)
    return h.unsqueeze(0).expand(B, *h.shape)


def _conv(layer: LayerSpec, h: torch.Tensor, shared: bool, B: int, weights: GeneralWeights):
    w, b = weights.params(layer)
    cout = layer.out_features
    stacked_w = w.reshape(B * cout, *w.shape[2:])
    bias = b.reshape(B * cout) if b is not None else None
    if shared and layer.groups == 1:  # one ordinary conv, the B networks' filters stacked
        z = F.conv2d(h.contiguous(memory_format=CL), stacked_w, bias, layer.stride, layer.padding, layer.dilation)
    else:
        if shared:
            h = _expand_shared(h, B)
        z = F.conv2d(h, stacked_w, bias, layer.stride, layer.padding, layer.dilation, B * layer.groups)
    return weights.norm(layer, z, True)


def _linear(layer: LayerSpec, h: torch.Tensor, shared: bool, B: int, weights: GeneralWeights):
    w, b = weights.params(layer)
    wt = w.transpose(1, 2)
    if shared:  # (N, F) @ (B, F, out) -> (B, N, out)
        z = torch.matmul(h, wt)
        if b is not None:
            z = z + b.unsqueeze(1)
    elif b is not None:
        z = torch.baddbmm(b.unsqueeze(1), h, wt)
    else:
        z = torch.bmm(h, wt)
    return weights.norm(layer, z, False)


def _pool(layer: LayerSpec, h: torch.Tensor) -> torch.Tensor:
    if layer.kind == "maxpool":
        return F.max_pool2d(h, layer.kernel, layer.stride, layer.padding, layer.dilation)
    if layer.kind == "avgpool":
        return F.avg_pool2d(h, layer.kernel, layer.stride, layer.padding, False, layer.count_include_pad)
    return F.adaptive_avg_pool2d(h, layer.output_size)


def _flatten(h: torch.Tensor, shared: bool, B: int) -> torch.Tensor:
    if h.dim() != 4:
        return h
    if shared:
        return h.flatten(1)
    N, BC, H, W = h.shape
    return h.view(N, B, BC // B, H, W).transpose(0, 1).reshape(B, N, (BC // B) * H * W)


def general_forward(spec: ArchSpec, weights: GeneralWeights, x: torch.Tensor, B: int, shared: bool) -> torch.Tensor:
    """Outputs (B, N, out) of the B networks of ``spec`` on ``x`` ((N, ...) shared, or (B, N, ...)),
    weights from ``weights``; differentiable by autograd."""
    if not shared and x.dim() == 5:
        x = _to_grouped(x)
    values: dict[int, tuple[torch.Tensor, bool]] = {0: (x, shared)}
    for layer in spec.layers:
        h, sh = values[layer.src]
        kind = layer.kind
        if kind == "conv":
            y, sh = _conv(layer, h, sh, B, weights), False
        elif kind == "linear":
            y, sh = _linear(layer, h, sh, B, weights), False
        elif kind in ("maxpool", "avgpool", "adaptive_avgpool"):
            y = _pool(layer, h)
        elif kind == "flatten":
            y = _flatten(h, sh, B)
        else:  # "act"
            y = h
        if layer.residual is not None:
            r, rsh = values[layer.residual]
            if sh and not rsh:
                y, sh = _expand_shared(y, B), False
            elif rsh and not sh:
                r = _expand_shared(r, B)
            y = y + r
        values[layer.dst] = (apply_activation(y, layer.act, layer.act_arg), sh)
    out, sh = values[spec.layers[-1].dst]
    return _expand_shared(out, B) if sh else out


def prep_general_forward(spec: ArchSpec, preps: torch.Tensor, x: torch.Tensor, shared: bool) -> torch.Tensor:
    """``batched_forward`` of a spec outside the fast engine: weights from the PRep batch (B, H, W)."""
    B = preps.shape[0]
    preps2d = preps.reshape(B, -1)
    return general_forward(spec, PRepGeneralWeights(spec, preps2d, preps.shape[2]), x, B, shared)
