"""The general engine's PRep path as ONE autograd node (:class:`GeneralNet`), like the fused engine's:
the forward runs without autograd and records what each layer's backward reads; the backward
walks the layers in reverse, chunk of networks by chunk, computing every activation's gradient IN
PLACE in the gradient buffer it owns (no fresh full-size buffer per layer: with glibc's default
allocator a fresh 8 MB buffer pays its page faults, 2.6 ms against 1.2 ms for a ReLU backward),
freeing each recorded activation as soon as it has been used, and writing every weight and bias
gradient straight into the one (B, P) PRep gradient. A second backward through the same forward
(retain_graph: gradcheck, Jacobians) recomputes the records first. Semantics, layouts and chunks:
:mod:`.general`; its autograd path (``general_forward``) is the reference the tests compare with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..archs import LEAKY_SLOPE, SIREN_W0, ArchSpec, apply_activation, layer_op
from ..prep.layout import PRepLayout
from .grads import ValueGrads, prep_grad_buffer

CL = torch.channels_last
aten = torch.ops.aten

__all__ = ["GeneralNet", "expand_shared", "to_grouped"]

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


class _Chunk:
    """One chunk of networks: rows [r0, r1) of the PRep batch, its weight views and its records."""

    def __init__(self, spec: ArchSpec, preps2d: torch.Tensor, r0: int, r1: int, width: int) -> None:
        self.r0, self.r1, self.n = r0, r1, r1 - r0
        layout = PRepLayout.for_spec(spec, width)
        self.entries = {e.name: e for e in layout.entries}
        rows = preps2d[r0:r1]
        self.views = {e.name: rows[:, e.offset:e.offset + e.numel].view(self.n, *e.shape) for e in layout.entries}
        self.rec: list = []


def _forward(spec: ArchSpec, chunk: _Chunk, x: torch.Tensor, shared: bool, record: bool) -> torch.Tensor:
    n = chunk.n
    if not shared and x.dim() == 5:
        x = to_grouped(x)
    values: dict[int, tuple[torch.Tensor, bool]] = {0: (x, shared)}
    rec = chunk.rec = []
    for layer in spec.layers:
        h, sh = values[layer.src]
        kind = layer.kind
        r = None
        owned = False
        if kind == "conv":
            w = chunk.views[f"{layer.name}.weight"]
            b = chunk.views.get(f"{layer.name}.bias")
            ws = w.reshape(n * layer.out_features, *w.shape[2:])
            bs = b.reshape(-1) if b is not None else None
            if sh and layer.groups == 1:
                hin, groups = h.contiguous(memory_format=CL), 1
            else:
                hin, groups = (expand_shared(h, n) if sh else h), n * layer.groups
            z = F.conv2d(hin, ws, bs, layer.stride, layer.padding, layer.dilation, groups)
            r = [hin, ws, groups, sh]
            sh, owned = False, True
        elif kind == "linear":
            w = chunk.views[f"{layer.name}.weight"]
            b = chunk.views.get(f"{layer.name}.bias")
            if sh:
                z = torch.matmul(h, w.transpose(1, 2))
                if b is not None:
                    z.add_(b.unsqueeze(1))
            elif b is not None:
                z = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            else:
                z = torch.bmm(h, w.transpose(1, 2))
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
        if record:
            rec.append((r, saved, res_info))
    out, sh = values[spec.layers[-1].dst]
    if sh:
        out = expand_shared(out, n)
        chunk.out_expanded = True
    else:
        chunk.out_expanded = False
    return out


def _backward(spec: ArchSpec, chunk: _Chunk, g_out: torch.Tensor, grad_preps: torch.Tensor, x: torch.Tensor,
              shared: bool, need_x: bool):
    n, rows = chunk.n, grad_preps[chunk.r0:chunk.r1]
    last = spec.layers[-1].dst
    grads = ValueGrads(last, g_out)
    if chunk.out_expanded:
        grads[last] = _unexpand(grads[last], n)
    rec = chunk.rec

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
            e = chunk.entries[f"{layer.name}.weight"]
            rows[:, e.offset:e.offset + e.numel].copy_(gw.reshape(n, -1))
            if layer.has_bias:
                e = chunk.entries[f"{layer.name}.bias"]
                rows[:, e.offset:e.offset + e.numel].copy_(gb.view(n, -1))
            if want_x:
                if sh_in and groups != 1:
                    gx = _unexpand(gx, n)
                acc(layer.src, gx)
        elif kind == "linear":
            h, w, sh_in = r
            e = chunk.entries[f"{layer.name}.weight"]
            gw = rows[:, e.offset:e.offset + e.numel].view(n, *w.shape[1:])
            if sh_in:
                torch.matmul(g.transpose(1, 2), h, out=gw)
            else:
                torch.bmm(g.transpose(1, 2), h, out=gw)
            if layer.has_bias:
                e = chunk.entries[f"{layer.name}.bias"]
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
    """``batched_forward`` of a spec on the general engine, one autograd node (module docstring)."""

    @staticmethod
    def forward(ctx, preps2d, x, spec, width, shared, sizes):
        chunks, outs, r0 = [], [], 0
        for c in sizes:
            chunk = _Chunk(spec, preps2d, r0, r0 + c, width)
            xi = x if shared else x[r0:r0 + c]
            outs.append(_forward(spec, chunk, xi, shared, record=True))
            chunks.append(chunk)
            r0 += c
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
            chunks, r0 = [], 0
            with torch.no_grad():
                for c in ctx.sizes:
                    chunk = _Chunk(spec, preps2d, r0, r0 + c, ctx.width)
                    _forward(spec, chunk, x if shared else x[r0:r0 + c], shared, record=True)
                    chunks.append(chunk)
                    r0 += c
        grad_preps = prep_grad_buffer(preps2d)
        gxs = []
        for chunk in chunks:
            gxs.append(_backward(spec, chunk, grad_out[chunk.r0:chunk.r1], grad_preps,
                                 x if shared else x[chunk.r0:chunk.r1], shared, need_x))
        gx = None
        if need_x:
            gxs = [g if g is not None else None for g in gxs]
            if any(g is None for g in gxs):
                gx = torch.zeros_like(x)
                if shared:
                    for g in gxs:
                        if g is not None:
                            gx += g
                else:
                    for chunk, g in zip(chunks, gxs):
                        if g is not None:
                            gx[chunk.r0:chunk.r1] = g
            elif shared:
                gx = gxs[0]
                for g in gxs[1:]:
                    gx = gx + g
            else:
                gx = torch.cat(gxs)
        return grad_preps, gx, None, None, None, None
