"""Pure-PyTorch reference of the conv epilogue ops (the fallback and the tests' oracle), and the
argument checks every backend shares.

The conv epilogue is what follows a bias-free convolution (cuDNN) in the batched engine, in one
elementwise pass:

forward:   z a float32 or float64 tensor with dim >= 2, channels on dim 1 (a conv output
           (N, C, H, W), contiguous or channels_last; any shape whose dim 1 is the channel);
           bias None or (C,); residual None or exactly z's shape (any strides);
           pre = (z + bias[channel]) + residual   (this order: two roundings),
           y = act(pre), with act 0 none, 1 LeakyReLU(0.01), 2 sin(30 pre).
           Returns (y, pre): y has z's memory format (``torch.empty_like(z)``: contiguous stays
           contiguous, channels_last stays channels_last); pre likewise when act == 2 (the backward
           of sin needs it), else an empty tensor of shape (0,) (same dtype and device).
backward:  grad_z = grad_y * act'(.): LeakyReLU reads the sign of y (y > 0 -> 1, else 0.01), sin
           reads pre (30 cos(30 pre)), none passes grad_y through (as a new tensor). grad_z has
           y's memory format (``torch.empty_like(y)``). grad_z is also the residual's gradient; the
           bias gradient is grad_z summed over every dim but 1 (:func:`bias_grad`).

Neither output ever aliases an input.
"""

from __future__ import annotations

import torch

from .batched_layers_ref import ACT_LEAKY, ACT_NONE, ACT_SIN, LEAKY_SLOPE, SIN_W0, act_grad, apply_act

ACTS = (ACT_NONE, ACT_LEAKY, ACT_SIN)
DTYPES = (torch.float32, torch.float64)

__all__ = ["ACTS", "ACT_LEAKY", "ACT_NONE", "ACT_SIN", "DTYPES", "LEAKY_SLOPE", "SIN_W0", "bias_grad",
           "check_epilogue_args", "check_epilogue_backward_args", "conv_epilogue_backward_ref", "conv_epilogue_ref",
           "is_dense"]


# ------------------------------------------------------------------------------------------------
# argument checks (shared by the wrapper, the op kernels and the Triton launchers)


def _check_act(act) -> None:
    if not isinstance(act, int) or isinstance(act, bool):
        raise TypeError(f"act: expected an int (0 none, 1 LeakyReLU, 2 sin), got {type(act).__name__}")
    if act not in ACTS:
        raise ValueError(f"act: expected 0 (none), 1 (LeakyReLU) or 2 (sin), got {act}")


def _check_float(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(t).__name__}")
    if t.dtype not in DTYPES:
        raise TypeError(f"{name}: expected a float32 or float64 tensor, got {t.dtype}")


def _check_like(name: str, t, ref: torch.Tensor, ref_name: str, shape: tuple[int, ...]) -> None:
    """``t`` a tensor of ``shape`` with the dtype and device of ``ref``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(t).__name__}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name}: expected dtype {ref.dtype} (that of {ref_name}), got {t.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name}: expected a tensor on {ref.device} (that of {ref_name}), got {t.device}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")


def check_epilogue_args(z, bias, residual, act) -> None:
    """TypeError / ValueError naming the argument, what was expected and what was given."""
    _check_float("z", z)
    if z.dim() < 2:
        raise ValueError(f"z: expected a tensor with dim >= 2 (channels on dim 1), got shape {tuple(z.shape)}")
    if bias is not None:
        _check_like("bias", bias, z, "z", (z.shape[1],))
    if residual is not None:
        _check_like("residual", residual, z, "z", tuple(z.shape))
    _check_act(act)


def check_epilogue_backward_args(grad_y, y, pre, act) -> None:
    """grad_y float32/float64; y of grad_y's shape, dtype and device; pre the same when act == 2
    (ignored otherwise: the forward returns it empty then)."""
    _check_float("grad_y", grad_y)
    _check_like("y", y, grad_y, "grad_y", tuple(grad_y.shape))
    _check_act(act)
    if not isinstance(pre, torch.Tensor):
        raise TypeError(f"pre: expected a Tensor, got {type(pre).__name__}")
    if act == ACT_SIN:
        if pre.numel() == 0 and grad_y.numel() != 0:
            raise ValueError(f"pre: act == 2 (sin) needs the pre-activation of the forward, of shape "
                             f"{tuple(grad_y.shape)}; got an empty tensor of shape {tuple(pre.shape)}")
        _check_like("pre", pre, grad_y, "grad_y", tuple(grad_y.shape))


def is_dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill ``t.numel()`` consecutive memory locations exactly once
    (non-overlapping and dense: contiguous, channels_last, any permutation of those). Dims of size 1
    may have any stride."""
    if t.numel() == 0:
        return True
    expected = 1
    for stride, size in sorted((st, s) for s, st in zip(t.shape, t.stride()) if s != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _like(t: torch.Tensor, ref: torch.Tensor, inputs: tuple) -> torch.Tensor:
    """``t`` with the strides of ``torch.empty_like(ref)`` and aliasing none of ``inputs``: ``t``
    itself when it already is such a tensor, else a copy."""
    if (t.stride() == torch.empty_like(ref, device="meta").stride()
            and not any(t is i for i in inputs if i is not None)):
        return t
    return torch.empty_like(ref).copy_(t)


# ------------------------------------------------------------------------------------------------
# the references


def conv_epilogue_ref(z: torch.Tensor, bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                      act: int = ACT_NONE) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, pre) of the module doc. Differentiable through torch.autograd as well."""
    check_epilogue_args(z, bias, residual, act)
    pre = z
    if bias is not None:
        pre = pre + bias.view((1, -1) + (1,) * (z.dim() - 2))
    if residual is not None:
        pre = pre + residual
    if act == ACT_SIN:
        pre = _like(pre, z, (z, residual))
        return _like(apply_act(pre, act), z, ()), pre
    y = _like(apply_act(pre, act), z, (z, residual))
    return y, z.new_empty((0,))


def conv_epilogue_backward_ref(grad_y: torch.Tensor, y: torch.Tensor, pre: torch.Tensor,
                               act: int) -> torch.Tensor:
    """grad_z of the module doc (y's memory format, a new tensor)."""
    check_epilogue_backward_args(grad_y, y, pre, act)
    return _like(act_grad(grad_y, y, pre, act), y, (grad_y, y, pre))


def bias_grad(grad_z: torch.Tensor) -> torch.Tensor:
    """The bias gradient: grad_z summed over every dim but the channel dim 1, shape (C,)."""
    return grad_z.sum([d for d in range(grad_z.dim()) if d != 1])
