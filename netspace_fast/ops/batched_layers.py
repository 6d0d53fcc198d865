"""The batched layer ops over a (B, P) PRep batch: ``netspace_fast::batched_conv2d``,
``batched_conv2d_backward``, ``batched_linear``, ``batched_linear_backward`` (schemas in
csrc/registration.cpp, semantics in batched_layers_ref.py).

Kernels behind each op: CPU, the C++ kernels (csrc/batched_layers_cpu.cpp); CUDA, the Triton
kernels (batched_layers_triton.py, registered here as the ops' CUDA kernels: there is no native
CUDA kernel of these ops); the pure-PyTorch reference where neither fits. Here: the fake kernels
(torch.compile), the autograd formula of the forward ops, the registrations, and the public
wrappers :func:`batched_conv2d` / :func:`batched_linear`.
"""

from __future__ import annotations

import torch

from .. import _native
from . import backend as _backend
from .batched_layers_ref import ACT_SIN, batched_conv2d_ref, batched_linear_ref

__all__ = ["batched_conv2d", "batched_linear", "cuda_layer_backward", "cuda_layer_forward"]

_OPS = ("batched_conv2d", "batched_conv2d_backward", "batched_linear", "batched_linear_backward")


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


def _triton():
    from . import batched_layers_triton

    return batched_layers_triton


def _triton_kernel(name: str):
    """The Triton kernel of op ``name`` (imported on first call: Triton's import is slow)."""
    def kernel(*args):
        return getattr(_triton(), {"batched_conv2d": "conv2d_op", "batched_conv2d_backward": "conv2d_backward_op",
                                   "batched_linear": "linear_op",
                                   "batched_linear_backward": "linear_backward_op"}[name])(*args)

    kernel.__name__ = f"{name}_triton"
    return kernel


if _native.LOADED:
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
    if _backend.triton_available():
        for _op in _OPS:
            if not _native.has_kernel(_op, "CUDA"):  # the Triton kernel is the op's CUDA implementation
                torch.library.register_kernel(f"netspace_fast::{_op}", "cuda", _triton_kernel(_op))


def cuda_layer_forward(kind: str, x, preps, geom: tuple, act: int, residual):
    """One layer's forward with the ops' CUDA kernel called directly (the whole-network GPU path of
    netspace_fast.engine, one autograd node for all layers): returns (y, z)."""
    t = _triton()
    return (t.conv2d_op if kind == "conv" else t.linear_op)(x, preps, *geom, act, residual)


def cuda_layer_backward(kind: str, grad_y, x, preps, y, z, geom: tuple, act: int, grad_preps,
                        need_grad_x: bool = True):
    """One layer's backward with the ops' CUDA kernel: writes its weight/bias gradients into
    grad_preps; returns (grad_x, grad_z), grad_x None unless ``need_grad_x`` (its kernel is then
    not launched). Unlike the op, grad_z may BE grad_y (act 0): the caller must not write into it
    when grad_y is not its own (engine.grads.ValueGrads). z may be None or empty unless act == 2."""
    t = _triton()
    z = z if (z is not None and z.numel()) else None
    if kind == "conv":
        return t.conv2d_backward(grad_y, x, preps, y, z, *geom, act, grad_preps, x.dim() == 4,
                                 need_grad_x=need_grad_x)
    return t.linear_backward(grad_y, x, preps, y, z, *geom, act, grad_preps, x.dim() == 2, need_grad_x=need_grad_x)


class _LauncherLayer(torch.autograd.Function):
    """A layer op's Triton kernel called directly where another kernel holds the dispatch key
    (backend='triton' on CPU tensors under TRITON_INTERPRET=1), with the op's autograd formula."""

    @staticmethod
    def forward(kind, x, preps, residual, geom, act):
        return cuda_layer_forward(kind, x, preps, geom, act, residual)

    @staticmethod
    def setup_context(ctx, inputs, output):
        kind, x, preps, residual, geom, act = inputs
        y, z = output
        ctx.kind, ctx.geom, ctx.act, ctx.has_residual = kind, geom, act, residual is not None
        ctx.mark_non_differentiable(z)
        ctx.save_for_backward(x, preps, y, z)

    @staticmethod
    def backward(ctx, grad_y, _grad_z):
        x, preps, y, z = ctx.saved_tensors
        grad_preps = torch.zeros_like(preps)
        gx, gz = cuda_layer_backward(ctx.kind, grad_y.contiguous(), x, preps, y, z, ctx.geom, ctx.act, grad_preps,
                                     ctx.needs_input_grad[1])
        return (None, gx, grad_preps, gz if ctx.has_residual else None, None, None)


def _run(op: str, kind: str, ref, x, preps, geom: tuple, act: int, residual, backend):
    which = _backend.select(op, preps.device, backend)
    if which == "torch":
        return ref(x, preps, *geom, act, residual)
    if which == "triton" and not _backend.triton_is_op_kernel(op, preps.device):
        return _LauncherLayer.apply(kind, x, preps, residual, geom, act)[0]
    return getattr(torch.ops.netspace_fast, op)(x, preps, *geom, act, residual)[0]


def batched_conv2d(x: torch.Tensor, preps: torch.Tensor, w_off: int, b_off: int, cout: int, cin: int, k: int,
                   stride: int = 1, padding: int = 0, act: int = 0, residual: torch.Tensor | None = None, *,
                   backend: str | None = None) -> torch.Tensor:
    """B convolutions in one call, weights read from the (B, P) PRep batch at w_off/b_off; returns y."""
    return _run("batched_conv2d", "conv", batched_conv2d_ref, x, preps, (w_off, b_off, cout, cin, k, stride, padding),
                act, residual, backend)


def batched_linear(x: torch.Tensor, preps: torch.Tensor, w_off: int, b_off: int, out_features: int,
                   in_features: int, act: int = 0, residual: torch.Tensor | None = None, *,
                   backend: str | None = None) -> torch.Tensor:
    """B linear layers in one call, weights read from the (B, P) PRep batch at w_off/b_off; returns y."""
    return _run("batched_linear", "linear", batched_linear_ref, x, preps, (w_off, b_off, out_features, in_features),
                act, residual, backend)
