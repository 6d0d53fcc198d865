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

:func:`general_forward` is the engine, differentiable by autograd (the zoo trainer's path, BatchNorm
in training mode included). ``batched_forward`` (:func:`prep_general_forward`) runs the same calls
as ONE autograd node with a hand-written backward (:mod:`.general_node`: activation gradients in
place, activations freed once used, weight gradients straight into the one PRep gradient); the
autograd path is its reference, :func:`netspace_fast.archs.spec_forward` per network the reference
of both (the tests compare all three, outputs and gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from functools import lru_cache

from ..archs import LEAKY_SLOPE, ArchSpec, LayerSpec, apply_activation, layer_op
from ..prep.layout import PRepLayout
from .general_node import GeneralNet, expand_shared, to_grouped

CL = torch.channels_last

__all__ = ["CHUNK_BYTES", "GeneralWeights", "PRepGeneralWeights", "chunk_size", "chunked_forward", "general_forward",
           "prep_general_forward", "value_numels"]


class GeneralWeights:
    """Where the B networks' layer parameters come from."""

    def params(self, layer: LayerSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight (B, *weight_shape), bias (B, out) or None) of a conv/linear layer."""
        raise NotImplementedError

    def norm(self, layer: LayerSpec, z: torch.Tensor, grouped: bool) -> torch.Tensor:
        """The layer's normalization (trained form) of its output ``z``; identity for BN-free weights.
        ``grouped``: z is (N, B*C, H, W); else (B, N, F)."""
        return z

    def split(self, sizes: list[int]) -> list["GeneralWeights"]:
        """The same source cut into consecutive chunks of networks of ``sizes``."""
        raise NotImplementedError


class PRepGeneralWeights(GeneralWeights):
    """Views of a (B, P) PRep batch, cut by ONE split (its backward: one concatenation)."""

    def __init__(self, spec: ArchSpec, preps2d: torch.Tensor, width: int) -> None:
        self.spec, self.preps2d, self.width = spec, preps2d, width
        layout = PRepLayout.for_spec(spec, width)
        B = preps2d.shape[0]
        sizes = layout.split_sizes
        sizes[-1] = preps2d.shape[1] - sum(sizes[:-1])  # the padding (taller PReps: more of it)
        pieces = preps2d.split(sizes, dim=1)
        self.views = {e.name: pieces[i].view(B, *e.shape) for i, e in enumerate(layout.entries)}

    def params(self, layer):
        return self.views[f"{layer.name}.weight"], self.views.get(f"{layer.name}.bias")

    def split(self, sizes):
        return [PRepGeneralWeights(self.spec, p, self.width) for p in self.preps2d.split(sizes)]


def _conv(layer: LayerSpec, h: torch.Tensor, shared: bool, B: int, weights: GeneralWeights):
    w, b = weights.params(layer)
    cout = layer.out_features
    stacked_w = w.reshape(B * cout, *w.shape[2:])
    bias = b.reshape(B * cout) if b is not None else None
    if shared and layer.groups == 1:  # one ordinary conv, the B networks' filters stacked
        z = F.conv2d(h.contiguous(memory_format=CL), stacked_w, bias, layer.stride, layer.padding, layer.dilation)
    else:
        if shared:
            h = expand_shared(h, B)
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


_INPLACE = {
    "relu": lambda y, a: F.relu_(y),
    "leaky_relu": lambda y, a: F.leaky_relu_(y, LEAKY_SLOPE if a is None else a),
    "tanh": lambda y, a: y.tanh_(),
    "sigmoid": lambda y, a: y.sigmoid_(),
}


def general_forward(spec: ArchSpec, weights: GeneralWeights, x: torch.Tensor, B: int, shared: bool) -> torch.Tensor:
    """Outputs (B, N, out) of the B networks of ``spec`` on ``x`` ((N, ...) shared, or (B, N, ...)),
    weights from ``weights``; differentiable by autograd."""
    if not shared and x.dim() == 5:
        x = to_grouped(x)
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
                y, sh = expand_shared(y, B), False
            elif rsh and not sh:
                r = expand_shared(r, B)
            y = y + r
        if layer.kind in ("conv", "linear") and layer.act in _INPLACE:  # y is ours: no second full-size buffer
            y = _INPLACE[layer.act](y, layer.act_arg)
        else:
            y = apply_activation(y, layer.act, layer.act_arg)
        values[layer.dst] = (y, sh)
    out, sh = values[spec.layers[-1].dst]
    return expand_shared(out, B) if sh else out


#: the largest activation of one chunk of networks, in bytes: per-network calls (chunks of one) while
#: one network's activations are this big, more networks per grouped call when they are smaller (a
#: depthwise-separable CNN, B=32, fwd+bwd, 2-core EPYC: N=128 (8 MB a network) chunks of 1 333 ms,
#: 2 370, 4 562, all 32 grouped 958; N=16 (1 MB) chunks of 1 101 ms, 4 57, 8 58, 32 80): beyond
#: the caches, the grouped layout's big tensors cost more in memory traffic and fresh pages than
#: its fewer calls save.
CHUNK_BYTES = 8 << 20


@lru_cache(maxsize=256)
def value_numels(spec: ArchSpec) -> tuple[int, ...]:
    """Elements per sample of every value of ``spec`` (the input first), by a meta-device pass."""
    h = torch.empty((1, *spec.input_shape), device="meta")
    values = {0: h}
    for layer in spec.layers:
        src = values[layer.src]
        if layer.kind in ("conv", "linear"):
            w = torch.empty(layer.weight_shape, device="meta")
            values[layer.dst] = layer_op(layer, src, w)
        else:
            values[layer.dst] = layer_op(layer, src)
    return tuple(v.numel() for v in values.values())


def chunk_size(spec: ArchSpec, B: int, N: int, itemsize: int) -> int:
    """Networks per grouped call (see :data:`CHUNK_BYTES`)."""
    per_net = max(value_numels(spec)[1:]) * N * itemsize
    return max(1, min(B, CHUNK_BYTES // max(per_net, 1)))


def chunked_forward(spec: ArchSpec, weights: GeneralWeights, x: torch.Tensor, B: int, shared: bool,
                    grouped_input: bool = False) -> torch.Tensor:
    """:func:`general_forward` over chunks of networks (:func:`chunk_size`), outputs concatenated.
    ``x``: shared (N, ...), per network (B, N, ...), or with ``grouped_input`` (N, B*C, H, W)."""
    N = x.shape[0] if (shared or grouped_input) else x.shape[1]
    c = chunk_size(spec, B, N, x.element_size())
    if c >= B:
        return general_forward(spec, weights, x, B, shared)
    sizes = [min(c, B - s) for s in range(0, B, c)]
    parts = weights.split(sizes)
    if shared:
        xs = [x] * len(sizes)
    elif grouped_input:
        C = x.shape[1] // B
        xs = x.split([n * C for n in sizes], dim=1)
    else:
        xs = x.split(sizes)
    return torch.cat([general_forward(spec, w, xi, n, shared) for w, xi, n in zip(parts, xs, sizes)])


def prep_general_forward(spec: ArchSpec, preps: torch.Tensor, x: torch.Tensor, shared: bool) -> torch.Tensor:
    """``batched_forward`` of a spec outside the fast engine: weights from the PRep batch (B, H, W)."""
    B = preps.shape[0]
    preps2d = preps.reshape(B, -1)
    if preps2d.stride(1) != 1:
        preps2d = preps2d.contiguous()
    if not (torch.is_grad_enabled() and (preps.requires_grad or x.requires_grad)):
        with torch.no_grad():
            return chunked_forward(spec, PRepGeneralWeights(spec, preps2d, preps.shape[2]), x, B, shared)
    N = x.shape[0] if shared else x.shape[1]
    c = chunk_size(spec, B, N, x.element_size())
    sizes = tuple(min(c, B - s) for s in range(0, B, c))
    return GeneralNet.apply(preps2d, x, spec, preps.shape[2], shared, sizes)


def prep_general_forward_autograd(spec: ArchSpec, preps: torch.Tensor, x: torch.Tensor, shared: bool) -> torch.Tensor:
    """The same through autograd over the batched calls (:func:`chunked_forward`): the reference of
    the one-node path's hand-written backward in the tests."""
    B = preps.shape[0]
    return chunked_forward(spec, PRepGeneralWeights(spec, preps.reshape(B, -1), preps.shape[2]), x, B, shared)
