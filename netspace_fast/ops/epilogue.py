"""The conv epilogue ops ``netspace_fast::conv_epilogue`` and ``netspace_fast::conv_epilogue_backward``:
bias + residual + activation after a bias-free convolution, in one elementwise pass (semantics and
reference in epilogue_ref.py, Triton kernels in epilogue_triton.py).

Schemas (defined here, in Python, in the namespace of csrc/registration.cpp)::

    conv_epilogue(Tensor z, Tensor? bias, Tensor? residual, int act) -> (Tensor y, Tensor pre)
    conv_epilogue_backward(Tensor grad_y, Tensor y, Tensor pre, int act) -> Tensor grad_z

Kernels behind each op: CUDA, the Triton kernel (the reference if Triton is not importable; Triton
is imported at the first call, never when this module is imported); every other device, the
pure-PyTorch reference. There is no native (C++/CUDA) kernel of these ops. Here also:
the fake kernels (torch.compile), the autograd formula of ``conv_epilogue`` (gradients of z, bias
and residual through ``conv_epilogue_backward``, so the op is differentiable, float64 gradcheck
included), and the wrappers :func:`conv_epilogue` / :func:`conv_epilogue_backward`.

Backends (the conventions of netspace_fast.ops.backend): ``backend=None`` (or ``'auto'``) calls the op
(CPU: the reference, CUDA: the Triton kernel), unless NETSPACE_BACKEND prefers 'torch' or 'triton'
and that can run here; ``backend='triton'`` runs the Triton kernel: on CUDA tensors through the op,
on CPU tensors (only under TRITON_INTERPRET=1; a ValueError naming ``backend`` otherwise) by calling
the launchers directly, with the same autograd formula: this is how the GPU program is rehearsed on
a CPU, with the CUDA kernel's arithmetic; ``backend='torch'``: the reference (differentiable by
torch.autograd). 'cpp' and 'cuda' name native kernels this op does not have: a ValueError.

The Triton kernel needs a dense z (contiguous, channels_last, ...): ``backend='triton'`` refuses
any other z with a ValueError; the op's CUDA kernel first copies such a z into
``torch.empty_like(z)`` (the layout of the outputs anyway), so the op accepts every z on every
device.
"""

from __future__ import annotations

import torch

from .. import settings
from . import backend as _backend
from .epilogue_ref import (ACT_LEAKY, ACT_NONE, ACT_SIN, bias_grad, check_epilogue_args, check_epilogue_backward_args,
                           conv_epilogue_backward_ref, conv_epilogue_ref, is_dense)

__all__ = ["conv_epilogue", "conv_epilogue_backward", "conv_epilogue_backward_ref", "conv_epilogue_ref"]

_FORWARD_SCHEMA = "(Tensor z, Tensor? bias, Tensor? residual, int act) -> (Tensor, Tensor)"
_BACKWARD_SCHEMA = "(Tensor grad_y, Tensor y, Tensor pre, int act) -> Tensor"


def _triton():
    from . import epilogue_triton  # Triton's import is slow (and TRITON_INTERPRET must be set first): on first use

    return epilogue_triton


# ------------------------------------------------------------------------------------------------
# the ops: default kernel (every device) the reference, CUDA kernel the Triton one


def _forward_default(z, bias, residual, act):
    return conv_epilogue_ref(z, bias, residual, act)


def _backward_default(grad_y, y, pre, act):
    return conv_epilogue_backward_ref(grad_y, y, pre, act)


_forward_op = torch.library.custom_op("netspace_fast::conv_epilogue", _forward_default, mutates_args=(),
                                      schema=_FORWARD_SCHEMA)
_backward_op = torch.library.custom_op("netspace_fast::conv_epilogue_backward", _backward_default, mutates_args=(),
                                       schema=_BACKWARD_SCHEMA)


@_forward_op.register_fake
def _forward_fake(z, bias, residual, act):
    check_epilogue_args(z, bias, residual, act)
    return torch.empty_like(z), (torch.empty_like(z) if act == ACT_SIN else z.new_empty((0,)))


@_backward_op.register_fake
def _backward_fake(grad_y, y, pre, act):
    check_epilogue_backward_args(grad_y, y, pre, act)
    return torch.empty_like(y)


def _forward_cuda(z, bias, residual, act):
    if not _backend.triton_available():  # pragma: no cover - triton ships with torch on Linux
        return conv_epilogue_ref(z, bias, residual, act)
    check_epilogue_args(z, bias, residual, act)
    if not is_dense(z):
        z = torch.empty_like(z).copy_(z)  # dense, with the strides the outputs get anyway
    return _triton().epilogue_forward(z, bias, residual, act)


def _backward_cuda(grad_y, y, pre, act):
    if not _backend.triton_available():  # pragma: no cover
        return conv_epilogue_backward_ref(grad_y, y, pre, act)
    return _triton().epilogue_backward(grad_y, y, pre, act)


# registered whatever is installed: Triton is imported at the first call on CUDA tensors, not here
_forward_op.register_kernel("cuda")(_forward_cuda)
_backward_op.register_kernel("cuda")(_backward_cuda)


# ------------------------------------------------------------------------------------------------
# autograd: one formula for the op and for the direct Triton route


def _setup(ctx, inputs, output) -> None:
    z, bias, residual, act = inputs
    y, pre = output
    ctx.act = act
    ctx.set_materialize_grads(False)
    # what the backward reads: y for LeakyReLU, pre for sin, nothing for none
    if act == ACT_LEAKY:
        ctx.save_for_backward(y)
    elif act == ACT_SIN:
        ctx.save_for_backward(pre)


def _formula(backward):
    """The backward of conv_epilogue with ``backward`` (grad_y, y, pre, act) -> grad_z: grad_z for z
    and residual, its sum over every dim but 1 for bias; pre's own gradient (sin) adds to grad_z."""
    def grads(ctx, grad_y, grad_pre):
        act = ctx.act
        saved = ctx.saved_tensors
        if grad_y is None and grad_pre is None:
            return None, None, None, None
        if grad_y is None:
            gz = grad_pre if act == ACT_SIN else None
        elif act == ACT_NONE:
            gz = grad_y  # act' = 1: no pass at all
        else:
            y = saved[0] if act == ACT_LEAKY else grad_y  # sin: grad_y is a placeholder of y's shape
            pre = saved[0] if act == ACT_SIN else grad_y.new_empty((0,))
            gz = backward(grad_y, y, pre, act)
            if act == ACT_SIN and grad_pre is not None:
                gz = gz + grad_pre
        if gz is None:  # only the (empty) pre of a non-sin call had a gradient
            return None, None, None, None
        need_z, need_bias, need_res = ctx.needs_input_grad[:3]
        return (gz if need_z else None, bias_grad(gz) if need_bias else None, gz if need_res else None, None)

    return grads


_forward_op.register_autograd(_formula(_backward_op), setup_context=_setup)


class _TritonEpilogue(torch.autograd.Function):
    """The Triton launchers called directly (backend='triton' on CPU tensors under
    TRITON_INTERPRET=1), with the op's autograd formula."""

    @staticmethod
    def forward(z, bias, residual, act):
        return _triton().epilogue_forward(z, bias, residual, act)

    setup_context = staticmethod(_setup)

    @staticmethod
    def backward(ctx, grad_y, grad_pre):
        return _formula(lambda *a: _triton().epilogue_backward(*a))(ctx, grad_y, grad_pre)


# ------------------------------------------------------------------------------------------------
# the wrappers


def _route(device: torch.device, backend: str | None) -> str:
    """'op' (the dispatcher), 'launcher' (the Triton launchers themselves) or 'torch' (the reference)."""
    def triton_runs() -> bool:
        return (device.type == "cuda" or _backend.triton_interpreted()) and _backend.triton_available()

    if backend is None:
        preferred = settings.backend()
        if preferred == "torch":
            return "torch"
        if preferred == "triton" and device.type != "cuda" and triton_runs():
            return "launcher"
        return "op"
    if backend == "auto":
        return "op"
    if backend == "torch":
        return "torch"
    if backend == "triton":
        if not triton_runs():
            raise ValueError(f"backend: 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 on CPU); got {device}"
                             + ("" if _backend.triton_available() else " and Triton is not importable"))
        return "op" if device.type == "cuda" else "launcher"
    if backend in _backend.NATIVE:
        raise ValueError(f"backend: conv_epilogue has no native {backend!r} kernel; expected None, 'auto', "
                         f"'triton' or 'torch', got {backend!r}")
    raise ValueError(f"backend: expected one of {_backend.BACKENDS + ('auto',)} or None, got {backend!r}")


def conv_epilogue(z: torch.Tensor, bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                  act: int = ACT_NONE, *, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, pre): pre = z + bias (over dim 1) + residual, y = act(pre) in one pass (see epilogue_ref.py;
    pre is returned for act == 2 only, else empty). Differentiable in z, bias and residual."""
    check_epilogue_args(z, bias, residual, act)
    route = _route(z.device, backend)
    if route == "launcher" and not is_dense(z):
        raise ValueError(f"z: backend='triton' needs a dense tensor (non-overlapping and dense: contiguous, "
                         f"channels_last or another permutation of a contiguous tensor), got shape "
                         f"{tuple(z.shape)} with strides {z.stride()}")
    if route == "torch":
        return conv_epilogue_ref(z, bias, residual, act)
    if route == "launcher":
        return _TritonEpilogue.apply(z, bias, residual, act)
    return torch.ops.netspace_fast.conv_epilogue(z, bias, residual, act)


def conv_epilogue_backward(grad_y: torch.Tensor, y: torch.Tensor, pre: torch.Tensor, act: int, *,
                           backend: str | None = None) -> torch.Tensor:
    """grad_z = grad_y * act'(.) (LeakyReLU from y, sin from pre; y's memory format). It is also the
    residual's gradient; :func:`netspace_fast.ops.epilogue_ref.bias_grad` gives the bias's."""
    check_epilogue_backward_args(grad_y, y, pre, act)
    route = _route(grad_y.device, backend)
    if route == "torch":
        return conv_epilogue_backward_ref(grad_y, y, pre, act)
    if route == "launcher":
        return _triton().epilogue_backward(grad_y, y, pre, act)
    return torch.ops.netspace_fast.conv_epilogue_backward(grad_y, y, pre, act)
