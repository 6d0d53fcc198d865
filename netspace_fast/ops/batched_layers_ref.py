"""Pure-PyTorch references of the batched layer ops: the fallback and the tests' oracle.

Shared semantics of every backend (C++ CPU, Triton, CUDA):

``preps`` is a PRep batch flattened to (B, P) (a contiguous (B, H, W) batch viewed as (B, H*W)).
Network b's layer weight is ``preps[b, w_off : w_off + numel]`` viewed with the layer's weight
shape, its bias ``preps[b, b_off : b_off + out]`` (the PRep layout of the BN-free network).

conv2d forward:  x (B, N, Cin, H, W) per network, or (N, Cin, H, W) shared by all networks;
                 residual None or (B, N, Cout, Ho, Wo);
                 z = conv(x_b, W_b, stride, padding) + bias_b [+ residual_b]; y = act(z)
                 returns y (B, N, Cout, Ho, Wo).
linear forward:  x (B, N, In) or (N, In) shared; z = x_b @ W_b^T + bias_b [+ residual_b];
                 y = act(z), (B, N, Out).
act:             0 none, 1 LeakyReLU(0.01), 2 sin(30 z).

backward (both): from grad_y and the saved tensors, grad_z = grad_y * act'(z) (act' from y for
                 LeakyReLU: y > 0 -> 1 else 0.01; from z for sin: 30 cos(30 z)); then
                 grad_x (same shape as x: summed over networks for a shared x), the weight and
                 bias gradients written into ``grad_preps`` (B, P) at the layer's offsets (every
                 other value of grad_preps untouched), and grad_residual = grad_z.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACT_NONE, ACT_LEAKY, ACT_SIN = 0, 1, 2
ACT_CODES = {"none": ACT_NONE, "leaky_relu": ACT_LEAKY, "sin": ACT_SIN}  # LayerSpec.act -> code
LEAKY_SLOPE = 0.01
SIN_W0 = 30.0


def apply_act(z: torch.Tensor, act: int, inplace: bool = False) -> torch.Tensor:
    """The activation ``act``; LeakyReLU in place with ``inplace`` (when nothing saved needs z)."""
    if act == ACT_LEAKY:
        return F.leaky_relu_(z, LEAKY_SLOPE) if inplace else F.leaky_relu(z, LEAKY_SLOPE)
    if act == ACT_SIN:
        return torch.sin(SIN_W0 * z)
    return z


def act_grad(grad_y: torch.Tensor, y: torch.Tensor, z: torch.Tensor | None, act: int) -> torch.Tensor:
    """grad_z from grad_y: LeakyReLU reads the sign of y, sin needs the pre-activation z."""
    if act == ACT_LEAKY:
        return torch.ops.aten.leaky_relu_backward(grad_y, y, LEAKY_SLOPE, False)  # y > 0 iff z > 0
    if act == ACT_SIN:
        return grad_y * (SIN_W0 * torch.cos(SIN_W0 * z))
    return grad_y


def layer_weights(preps: torch.Tensor, w_off: int, b_off: int, w_shape: tuple[int, ...]):
    """(B, *w_shape) weight view and (B, out) bias view of a (B, P) PRep batch."""
    B = preps.shape[0]
    numel = 1
    for s in w_shape:
        numel *= s
    w = preps[:, w_off:w_off + numel].reshape(B, *w_shape)
    b = preps[:, b_off:b_off + w_shape[0]]
    return w, b


def batched_conv2d_ref(x: torch.Tensor, preps: torch.Tensor, w_off: int, b_off: int, cout: int, cin: int, k: int,
                       stride: int, padding: int, act: int, residual: torch.Tensor | None = None) -> torch.Tensor:
    """Per-network loop of F.conv2d (differentiable through autograd)."""
    w, bias = layer_weights(preps, w_off, b_off, (cout, cin, k, k))
    outs = []
    for b in range(preps.shape[0]):
        xb = x if x.dim() == 4 else x[b]
        z = F.conv2d(xb, w[b], bias[b], stride, padding)
        if residual is not None:
            z = z + residual[b]
        outs.append(apply_act(z, act))
    return torch.stack(outs)


def batched_linear_ref(x: torch.Tensor, preps: torch.Tensor, w_off: int, b_off: int, out_features: int,
                       in_features: int, act: int, residual: torch.Tensor | None = None) -> torch.Tensor:
    w, bias = layer_weights(preps, w_off, b_off, (out_features, in_features))
    if x.dim() == 2:
        z = torch.einsum("ni,boi->bno", x, w)
    else:
        z = torch.einsum("bni,boi->bno", x, w)
    z = z + bias[:, None, :]
    if residual is not None:
        z = z + residual
    return apply_act(z, act)
