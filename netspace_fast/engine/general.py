"""The general batched engine: B networks of ANY supported spec (user architectures: groups,
dilation, rectangular kernels, layers without bias, BatchNorm after linear layers, every
activation, max / average / adaptive pooling, standalone activations and additions), a few batched
calls per layer.

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
in training mode included). ``batched_forward`` (:func:`prep_general_forward`) runs the same
forward as ONE autograd node with a hand-written backward (:class:`GeneralNet`: activation
gradients in place, activations freed once used, weight gradients straight into the one PRep
gradient); the autograd path is its reference, :func:`netspace_fast.archs.spec_forward` per
network the reference of both (the tests compare all three, outputs and gradients).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from ..archs import LEAKY_SLOPE, SIREN_W0, ArchSpec, LayerSpec, apply_activation, layer_op
from ..prep.layout import PRepLayout
from .grads import ValueGrads, prep_grad_buffer

CL = torch.channels_last
aten = torch.ops.aten

__all__ = ["CHUNK_BYTES", "CUDA_CHUNK_DIVISOR", "GeneralNet", "GeneralWeights", "PRepGeneralWeights", "chunk_bytes",
           "chunk_size", "chunk_sizes", "chunked_forward", "expand_shared", "general_forward", "prep_general_forward",
           "prep_general_forward_autograd", "to_grouped", "value_numels"]


# activations whose backward reads the output y (the others read the pre-activation z)
_FROM_Y = ("relu", "leaky_relu", "tanh", "sigmoid")


def _act_backward_(g: torch.Tensor, act: str, arg, saved: torch.Tensor | None) -> torch.Tensor:
    """grad_z from grad_y, in place in ``g`` (ours); ``saved`` is y (_FROM_Y) or z."""
    if act == "none":
        return g
    if act == "relu":
        return aten.threshold_backward.grad_input(g, saved, 0, grad_input=g)
    if act == "leaky_relu":
        slope = LEAKY_SLOPE if arg is None else arg  # a negative slope saved z (see _apply_act_)
        return aten.leaky_relu_backward.grad_input(g, saved, slope, slope >= 0, grad_input=g)
    if act == "tanh":
        return aten.tanh_backward.grad_input(g, saved, grad_input=g)
    if act == "sigmoid":
        return aten.sigmoid_backward.grad_input(g, saved, grad_input=g)
    if act in ("gelu", "gelu_tanh"):
        return aten.gelu_backward.grad_input(g, saved, approximate="tanh" if act == "gelu_tanh" else "none",
                                             grad_input=g)
    if act == "silu":
        return aten.silu_backward.grad_input(g, saved, grad_input=g)
    if act == "sin":
        w0 = SIREN_W0 if arg is None else arg
        return g.mul_(torch.cos(w0 * saved).mul_(w0))
    raise AssertionError(act)  # pragma: no cover


def _apply_act_(y: torch.Tensor, act: str, arg, owned: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(activation of y, what its backward reads); in place when ``owned`` and the backward reads y."""
    if act == "none":
        return y, None
    if act == "leaky_relu" and arg is not None and arg < 0:  # y's sign does not tell z's: keep z
        return apply_activation(y, act, arg), y
    if act in _FROM_Y:
        if owned:
            if act == "relu":
                out = F.relu_(y)
            elif act == "leaky_relu":
                out = F.leaky_relu_(y, LEAKY_SLOPE if arg is None else arg)
            else:
                out = y.tanh_() if act == "tanh" else y.sigmoid_()
        else:
            out = apply_activation(y, act, arg)
        return out, out
    return apply_activation(y, act, arg), y


def to_grouped(x: torch.Tensor) -> torch.Tensor:
    """(B, N, C, H, W) -> (N, B*C, H, W) channels-last, network-major channels."""
    B, N, C, H, W = x.shape
    out = torch.empty((N, B * C, H, W), dtype=x.dtype, device=x.device, memory_format=CL)
    out.unflatten(1, (B, C)).copy_(x.transpose(0, 1))
    return out


def expand_shared(h: torch.Tensor, n: int) -> torch.Tensor:
    """A shared (N, C, H, W) value as the grouped (N, n*C, H, W) of n networks' identical values; a
    shared (N, F) as (n, N, F)."""
    if h.dim() == 4:
        N, C, H, W = h.shape
        return h.unsqueeze(1).expand(N, n, C, H, W).reshape(N, n * C, H, W).contiguous(memory_format=CL)
    return h.unsqueeze(0).expand(n, *h.shape).contiguous()


def _unexpand(g: torch.Tensor, n: int) -> torch.Tensor:
    """The gradient of a shared value from that of its expansion to n networks."""
    if g.dim() == 4:
        N, nC, H, W = g.shape
        return g.view(N, n, nC // n, H, W).sum(1) if g.is_contiguous() else \
            g.unflatten(1, (n, nC // n)).sum(1)
    return g.sum(0)


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
        self.entries = {e.name: e for e in layout.entries}  # offsets, for the one-node backward
        B = preps2d.shape[0]
        sizes = layout.split_sizes
        sizes[-1] = preps2d.shape[1] - sum(sizes[:-1])  # the padding (taller PReps: more of it)
        pieces = preps2d.split(sizes, dim=1)
        self.views = {e.name: pieces[i].view(B, *e.shape) for i, e in enumerate(layout.entries)}

    def params(self, layer):
        return self.views[f"{layer.name}.weight"], self.views.get(f"{layer.name}.bias")

    def split(self, sizes):
        return [PRepGeneralWeights(self.spec, p, self.width) for p in self.preps2d.split(sizes)]


def general_forward(spec: ArchSpec, weights: GeneralWeights, x: torch.Tensor, n: int, shared: bool,
                    record: list | None = None) -> torch.Tensor:
    """Outputs (n, N, out) of the n networks of ``spec`` on ``x`` ((N, ...) shared, (n, N, ...) or
    grouped (N, n*C, H, W)), weights from ``weights``. Differentiable by autograd (the zoo trainer's
    path, and the reference of :class:`GeneralNet`); with ``record`` (a list, under ``no_grad``),
    what each layer's backward reads is appended to it, one entry per layer, for :class:`GeneralNet`.
    Activations after a conv/linear or an addition run in place (their input is a fresh tensor of
    ours whose backward does not read it). Without ``record`` each value is dropped after the layer
    that reads it last (autograd keeps what its backward needs; without gradient nothing is kept)."""
    if not shared and x.dim() == 5:
        x = to_grouped(x)
    values: dict[int, tuple[torch.Tensor, bool]] = {0: (x, shared)}
    dead = _last_reads(spec) if record is None else {}
    for i, layer in enumerate(spec.layers):
        h, sh = values[layer.src]
        kind = layer.kind
        r = None
        owned = False
        if kind == "conv":
            w, b = weights.params(layer)
            ws = w.reshape(n * layer.out_features, *w.shape[2:])
            bs = b.reshape(-1) if b is not None else None
            if sh and layer.groups == 1:
                hin, groups = h.contiguous(memory_format=CL), 1
            else:
                hin, groups = (expand_shared(h, n) if sh else h), n * layer.groups
            z = weights.norm(layer, F.conv2d(hin, ws, bs, layer.stride, layer.padding, layer.dilation, groups), True)
            r = [hin, ws, groups, sh]
            sh, owned = False, True
        elif kind == "linear":
            w, b = weights.params(layer)
            if sh:
                z = torch.matmul(h, w.transpose(1, 2))
                if b is not None:
                    z.add_(b.unsqueeze(1))
            elif b is not None:
                z = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            else:
                z = torch.bmm(h, w.transpose(1, 2))
            z = weights.norm(layer, z, False)
            r = [h, w, sh]
            sh, owned = False, True
        elif kind == "maxpool":
            z, idx = F.max_pool2d(h, layer.kernel, layer.stride, layer.padding, layer.dilation, return_indices=True)
            r = [h, idx]
        elif kind in ("avgpool", "adaptive_avgpool"):
            z = layer_op(layer, h)
            r = [h]
        elif kind == "flatten":
            if h.dim() != 4:
                z = h
            elif sh:
                z = h.flatten(1)
            else:
                N, BC, H, W = h.shape
                z = h.view(N, n, BC // n, H, W).transpose(0, 1).reshape(n, N, (BC // n) * H * W)
            r = [tuple(h.shape), h.dim() == 4 and not sh]
        else:  # act
            z = h
            r = []
        res_info = None
        if layer.residual is not None:
            rv, rsh = values[layer.residual]
            y_exp = sh and not rsh
            if y_exp:
                z, sh = expand_shared(z, n), False
            elif rsh and not sh:
                rv = expand_shared(rv, n)
            z = z + rv if not owned else z.add_(rv)
            owned = True
            res_info = (y_exp, rsh and not y_exp and not sh)
        y, saved = _apply_act_(z, layer.act, layer.act_arg, owned)
        values[layer.dst] = (y, sh)
        if record is not None:
            record.append((r, saved, res_info))
        for v in dead.get(i, ()):
            values.pop(v, None)
    out, sh = values[spec.layers[-1].dst]
    if record is not None:
        record.append(sh)  # last: whether the output was expanded from a shared value
    return expand_shared(out, n) if sh else out


@lru_cache(maxsize=256)
def _last_reads(spec: ArchSpec) -> dict[int, tuple[int, ...]]:
    """Layer index -> the values no later layer reads (the output excepted)."""
    last: dict[int, int] = {}
    for i, layer in enumerate(spec.layers):
        for v in (layer.src, layer.residual, layer.dst):
            if v is not None:
                last[v] = i
    last.pop(spec.layers[-1].dst, None)
    out: dict[int, list[int]] = {}
    for v, i in last.items():
        out.setdefault(i, []).append(v)
    return {i: tuple(vs) for i, vs in out.items()}


class _Chunk:
    """Rows [r0, r1) of the PRep batch: their weights and the records of their forward."""

    def __init__(self, spec: ArchSpec, preps2d: torch.Tensor, r0: int, r1: int, width: int) -> None:
        self.r0, self.r1, self.n = r0, r1, r1 - r0
        self.weights = PRepGeneralWeights(spec, preps2d[r0:r1], width)
        self.rec: list = []


def _run_chunks(spec, preps2d, x, width, shared, sizes):
    """The recorded forward of every chunk; returns (chunks, outputs)."""
    chunks, outs, r0 = [], [], 0
    for c in sizes:
        chunk = _Chunk(spec, preps2d, r0, r0 + c, width)
        outs.append(general_forward(spec, chunk.weights, x if shared else x[r0:r0 + c], c, shared, chunk.rec))
        chunks.append(chunk)
        r0 += c
    return chunks, outs


def _backward(spec: ArchSpec, chunk: "_Chunk", g_out: torch.Tensor, grad_preps: torch.Tensor, x: torch.Tensor,
              shared: bool, need_x: bool):
    n, rows = chunk.n, grad_preps[chunk.r0:chunk.r1]
    last = spec.layers[-1].dst
    grads = ValueGrads(last, g_out)
    rec = chunk.rec
    if rec[-1]:  # the output was expanded from a shared value
        grads[last] = _unexpand(grads[last], n)

    def acc(v: int, g: torch.Tensor) -> None:
        if v in grads:
            grads[v] = grads[v] + g if grads[v].shape != g.shape else grads[v].add_(g)
        else:
            grads[v] = g

    for i in range(len(spec.layers) - 1, -1, -1):
        layer = spec.layers[i]
        r, saved, res_info = rec[i]
        rec[i] = None  # freed once used
        g = grads.pop(layer.dst, None)
        if g is None:
            continue
        g = _act_backward_(g, layer.act, layer.act_arg, saved)
        if res_info is not None:
            y_exp, r_exp = res_info
            acc(layer.residual, _unexpand(g, n) if r_exp else g.clone())
            if y_exp:
                g = _unexpand(g, n)
        kind = layer.kind
        want_x = layer.src != 0 or need_x
        if kind == "conv":
            hin, ws, groups, sh_in = r
            gx, gw, gb = aten.convolution_backward(
                g, hin, ws, [ws.shape[0]] if layer.has_bias else None, _pair2(layer.stride), _pair2(layer.padding),
                _pair2(layer.dilation), False, [0, 0], groups, [want_x, True, layer.has_bias])
            e = chunk.weights.entries[f"{layer.name}.weight"]
            rows[:, e.offset:e.offset + e.numel].copy_(gw.reshape(n, -1))
            if layer.has_bias:
                e = chunk.weights.entries[f"{layer.name}.bias"]
                rows[:, e.offset:e.offset + e.numel].copy_(gb.view(n, -1))
            if want_x:
                if sh_in and groups != 1:
                    gx = _unexpand(gx, n)
                acc(layer.src, gx)
        elif kind == "linear":
            h, w, sh_in = r
            e = chunk.weights.entries[f"{layer.name}.weight"]
            gw = rows[:, e.offset:e.offset + e.numel].view(n, *w.shape[1:])
            if sh_in:
                torch.matmul(g.transpose(1, 2), h, out=gw)
            else:
                torch.bmm(g.transpose(1, 2), h, out=gw)
            if layer.has_bias:
                e = chunk.weights.entries[f"{layer.name}.bias"]
                torch.sum(g, 1, out=rows[:, e.offset:e.offset + e.numel])
            if want_x:
                gx = torch.bmm(g, w)
                acc(layer.src, gx.sum(0) if sh_in else gx)
        elif kind == "maxpool":
            h, idx = r
            acc(layer.src, aten.max_pool2d_with_indices_backward(
                g, h, _pair2(layer.kernel), _pair2(layer.stride), _pair2(layer.padding), _pair2(layer.dilation),
                False, idx))
        elif kind == "avgpool":
            (h,) = r
            acc(layer.src, aten.avg_pool2d_backward(g, h, _pair2(layer.kernel), _pair2(layer.stride),
                                                    _pair2(layer.padding), False, layer.count_include_pad, None))
        elif kind == "adaptive_avgpool":
            (h,) = r
            acc(layer.src, aten._adaptive_avg_pool2d_backward(g.contiguous(memory_format=_fmt(h)), h))
        elif kind == "flatten":
            shape, grouped = r
            if grouped:
                N, BC, H, W = shape
                gi = torch.empty(shape, dtype=g.dtype, device=g.device, memory_format=CL)
                gi.unflatten(1, (n, BC // n)).copy_(g.reshape(n, N, BC // n, H, W).transpose(0, 1))
            else:
                gi = g.reshape(shape)
            acc(layer.src, gi)
        else:  # act
            acc(layer.src, g)
    gx = grads.get(0) if need_x else None
    if gx is not None and not shared and x.dim() == 5:
        N, nC, H, W = gx.shape
        gx = gx.view(N, n, nC // n, H, W).transpose(0, 1) if gx.is_contiguous() else \
            gx.unflatten(1, (n, nC // n)).transpose(0, 1)
    return gx


def _fmt(t: torch.Tensor):
    return CL if (t.dim() == 4 and t.is_contiguous(memory_format=CL) and not t.is_contiguous()) \
        else torch.contiguous_format


def _pair2(v) -> list[int]:
    return [v, v] if isinstance(v, int) else list(v)


class GeneralNet(torch.autograd.Function):
    """``batched_forward`` of a spec on the general engine as one autograd node: the forward runs
    :func:`general_forward` without autograd, chunk by chunk, recording what each layer's backward
    reads; the backward walks the layers in reverse computing every activation's gradient IN PLACE
    in the gradient buffer it owns (no fresh full-size buffer per layer: with glibc's default
    allocator a fresh 8 MB buffer pays its page faults, 2.6 ms against 1.2 ms for a ReLU backward),
    freeing each record once used and writing every weight and bias gradient straight into the one
    (B, P) PRep gradient. A second backward through the same forward (retain_graph: gradcheck,
    Jacobians) recomputes the records first."""

    @staticmethod
    def forward(ctx, preps2d, x, spec, width, shared, sizes):
        chunks, outs = _run_chunks(spec, preps2d, x, width, shared, sizes)
        ctx.spec, ctx.width, ctx.shared, ctx.sizes, ctx.chunks = spec, width, shared, sizes, chunks
        ctx.save_for_backward(preps2d, x)
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        preps2d, x = ctx.saved_tensors
        spec, shared, need_x = ctx.spec, ctx.shared, ctx.needs_input_grad[1]
        chunks, ctx.chunks = ctx.chunks, None
        if chunks is None:  # a second backward: the first one freed the records
            with torch.no_grad():
                chunks, _ = _run_chunks(spec, preps2d, x, ctx.width, shared, ctx.sizes)
        grad_preps = prep_grad_buffer(preps2d)
        gxs = []
        for chunk in chunks:
            gxs.append(_backward(spec, chunk, grad_out[chunk.r0:chunk.r1], grad_preps,
                                 x if shared else x[chunk.r0:chunk.r1], shared, need_x))
        gx = None
        if need_x:  # every chunk reads x: each has its gradient
            gx = torch.stack(gxs).sum(0) if shared else torch.cat(gxs)
        return grad_preps, gx, None, None, None, None


#: on CPU, the largest activation of one chunk of networks, in bytes: per-network calls (chunks of
#: one) while one network's activations are this big, more networks per grouped call when they are
#: smaller (a depthwise-separable CNN, B=32, fwd+bwd, 2-core EPYC: N=128 (8 MB a network) chunks of
#: 1 333 ms, 2 370, 4 562, all 32 grouped 958; N=16 (1 MB) chunks of 1 101 ms, 4 57, 8 58, 32 80):
#: beyond the caches, the grouped layout's big tensors cost more in memory traffic and fresh pages
#: than its fewer calls save. A cache bound: it does not apply on a GPU (:func:`chunk_bytes`).
CHUNK_BYTES = 8 << 20
#: on CUDA, the largest activation of one chunk is at most the device's memory over this: a GPU
#: has no cache to fit (one grouped call for all networks is what it runs fastest), only its memory
#: to hold a chunk's recorded activations (a few tens of values of that size: 1/64 of an 80 GB H100
#: is 1.25 GB a value, 32 depthwise CNNs at N = 128, 8 MB a network, stay one call)
CUDA_CHUNK_DIVISOR = 64


@lru_cache(maxsize=16)
def _cuda_total_memory(index: int) -> int:
    return int(torch.cuda.get_device_properties(index).total_memory)


def chunk_bytes(device: torch.device | str | None = None) -> int:
    """The bound on one chunk's largest activation on ``device``: :data:`CHUNK_BYTES` on CPU (and
    when no device is given), the device's total memory / :data:`CUDA_CHUNK_DIVISOR` on CUDA (a
    fixed figure per device, so that a call's chunks, and its CUDA graph's signature, never change
    with what else is allocated)."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return max(CHUNK_BYTES, _cuda_total_memory(index) // CUDA_CHUNK_DIVISOR)
    return CHUNK_BYTES


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


def chunk_size(spec: ArchSpec, B: int, N: int, itemsize: int, device: torch.device | str | None = None) -> int:
    """Networks per grouped call on ``device`` (see :func:`chunk_bytes`)."""
    per_net = max(value_numels(spec)[1:]) * N * itemsize
    return max(1, min(B, chunk_bytes(device) // max(per_net, 1)))


def chunk_sizes(spec: ArchSpec, B: int, N: int, itemsize: int, device: torch.device | str | None = None
                ) -> tuple[int, ...]:
    """The B networks cut into consecutive chunks of :func:`chunk_size`."""
    c = chunk_size(spec, B, N, itemsize, device)
    return tuple(min(c, B - s) for s in range(0, B, c))


def chunked_forward(spec: ArchSpec, weights: GeneralWeights, x: torch.Tensor, B: int, shared: bool,
                    grouped_input: bool = False) -> torch.Tensor:
    """:func:`general_forward` over chunks of networks (:func:`chunk_size`), outputs concatenated.
    ``x``: shared (N, ...), per network (B, N, ...), or with ``grouped_input`` (N, B*C, H, W)."""
    N = x.shape[0] if (shared or grouped_input) else x.shape[1]
    sizes = chunk_sizes(spec, B, N, x.element_size(), x.device)
    if len(sizes) == 1:
        return general_forward(spec, weights, x, B, shared)
    parts = weights.split(list(sizes))
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
    sizes = chunk_sizes(spec, B, x.shape[0] if shared else x.shape[1], x.element_size(), x.device)
    return GeneralNet.apply(preps2d, x, spec, preps.shape[2], shared, sizes)


def prep_general_forward_autograd(spec: ArchSpec, preps: torch.Tensor, x: torch.Tensor, shared: bool) -> torch.Tensor:
    """The same through autograd over the batched calls (:func:`chunked_forward`): the reference of
    the one-node path's hand-written backward in the tests."""
    B = preps.shape[0]
    return chunked_forward(spec, PRepGeneralWeights(spec, preps.reshape(B, -1), preps.shape[2]), x, B, shared)
