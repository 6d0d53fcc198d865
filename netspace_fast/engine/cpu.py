"""The CPU whole-network path of batched_forward: B networks, each conv grouped or per network.

Two layouts of the B networks' activations (:mod:`netspace_fast.engine.layout`): ONE (N, B*C, H, W)
channels-last tensor (network-major channels), where a conv is ONE grouped oneDNN call whatever B
is and a shared input is ONE ordinary conv with the B networks' filters stacked; or B per-network
(N, C, H, W) channels-last tensors, where a conv is one ordinary oneDNN call per network. Small
per-network convs (few output channels or pixels: LeNetLike, small batches) are faster grouped,
large ones (ResNet stages at N=128) per network (measurements in layout.py); the choice is made
per layer, a run of per-network layers executes network by network (cache reuse), and the
activations are converted once where the choice changes. Weight and bias gradients are written
straight into the one (B, P) PRep gradient; linear layers use the native batched_linear ops
((B, N, F) layout). The backward frees each activation once used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops.batched_layers_ref import ACT_LEAKY, ACT_NONE, LEAKY_SLOPE, act_grad
from ..ops.batched_layers import cuda_layer_backward, cuda_layer_forward
from ..ops.epilogue import conv_epilogue_backward
from .executor import Weights, fused_backend, run
from .grads import ValueGrads, prep_grad_buffer
from .layout import to_grouped, to_split

CL = torch.channels_last


class PRepWeights(Weights):
    """Layer weights read from a (B, P) PRep batch (views; the grouped conv's (B*cout, cin, k, k)
    filter bank is one channels-last copy)."""

    def __init__(self, preps2d: torch.Tensor) -> None:
        self.preps2d = preps2d
        self.B = preps2d.shape[0]

    def conv(self, i, step, h, groups, with_bias=True):
        w_off, b_off, cout, cin, k, stride, padding = step[5]
        B = self.B
        w = self.preps2d[:, w_off:w_off + cout * cin * k * k].reshape(B * cout, cin, k, k)
        # the filters in the input's layout: channels-last, or NCHW where the layer runs so (cuDNN and
        # oneDNN pick the channels-last kernels when either operand is channels-last)
        w = w.contiguous(memory_format=CL if h.is_contiguous(memory_format=CL) else torch.contiguous_format)
        b = self.conv_bias(i, step) if with_bias else None
        return F.conv2d(h, w, b, stride, padding, 1, groups), w

    def conv_bias(self, i, step):
        b_off, cout = step[5][1], step[5][2]
        return self.preps2d[:, b_off:b_off + cout].reshape(self.B * cout)

    def conv_params(self, i, step):
        """Per-network (cout, cin, k, k) weight and (cout,) bias views of the PRep batch (no copies)."""
        w_off, b_off, cout, cin, k, _, _ = step[5]
        n = cout * cin * k * k
        p = self.preps2d
        ws = [p[b, w_off:w_off + n].view(cout, cin, k, k) for b in range(self.B)]
        bs = [p[b, b_off:b_off + cout] for b in range(self.B)]
        return (ws, bs), ws

    def conv_one(self, i, step, params, b, h):
        ws, bs = params
        return F.conv2d(h, ws[b], bs[b], step[5][5], step[5][6])

    def linear(self, i, step, h, residual):
        return torch.ops.netspace_fast.batched_linear(h, self.preps2d, *step[5], step[4], residual)


class FusedPRepWeights(PRepWeights):
    """The GPU program's weight source: linear layers through the batched linear op's Triton kernel
    (bias, residual and activation fused in it; called directly, so CPU tensors run it interpreted
    in the rehearsal)."""

    def linear(self, i, step, h, residual):
        return cuda_layer_forward("linear", h, self.preps2d, step[5], step[4], residual)


def grouped_forward(preps2d: torch.Tensor, x: torch.Tensor, program, shared: bool, fused: bool = False):
    """Runs the program with weights from the PReps; returns (output (B, N, out), saved state for
    :func:`grouped_backward`). Layouts and blocks: :mod:`netspace_fast.engine.executor`; ``fused``:
    the GPU program (fused epilogues, the linear layers' Triton kernels)."""
    weights = FusedPRepWeights(preps2d) if fused else PRepWeights(preps2d)
    return run(program, x, preps2d.shape[0], weights, shared=shared, record=True, fused=fused)


def grouped_backward(grad_out: torch.Tensor, preps2d: torch.Tensor, x: torch.Tensor, program: list, state,
                     shared: bool, need_x: bool, fused: bool = False):
    saved, blocks = state
    B = preps2d.shape[0]
    grad_preps = prep_grad_buffer(preps2d)
    grads = ValueGrads(program[-1][2], grad_out)  # a copy: the in-place backwards never touch the caller's

    def acc(v: int, g) -> None:
        """Accumulate a gradient (tensor or per-network list) in the form already stored for v."""
        if v not in grads:
            grads[v] = g
            return
        cur = grads[v]
        if isinstance(cur, list):
            for c, gi in zip(cur, to_split(g, B)):
                c.add_(gi)
        else:
            cur.add_(to_grouped(g) if isinstance(g, list) else g)

    for start, stop, split, _ in reversed(blocks):
        if split:
            _split_block_backward(preps2d, program, saved, start, stop, grads, acc, shared, need_x, grad_preps, B)
            continue
        kind, src, dst, residual, act, geom = program[start]
        h, w, y, z, groups = saved[start]
        g = grads.pop(dst, None)
        if g is None:
            continue
        want_x = src != 0 or need_x
        if kind == "conv":
            w_off, b_off, cout, cin, k, stride, padding = geom
            gx, gw, gb = _conv_backward(to_grouped(g) if isinstance(g, list) else g, h, w, y, z, geom, act, groups,
                                        want_x, acc if residual is not None else None, residual, fused)
            grad_preps[:, w_off:w_off + cout * cin * k * k].view(B, cout, cin, k, k).copy_(
                gw.view(B, cout, cin, k, k))
            grad_preps[:, b_off:b_off + cout].copy_(gb.view(B, cout))
            if want_x:  # a layer run in NCHW: its input's gradient back in channels-last, as the rest
                acc(src, gx.contiguous(memory_format=CL))
        elif kind == "linear" and fused:
            gx, gz = cuda_layer_backward("linear", g.contiguous(), h, preps2d, y, z, geom, act, grad_preps, want_x)
            if residual is not None:
                acc(residual, gz)
            if want_x:
                acc(src, gx)
        elif kind == "linear":
            gx, gz = torch.ops.netspace_fast.batched_linear_backward(g.contiguous(), h, preps2d, y, z, *geom, act,
                                                                     grad_preps, want_x)
            if residual is not None:
                acc(residual, gz)
            if want_x:
                acc(src, gx)
        elif kind == "avgpool":
            acc(src, _pool_back(to_grouped(g) if isinstance(g, list) else g, h, geom))
        else:
            if isinstance(h, list):
                acc(src, [g[b].reshape(h[b].shape).contiguous(memory_format=CL) for b in range(B)])
            elif h.dim() == 4:
                N, BC, H, W = h.shape
                gi = torch.empty((N, BC, H, W), dtype=g.dtype, device=g.device, memory_format=CL)
                gi.unflatten(1, (B, BC // B)).copy_(g.reshape(B, N, BC // B, H, W).permute(1, 0, 2, 3, 4))
                acc(src, gi)
            else:
                acc(src, g)
    gx = grads.get(0) if need_x else None
    if gx is not None and not shared and x.dim() == 5:
        if isinstance(gx, list):
            gx = torch.stack(gx).contiguous()
        else:
            Bx, N, C, H, W = x.shape
            gx = gx.reshape(N, B, C, H, W).permute(1, 0, 2, 3, 4).contiguous()
    return grad_preps, gx


def _conv_backward(g, h, w, y, z, geom, act, groups, want_x, add_residual, residual, fused=False):
    """One conv layer's backward (all networks grouped, or one network): the activation's gradient
    (also the residual branch's, handed to ``add_residual``), then (grad_x, grad_w, grad_b).
    ``fused``: the activation's gradient by the fused epilogue's backward kernel (the GPU program)."""
    stride, padding = geom[5], geom[6]
    if fused and act != ACT_NONE:
        gz = conv_epilogue_backward(g, y, z if z is not None else y.new_empty(0), act, backend=fused_backend(g.device))
    elif act == ACT_LEAKY:  # in place: g is ours (see grouped_backward); a fresh 10-40 MB buffer per
        # layer costs its page faults with glibc's default malloc (LeNetLike conv1, B=64: 11.5 vs 4 ms)
        gz = torch.ops.aten.leaky_relu_backward.grad_input(g, y, LEAKY_SLOPE, True, grad_input=g)
    else:
        gz = act_grad(g, y, z, act)
    if add_residual is not None:
        add_residual(residual, gz)
    return torch.ops.aten.convolution_backward(gz, h, w, [w.shape[0]], [stride, stride], [padding, padding], [1, 1],
                                               False, [0, 0], groups, [want_x, True, True])


def _pool_back(g: torch.Tensor, h: torch.Tensor, geom: tuple) -> torch.Tensor:
    return torch.ops.aten.avg_pool2d_backward(g.contiguous(memory_format=CL), h, [geom[0]] * 2, [geom[1]] * 2,
                                              [0, 0], False, True, None)


def _split_block_backward(preps2d, program, saved, start, stop, grads, acc, shared, need_x, grad_preps, B) -> None:
    """Backward of a per-network block, network by network; weight gradients straight into grad_preps."""
    entries = program[start:stop]
    inside = {e[2] for e in entries}
    # gradients that reached the block's values from later layers, one tensor per network
    incoming = {v: [t.contiguous(memory_format=CL) for t in to_split(grads.pop(v), B)]
                for v in inside if v in grads}
    ext: dict[int, list] = {}  # gradients for values made before the block
    for b in range(B):
        local: dict[int, torch.Tensor] = {v: gs[b] for v, gs in incoming.items()}

        def add(v: int, g: torch.Tensor) -> None:  # the first gradient stored is our own (see ValueGrads)
            if v in local:
                local[v].add_(g)
            else:
                local[v] = g

        for i in range(stop - 1, start - 1, -1):
            kind, src, dst, residual, act, geom = program[i]
            hs, ws, ys, pres, _ = saved[i]
            g = local.pop(dst, None)
            if g is None:
                continue
            want_x = src != 0 or need_x
            if kind == "conv":
                w_off, b_off, cout, cin, k, stride, padding = geom
                gx, gw, gb = _conv_backward(g, hs[b], ws[b], ys[b], pres[b] if pres is not None else None, geom, act,
                                            1, want_x, add if residual is not None else None, residual)
                grad_preps[b, w_off:w_off + cout * cin * k * k].copy_(gw.reshape(-1))
                grad_preps[b, b_off:b_off + cout].copy_(gb)
                if want_x:
                    add(src, gx)
            else:
                add(src, _pool_back(g, hs[b], geom))
            hs[b] = None  # freed as soon as used: memory is reused for the gradients that follow
            if ys is not None:
                ys[b] = None
            if pres is not None:
                pres[b] = None
        for v, g in local.items():  # what is left are the block's inputs
            ext.setdefault(v, [None] * B)[b] = g
    for v, gs in ext.items():
        if v == 0 and shared:  # every network read the same input: the gradients add up
            acc(0, torch.stack(gs).sum(0))
        else:
            acc(v, gs)


def _output_read_by_backward(program) -> bool:
    """Whether the backward reads the network's output itself: the layer that makes it (through any
    flatten after it) has LeakyReLU, whose backward reads its recorded output."""
    producer = {step[2]: step for step in program}
    step = program[-1]
    while step[0] == "flatten":
        step = producer[step[1]]
    return step[0] in ("conv", "linear") and step[4] == ACT_LEAKY


class GroupedNet(torch.autograd.Function):
    """The CPU whole-network path as one autograd node. Its backward frees every activation as soon
    as it has been used (peak memory about halves, and freed memory is reused for the gradients
    instead of growing the heap: with glibc's default malloc, 460 -> 355 ms per ResNet8 step, B=8,
    N=128). A second backward through the same forward (retain_graph=True: gradcheck, Jacobians)
    recomputes the activations from the saved inputs first."""

    @staticmethod
    def forward(ctx, preps2d, x, program, shared, fused=False):
        out, saved = grouped_forward(preps2d, x, program, shared, fused)
        ctx.program, ctx.saved, ctx.shared, ctx.fused = program, saved, shared, fused
        ctx.x_shape = x.shape
        # The activations kept in ``saved`` are our own, except x (saved here) and the output when
        # the last layer's backward reads it (LeakyReLU): save that too, so an in-place change of
        # the output after the forward is autograd's error instead of a wrong gradient.
        if _output_read_by_backward(program):
            ctx.save_for_backward(preps2d, x, out)
        else:
            ctx.save_for_backward(preps2d, x)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        preps2d, x = ctx.saved_tensors[:2]  # unpacking checks the version counters
        state, ctx.saved = ctx.saved, None
        if state is None:  # the first backward freed the activations: recompute them
            with torch.no_grad():
                state = grouped_forward(preps2d, x, ctx.program, ctx.shared, ctx.fused)[1]
        grad_preps, gx = grouped_backward(grad_out, preps2d, x, ctx.program, state, ctx.shared,
                                          ctx.needs_input_grad[1], ctx.fused)
        return grad_preps, gx, None, None, None


__all__ = ["FusedPRepWeights", "GroupedNet", "PRepWeights", "grouped_backward", "grouped_forward"]
