"""The encoder's front: two width convolutions (1x3, stride (1, 2), padding (0, 1)), each followed by
LeakyReLU, then the maximum over the width (METHOD.md section 5), with a backward that touches only
what the maximum lets through.

The maximum passes the gradient to ONE width position per (network, channel, row): of the second
conv's B x C2 x H x W2 outputs, B x C2 x H receive a gradient (1 in W2 = 2,500 at the paper
configuration), and each depends on 3 first-conv outputs per input channel, each on 3 PRep values.
The dense backward autograd runs (max -> a dense zero tensor with one entry per row, then two full
convolution backwards over (B, C1, H, W/2) activations) is ~2/3 of the encoder's time on CPU
(measured: BENCHMARKS.md, "One training step at the paper configuration"). :func:`conv_max_width`
keeps the dense forward (oneDNN convs; the maximum needs every position) and computes the exact
backward from the (B, C2, H) argmax positions alone: it re-reads the 3 x 3 PRep values under each
position, recomputes the first
conv's 3 activations per input channel there, and forms every gradient (both weights, both biases,
and the PRep's when it requires one) with small einsums and one scatter, never materializing a
(B, C1, H, W/2) gradient. It also stores no activation for the backward (only the PRep, the argmax
and the maximum).

Ties: the gradient goes to the one position ``torch.max(dim)`` returns, as ``torch.max(x, dim)`` does
(``amax`` would split it among equal maxima; ties have measure zero for trained weights).
:func:`conv_max_width_ref` is the pure-PyTorch reference (the modules' dense path).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["conv_max_width", "conv_max_width_ref"]

_STRIDE = (1, 2)
_PAD = (0, 1)


def conv_max_width_ref(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                       slope: float) -> torch.Tensor:
    """Reference: ``max_w leaky(conv2(leaky(conv1(x))))`` -> (B, C2, H), dense autograd, the gradient of
    the maximum to the index ``torch.max`` picks."""
    h = F.leaky_relu(F.conv2d(x, w1, b1, _STRIDE, _PAD), slope)
    return F.leaky_relu(F.conv2d(h, w2, b2, _STRIDE, _PAD), slope).max(dim=3).values


def _check(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"x: expected PReps (B, 1, H, W), got {tuple(x.shape)}")
    C1 = w1.shape[0]
    if w1.dim() != 4 or w1.shape[1:] != (1, 1, 3) or b1.shape != (C1,):
        raise ValueError(f"w1, b1: expected (C1, 1, 1, 3) and (C1,), got {tuple(w1.shape)} and {tuple(b1.shape)}")
    C2 = w2.shape[0]
    if w2.dim() != 4 or w2.shape[1:] != (C1, 1, 3) or b2.shape != (C2,):
        raise ValueError(f"w2, b2: expected (C2, {C1}, 1, 3) and (C2,), got {tuple(w2.shape)} and {tuple(b2.shape)}")
    for name, t in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
        if t.dtype != x.dtype or t.device != x.device:
            raise ValueError(f"{name}: expected {x.dtype} on {x.device} like x, got {t.dtype} on {t.device}")


def _slope_of(t: torch.Tensor, slope: float) -> torch.Tensor:
    """LeakyReLU's derivative at ``t`` (1 where t > 0, else ``slope``: torch's convention)."""
    one = torch.ones((), dtype=t.dtype, device=t.device)
    return torch.where(t > 0, one, one * slope)


class _ConvMaxWidth(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, slope):
        h = F.leaky_relu_(F.conv2d(x, w1, b1, _STRIDE, _PAD), slope)
        y = F.conv2d(h, w2, None, _STRIDE, _PAD)  # (B, C2, H, W2), bias added after the max
        del h
        val, idx = y.max(dim=3)
        del y
        val = val + b2.view(1, -1, 1)
        ctx.save_for_backward(x, w1, b1, w2, idx, val)
        ctx.slope = slope
        return F.leaky_relu(val, slope)

    @staticmethod
    def backward(ctx, gout):
        x, w1, b1, w2, idx, val = ctx.saved_tensors
        slope = ctx.slope
        B, _, H, W = x.shape
        C1, C2 = w1.shape[0], w2.shape[0]
        W1 = (W - 1) // 2 + 1  # width of the first conv's output
        dev = x.device
        three = torch.arange(3, device=dev)
        # first-conv positions under each maximum (2 * idx - 1 + m) and PRep positions under those
        p = 2 * idx.unsqueeze(-1) - 1 + three  # (B, C2, H, 3)
        valid_p = ((p >= 0) & (p < W1)).to(x.dtype)
        q = 2 * p.unsqueeze(-1) - 1 + three  # (B, C2, H, 3, 3)
        valid_q = (q >= 0) & (q < W)
        qc = q.clamp(0, W - 1).permute(0, 2, 1, 3, 4).reshape(B, H, -1)
        xw = x[:, 0].gather(2, qc).view(B, H, C2, 3, 3).permute(0, 2, 1, 3, 4)
        xw = xw * valid_q.to(x.dtype)  # (B, C2, H, 3[m], 3[k]): the PRep under each position
        k1 = w1.view(C1, 3)
        pre = torch.einsum("bchmk,ik->bchim", xw, k1) + b1.view(1, 1, 1, C1, 1)  # (B, C2, H, C1, 3)
        gval = gout * _slope_of(val, slope)  # (B, C2, H)
        grads = [None] * 6
        k2 = w2.view(C2, C1, 3)
        if ctx.needs_input_grad[3]:
            act = F.leaky_relu(pre, slope) * valid_p.unsqueeze(3)
            grads[3] = torch.einsum("bch,bchim->cim", gval, act).view_as(w2)
            del act
        if ctx.needs_input_grad[4]:
            grads[4] = gval.sum((0, 2))
        if any(ctx.needs_input_grad[:3]):
            g_pre = (gval.view(B, C2, H, 1, 1) * k2.unsqueeze(1)) * valid_p.unsqueeze(3)
            g_pre = g_pre * _slope_of(pre, slope)  # (B, C2, H, C1, 3)
            if ctx.needs_input_grad[1]:
                grads[1] = torch.einsum("bchim,bchmk->ik", g_pre, xw).view_as(w1)
            if ctx.needs_input_grad[2]:
                grads[2] = g_pre.sum((0, 1, 2, 4))
            if ctx.needs_input_grad[0]:
                gx = torch.einsum("bchim,ik->bchmk", g_pre, k1) * valid_q.to(x.dtype)
                gx = gx.permute(0, 2, 1, 3, 4).reshape(B, H, -1)
                grads[0] = x.new_zeros(B, H, W).scatter_add_(2, qc, gx).unsqueeze(1)
        return tuple(grads)


def conv_max_width(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                   slope: float) -> torch.Tensor:
    """``max over the width of leaky(conv2(leaky(conv1(x))))`` for PReps ``x`` (B, 1, H, W), conv1
    ``w1`` (C1, 1, 1, 3), conv2 ``w2`` (C2, C1, 1, 3), both stride (1, 2), padding (0, 1) -> (B, C2, H),
    with the sparse backward described in the module docstring (same values and gradients as
    :func:`conv_max_width_ref`, up to float rounding)."""
    _check(x, w1, b1, w2, b2)
    return _ConvMaxWidth.apply(x, w1, b1, w2, b2, float(slope))
