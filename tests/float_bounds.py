"""Float32 error bounds of the batched layer ops, from a forward error analysis (not from any one
machine's results).

Why: the float32 results of a dot product, a matrix product or a convolution depend on the order
of its sums, and that order is chosen by the BLAS / oneDNN code path, which depends on the CPU
(MKL picks its sgemm kernel by instruction set, ``MKL_CBWR`` changes it), on the thread count and
on the buffers' alignment. Two correct float32 results of the same layer may differ in the last
bits, and by more than a fixed relative tolerance where a value is small against the terms that
were summed into it (cancellation) or where ``sin(30 z)`` multiplies the rounding of ``z`` by 30.
So the tests compare each float32 result with the exact one (the reference in float64 on the same
float32 inputs, whose own error is ~1e-16 relative, negligible here) elementwise, against a bound
that holds for ANY summation order, blocking or thread split:

* a sum of ``k`` products (Higham, "Accuracy and Stability of Numerical Algorithms", Sec. 3.1):
  ``|fl(sum_i a_i b_i) - sum_i a_i b_i| <= gamma_k * sum_i |a_i| |b_i|``, ``gamma_k = k u / (1 - k u)``,
  ``u = 2^-24`` (float32, round to nearest), with or without FMA;
* an elementwise function ``f`` of a value carrying an error ``d``: ``|f'| d`` plus the function's own
  rounding (``sin``/``cos`` of csrc/sincos_f32.h and of libm: <= 1 ulp <= 2 u |result|);
* errors carried into a later sum add up through the same ``|a_i| |b_i|`` weights.

The bounds are first order in ``u`` (the neglected terms are ``O(k^2 u^2)``, below 1e-5 of the bound
for the sizes tested) and use every term's magnitude, so a bound is tight where the sum is
large and honest where it cancels. A kernel that is really wrong is caught: perturbing one weight
by 1e-3 moves its outputs by ~1e-3 |x|, hundreds of times these bounds (tests/ops/
test_batched_layers.py::test_bounds_catch_a_wrong_kernel checks exactly that).

``LayerBounds`` holds, for one layer call and one output gradient ``grad_y``, the exact values
(``y``, ``grad_x``, ``grad_preps``, ``grad_residual``) and the bound of each; ``check`` compares a
float32 result against them (``factor=2`` for two float32 results that each satisfy the bound:
``|a - b| <= |a - exact| + |b - exact|``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from netspace_fast.ops.batched_layers_ref import (ACT_LEAKY, ACT_NONE, ACT_SIN, LEAKY_SLOPE, SIN_W0, act_grad,
                                                  apply_act, layer_weights)

U32 = 2.0 ** -24            # unit roundoff of float32
TINY = 2.0 ** -126          # the smallest normal float32: an absolute floor for values near 0


def gamma(k: int) -> float:
    """Higham's gamma_k for float32: the relative bound of a sum of k terms in any order."""
    k = max(int(k), 1)
    return k * U32 / (1 - k * U32)


@dataclass
class LayerBounds:
    z: torch.Tensor
    z_bound: torch.Tensor
    y: torch.Tensor
    y_bound: torch.Tensor
    grad_z: torch.Tensor
    grad_z_bound: torch.Tensor
    grad_x: torch.Tensor
    grad_x_bound: torch.Tensor
    grad_preps: torch.Tensor
    grad_preps_bound: torch.Tensor
    grad_residual: torch.Tensor | None
    grad_residual_bound: torch.Tensor | None

    def check(self, name: str, got: torch.Tensor, factor: float = 1.0, against: torch.Tensor | None = None) -> None:
        """``got`` within ``factor`` times the bound of ``name`` ('z', 'y', 'grad_z', 'grad_x',
        'grad_preps', 'grad_residual') of the exact value (or of ``against``, another float32 result)."""
        exact = getattr(self, name) if against is None else against
        assert_within(got, exact, factor * getattr(self, f"{name}_bound"), name)


def assert_within(got: torch.Tensor, want: torch.Tensor, bound: torch.Tensor, name: str = "value") -> None:
    """Elementwise |got - want| <= bound (NaN nowhere); the message names the worst element."""
    got = got.detach().double().cpu()
    want = want.detach().double().cpu()
    bound = bound.detach().double().cpu().expand_as(want)
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    err = (got - want).abs()
    ratio = err / bound.clamp_min(TINY)
    worst = int(ratio.reshape(-1).argmax())
    r = ratio.reshape(-1)[worst].item()
    assert r <= 1.0, (f"{name}: |got - exact| exceeds its float32 error bound by {r:.3g}x at flat index {worst} "
                      f"(got {got.reshape(-1)[worst].item():.9g}, exact {want.reshape(-1)[worst].item():.9g}, "
                      f"bound {bound.reshape(-1)[worst].item():.3g})")


def _act_bounds(z: torch.Tensor, dz: torch.Tensor, g: torch.Tensor, act: int):
    """Exact y and grad_z = g * act'(z), and their bounds, from z and the bound dz of fl(z)."""
    y = apply_act(z, act)
    gz = act_grad(g, y, z, act)
    if act == ACT_NONE:
        return y, dz, gz, torch.zeros_like(gz)
    if act == ACT_LEAKY:
        # y = z or 0.01 z: the product's rounding and that of the slope itself (0.01 in float32 is
        # 0.01 (1 - 2.2e-8)): 2 u |y|; where |z| <= dz the computed z may have the other sign: y is
        # then within (1 + slope) dz, and grad_z may be g or 0.01 g
        dy = (1 + LEAKY_SLOPE) * dz + 2 * U32 * y.abs()
        flip = z.abs() <= dz
        dgz = torch.where(flip, (1 - LEAKY_SLOPE) * g.abs(), 2 * U32 * gz.abs())
        return y, dy, gz, dgz
    if act == ACT_SIN:
        # a = fl(30 z): 30 dz + the product's rounding; sin and cos are 1-Lipschitz, each <= 1 ulp
        da = SIN_W0 * dz + U32 * (SIN_W0 * z).abs()
        dy = da + 2 * U32 * y.abs()
        # grad_z = g * 30 cos(a): 30 |g| da, + cos' and the products' rounding
        dgz = SIN_W0 * g.abs() * da + 4 * U32 * gz.abs()
        return y, dy, gz, dgz
    raise ValueError(f"act: expected 0, 1 or 2, got {act}")


def layer_bounds(kind: str, x: torch.Tensor, preps: torch.Tensor, geom: tuple, act: int,
                 residual: torch.Tensor | None, grad_y: torch.Tensor,
                 grad_y_bound: torch.Tensor | None = None) -> LayerBounds:
    """Exact values and float32 bounds of one ``batched_conv2d`` (``kind='conv'``, ``geom`` = (w_off,
    b_off, cout, cin, k, stride, padding)) or ``batched_linear`` (``kind='linear'``, ``geom`` = (w_off,
    b_off, out_features, in_features)) call with output gradient ``grad_y``. Inputs are float32 (or
    float64 holding float32 values); everything here runs in float64. ``grad_y_bound``: the bound of
    an output gradient that was itself computed (by the ops after this layer); it reaches grad_z
    through |act'(z)| and everything after it."""
    d = torch.float64
    x = x.detach().to(d)
    p = preps.detach().to(d)
    g = grad_y.detach().to(d)
    r = None if residual is None else residual.detach().to(d)
    B = p.shape[0]
    shared = x.dim() == (4 if kind == "conv" else 2)
    if kind == "conv":
        w_off, b_off, cout, cin, k, stride, padding = geom
        w, bias = layer_weights(p, w_off, b_off, (cout, cin, k, k))
        fan_in, fan_out = cin * k * k, cout * k * k
    elif kind == "linear":
        w_off, b_off, cout, fin = geom
        w, bias = layer_weights(p, w_off, b_off, (cout, fin))
        fan_in, fan_out = fin, cout
    else:
        raise ValueError(f"kind: expected 'conv' or 'linear', got {kind!r}")

    def lin(xb, wb):  # the layer's product, per network, on (B, N, ...) inputs
        if kind == "conv":
            return F.conv2d(xb, wb, None, stride, padding)
        return xb @ wb.t()

    xs = [x if shared else x[b] for b in range(B)]
    z = torch.stack([lin(xs[b], w[b]) for b in range(B)])
    mag = torch.stack([lin(xs[b].abs(), w[b].abs()) for b in range(B)])
    shape = (B, 1, cout) + ((1, 1) if kind == "conv" else ())
    z = z + bias.reshape(shape)
    mag = mag + bias.abs().reshape(shape)
    terms = fan_in + 1
    if r is not None:
        z, mag, terms = z + r, mag + r.abs(), terms + 1
    dz = gamma(terms) * mag
    y, dy, gz, dgz = _act_bounds(z, dz, g, act)
    if grad_y_bound is not None:
        slope = act_grad(torch.ones_like(z), y, z, act).abs()
        if act == ACT_LEAKY:
            slope = torch.ones_like(slope)  # either slope where the sign of z is uncertain
        dgz = dgz + slope * grad_y_bound.detach().to(d)

    # the sums of the backward pass: over the N images (and output pixels) for the parameters,
    # over the outputs (and kernel taps; and networks, for a shared x) for x
    n_px = gz[0, 0, 0].numel()
    m = gz.shape[1] * n_px
    gw, gw_b, gb, gb_b, gxs, gx_b = [], [], [], [], [], []
    for b in range(B):
        xb, gzb, dgzb = xs[b], gz[b], dgz[b]
        if kind == "conv":
            gw.append(torch.nn.grad.conv2d_weight(xb, w[b].shape, gzb, stride, padding))
            gw_b.append(gamma(m) * torch.nn.grad.conv2d_weight(xb.abs(), w[b].shape, gzb.abs(), stride, padding)
                        + torch.nn.grad.conv2d_weight(xb.abs(), w[b].shape, dgzb, stride, padding))
            gxs.append(torch.nn.grad.conv2d_input(xb.shape, w[b], gzb, stride, padding))
            gx_b.append((torch.nn.grad.conv2d_input(xb.shape, w[b].abs(), gzb.abs(), stride, padding),
                         torch.nn.grad.conv2d_input(xb.shape, w[b].abs(), dgzb, stride, padding)))
            gb.append(gzb.sum((0, 2, 3)))
            gb_b.append(gamma(m) * gzb.abs().sum((0, 2, 3)) + dgzb.sum((0, 2, 3)))
        else:
            gw.append(gzb.t() @ xb)
            gw_b.append(gamma(m) * (gzb.abs().t() @ xb.abs()) + dgzb.t() @ xb.abs())
            gxs.append(gzb @ w[b])
            gx_b.append((gzb.abs() @ w[b].abs(), dgzb @ w[b].abs()))
            gb.append(gzb.sum(0))
            gb_b.append(gamma(m) * gzb.abs().sum(0) + dgzb.sum(0))
    k_x = fan_out * (B if shared else 1)
    if shared:
        grad_x = torch.stack(gxs).sum(0)
        grad_x_bound = (gamma(k_x) * torch.stack([a for a, _ in gx_b]).sum(0)
                        + torch.stack([c for _, c in gx_b]).sum(0))
    else:
        grad_x = torch.stack(gxs)
        grad_x_bound = torch.stack([gamma(k_x) * a + c for a, c in gx_b])

    grad_preps = torch.zeros_like(p)
    grad_preps_bound = torch.zeros_like(p)
    n_w = w[0].numel()
    for b in range(B):
        grad_preps[b, w_off:w_off + n_w] = gw[b].reshape(-1)
        grad_preps_bound[b, w_off:w_off + n_w] = gw_b[b].reshape(-1)
        grad_preps[b, b_off:b_off + cout] = gb[b]
        grad_preps_bound[b, b_off:b_off + cout] = gb_b[b]
    return LayerBounds(z=z, z_bound=dz, y=y, y_bound=dy, grad_z=gz, grad_z_bound=dgz, grad_x=grad_x, grad_x_bound=grad_x_bound,
                       grad_preps=grad_preps, grad_preps_bound=grad_preps_bound,
                       grad_residual=None if r is None else gz, grad_residual_bound=None if r is None else dgz)
