"""The CPU whole-network path of batched_forward: B networks as ONE grouped, channels-last network.

Measured on the 2-core development machines (one thread, forward + backward of one layer):
per-network oneDNN convolutions (the loop's way) vs one grouped convolution with groups = B in
channels-last layout: 16 ch 32x32 462 vs 230 ms, 32 ch 16x16 231 vs 161 ms, 64 ch 8x8 111 vs
105 ms, LeNetLike conv2 (6 -> 16, 14x14, B=64) 1042 vs 122 ms. So between conv layers the
activations of all networks live in one (N, B*C, H, W) channels-last tensor (network-major
channels): every conv is ONE oneDNN call whatever B is, a shared input is ONE ordinary conv with
the B networks' filters stacked (its output already has that layout), and no relayout happens
until the features are flattened. Weight and bias gradients are written straight into the one
(B, P) PRep gradient. Linear layers use the native batched_linear ops ((B, N, F) layout).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .backprop import ValueGrads, prep_grad_buffer
from .ops.batched_ref import ACT_LEAKY, ACT_SIN, LEAKY_SLOPE, SIN_W0, act_grad

CL = torch.channels_last


def _conv_weights(preps2d: torch.Tensor, geom: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    w_off, b_off, cout, cin, k, _, _ = geom
    B = preps2d.shape[0]
    w = preps2d[:, w_off:w_off + cout * cin * k * k].reshape(B * cout, cin, k, k)
    b = preps2d[:, b_off:b_off + cout].reshape(B * cout)
    return w.contiguous(memory_format=CL), b


def _act_(z: torch.Tensor, act: int) -> torch.Tensor:
    if act == ACT_LEAKY:
        return F.leaky_relu_(z, LEAKY_SLOPE)
    if act == ACT_SIN:
        return torch.sin(SIN_W0 * z)
    return z


def grouped_forward(preps2d: torch.Tensor, x: torch.Tensor, program: list, shared: bool):
    """Runs the program; returns (output (B, N, out), saved state for grouped_backward)."""
    B = preps2d.shape[0]
    values: dict[int, torch.Tensor] = {}
    saved = []
    if shared:
        values[0] = x
    elif x.dim() == 5:  # (B, N, C, H, W) -> (N, B*C, H, W), network-major channels
        Bx, N, C, H, W = x.shape
        values[0] = x.permute(1, 0, 2, 3, 4).reshape(N, B * C, H, W).contiguous(memory_format=CL)
    else:
        values[0] = x
    for kind, src, dst, residual, act, geom in program:
        h = values[src]
        if kind == "conv":
            w, b = _conv_weights(preps2d, geom)
            first_shared = src == 0 and shared
            hin = h.contiguous(memory_format=CL) if first_shared else h
            z = F.conv2d(hin, w, b, geom[5], geom[6], 1, 1 if first_shared else B)
            if residual is not None:
                z.add_(values[residual])
            pre = z.clone() if act == ACT_SIN else None
            y = _act_(z, act)
            saved.append((hin, w, y, pre, 1 if first_shared else B))
        elif kind == "linear":
            res = values[residual] if residual is not None else None
            y, z = torch.ops.netspace_fast.batched_linear(h, preps2d, *geom, act, res)
            saved.append((h, None, y, z, None))
        elif kind == "avgpool":
            y = F.avg_pool2d(h, geom[0], geom[1])
            saved.append((h, None, None, None, None))
        else:  # flatten: (N, B*C, H, W) -> (B, N, C*H*W) in each network's own (c, h, w) order
            if h.dim() == 4:
                N, BC, H, W = h.shape
                # splitting the channel dim is a view in any layout: one copy in all
                y = h.unflatten(1, (B, BC // B)).permute(1, 0, 2, 3, 4).reshape(B, N, -1)
            else:
                y = h
            saved.append((h, None, None, None, None))
        values[dst] = y
    out = values[program[-1][2]]
    return out, saved


def grouped_backward(grad_out: torch.Tensor, preps2d: torch.Tensor, x: torch.Tensor, program: list, saved: list,
                     shared: bool, need_x: bool, num_params: int):
    B = preps2d.shape[0]
    grad_preps = prep_grad_buffer(preps2d, num_params)
    grads = ValueGrads(program[-1][2], grad_out)
    acc = grads.add

    for (kind, src, dst, residual, act, geom), (h, w, y, z, groups) in zip(reversed(program), reversed(saved)):
        g = grads.pop(dst, None)
        if g is None:
            continue
        if kind == "conv":
            w_off, b_off, cout, cin, k, stride, padding = geom
            gz = act_grad(g, y, z, act)
            if residual is not None:
                acc(residual, gz)
            want_x = src != 0 or need_x
            gx, gw, gb = torch.ops.aten.convolution_backward(
                gz, h, w, [B * cout], [stride, stride], [padding, padding], [1, 1], False, [0, 0], groups,
                [want_x, True, True])
            grad_preps[:, w_off:w_off + cout * cin * k * k].view(B, cout, cin, k, k).copy_(
                gw.view(B, cout, cin, k, k))
            grad_preps[:, b_off:b_off + cout].copy_(gb.view(B, cout))
            if want_x:
                acc(src, gx)
        elif kind == "linear":
            want_x = src != 0 or need_x
            gx, gz = torch.ops.netspace_fast.batched_linear_backward(g.contiguous(), h, preps2d, y, z, *geom, act,
                                                                     grad_preps, want_x)
            if residual is not None:
                acc(residual, gz)
            if want_x:
                acc(src, gx)
        elif kind == "avgpool":
            gi = torch.ops.aten.avg_pool2d_backward(g.contiguous(memory_format=CL), h, [geom[0]] * 2,
                                                    [geom[1]] * 2, [0, 0], False, True, None)
            acc(src, gi)
        else:
            if h.dim() == 4:
                N, BC, H, W = h.shape
                gi = torch.empty((N, BC, H, W), dtype=g.dtype, device=g.device, memory_format=CL)
                gi.unflatten(1, (B, BC // B)).copy_(g.reshape(B, N, BC // B, H, W).permute(1, 0, 2, 3, 4))
                acc(src, gi)
            else:
                acc(src, g)
    gx = grads.get(0) if need_x else None
    if gx is not None and not shared and x.dim() == 5:
        Bx, N, C, H, W = x.shape
        gx = gx.reshape(N, B, C, H, W).permute(1, 0, 2, 3, 4).contiguous()
    return grad_preps, gx


class GroupedNet(torch.autograd.Function):
    @staticmethod
    def forward(ctx, preps2d, x, program, shared, num_params):
        out, saved = grouped_forward(preps2d, x, program, shared)
        ctx.program, ctx.saved, ctx.shared, ctx.num_params = program, saved, shared, num_params
        ctx.x_shape = x.shape
        ctx.save_for_backward(preps2d, x)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        preps2d, x = ctx.saved_tensors
        grad_preps, gx = grouped_backward(grad_out, preps2d, x, ctx.program, ctx.saved, ctx.shared,
                                          ctx.needs_input_grad[1], ctx.num_params)
        return grad_preps, gx, None, None, None


__all__ = ["GroupedNet", "grouped_backward", "grouped_forward"]
