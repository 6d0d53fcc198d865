"""Batched layer ops over a (B, P) PRep batch: fake kernels, autograd, and the dispatching wrappers.

Semantics in :mod:`netspace_fast.ops.batched_ref`. Backends: the native C++ CPU kernels
(`netspace_fast::batched_conv2d` ...), the Triton kernels (GPU, or CPU under TRITON_INTERPRET=1)
and the pure-PyTorch reference.
"""

from __future__ import annotations

import torch

from .. import _native, backend as _backend
from .batched_ref import ACT_SIN, batched_conv2d_ref, batched_linear_ref

__all__ = ["batched_conv2d", "batched_linear", "layer_forward", "layer_backward"]


def _conv_out_shape(x, preps, cout, k, stride, padding):
    B = preps.shape[0]
    N = x.shape[0] if x.dim() == 4 else x.shape[1]
    H, W = x.shape[-2], x.shape[-1]
    return (B, N, cout, (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1)


def _fake_conv(x, preps, w_off, b_off, cout, cin, k, stride, padding, act, residual):
    shape = _conv_out_shape(x, preps, cout, k, stride, padding)
    return x.new_empty(shape), x.new_empty(shape if act == ACT_SIN else (0,))


def _fake_backward(grad_y, x, *rest):
    """Both backward ops: (grad_y, x, preps, y, z, <geometry>, act, grad_preps, need_grad_x)."""
    return (x.new_empty(x.shape) if rest[-1] else x.new_empty((0,))), grad_y.new_empty(grad_y.shape)


def _fake_linear(x, preps, w_off, b_off, out_features, in_features, act, residual):
    N = x.shape[0] if x.dim() == 2 else x.shape[1]
    shape = (preps.shape[0], N, out_features)
    return x.new_empty(shape), x.new_empty(shape if act == ACT_SIN else (0,))


# Autograd of the standalone layer ops: the weight gradient of one layer lands in a zero (B, P)
# buffer. batched_forward (the whole network) shares one buffer across all layers instead.
def _setup(ctx, inputs, output):
    # inputs: (x, preps, <geometry...>, act, residual), the same for conv and linear
    x, preps, *args, residual = inputs
    y, z = output
    ctx.args = tuple(args)
    ctx.has_residual = residual is not None
    ctx.save_for_backward(x, preps, y, z)


def _autograd_backward(backward_op):
    def backward(ctx, grad_y, _grad_z):
        x, preps, y, z = ctx.saved_tensors
        grad_preps = torch.zeros_like(preps)
        gx, gz = backward_op(grad_y.contiguous(), x, preps, y, z, *ctx.args, grad_preps, ctx.needs_input_grad[0])
        return (gx if ctx.needs_input_grad[0] else None, grad_preps, *([None] * len(ctx.args)),
                gz if ctx.has_residual else None)

    return backward


if _native.has_kernel("batched_conv2d", "CPU"):
    torch.library.register_fake("netspace_fast::batched_conv2d")(_fake_conv)
    torch.library.register_fake("netspace_fast::batched_conv2d_backward")(_fake_backward)
    torch.library.register_fake("netspace_fast::batched_linear")(_fake_linear)
    torch.library.register_fake("netspace_fast::batched_linear_backward")(_fake_backward)
    torch.library.register_autograd("netspace_fast::batched_conv2d",
                                    _autograd_backward(torch.ops.netspace_fast.batched_conv2d_backward),
                                    setup_context=_setup)
    torch.library.register_autograd("netspace_fast::batched_linear",
                                    _autograd_backward(torch.ops.netspace_fast.batched_linear_backward),
                                    setup_context=_setup)


def _triton():
    from . import batched_triton

    return batched_triton


def layer_forward(kind: str, x, preps, geom: tuple, act: int, residual):
    """One layer's forward on the Triton backend (the GPU whole-network path): returns (y, z)."""
    t = _triton()
    fn = t.conv2d_forward if kind == "conv" else t.linear_forward
    y, z = fn(x, preps, *geom, act, residual)
    return y, (z if z is not None else y.new_empty((0,)))


def layer_backward(kind: str, grad_y, x, preps, y, z, geom: tuple, act: int, grad_preps):
    """One layer's Triton backward: writes its weight/bias gradients into grad_preps; (grad_x, grad_z)."""
    t = _triton()
    fn = t.conv2d_backward if kind == "conv" else t.linear_backward
    x_shared = x.dim() == (4 if kind == "conv" else 2)
    return fn(grad_y, x, preps, y, z if z.numel() else None, *geom, act, grad_preps, x_shared)


def batched_conv2d(x: torch.Tensor, preps: torch.Tensor, w_off: int, b_off: int, cout: int, cin: int, k: int,
                   stride: int = 1, padding: int = 0, act: int = 0, residual: torch.Tensor | None = None, *,
                   backend: str | None = None) -> torch.Tensor:
    """B convolutions in one call, weights read from the (B, P) PRep batch at w_off/b_off; returns y."""
    which = _backend.select("batched_conv2d", preps.device, backend)
    if which == "torch" or which == "cuda":
        return batched_conv2d_ref(x, preps, w_off, b_off, cout, cin, k, stride, padding, act, residual)
    if which == "triton":
        return _triton().batched_conv2d_triton(x, preps, w_off, b_off, cout, cin, k, stride, padding, act,
                                               residual)[0]
    return torch.ops.netspace_fast.batched_conv2d(x, preps, w_off, b_off, cout, cin, k, stride, padding, act,
                                                  residual)[0]


def batched_linear(x: torch.Tensor, preps: torch.Tensor, w_off: int, b_off: int, out_features: int,
                   in_features: int, act: int = 0, residual: torch.Tensor | None = None, *,
                   backend: str | None = None) -> torch.Tensor:
    """B linear layers in one call, weights read from the (B, P) PRep batch at w_off/b_off; returns y."""
    which = _backend.select("batched_linear", preps.device, backend)
    if which == "torch" or which == "cuda":
        return batched_linear_ref(x, preps, w_off, b_off, out_features, in_features, act, residual)
    if which == "triton":
        return _triton().batched_linear_triton(x, preps, w_off, b_off, out_features, in_features, act, residual)[0]
    return torch.ops.netspace_fast.batched_linear(x, preps, w_off, b_off, out_features, in_features, act,
                                                  residual)[0]
