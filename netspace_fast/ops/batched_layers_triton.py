"""Triton kernels of the batched layer ops: conv2d and linear for B networks at once,
with every network's weight and bias read straight from a (B, P) PRep batch at fixed offsets.

Semantics: exactly those of ``batched_layers_ref.py`` (the contract and the tests' oracle). Runs on CUDA
tensors compiled, and on CPU tensors under ``TRITON_INTERPRET=1`` (set before triton is imported).

Kernels (Liger-Kernel naming, ``_x_kernel`` -> ``x_forward`` / ``x_backward`` launchers):

- ``_batched_conv_forward_kernel``: implicit-GEMM convolution. GEMM view of network b:
  ``Z_b[m, co] = sum_kk A_b[m, kk] W_b[co, kk]`` with m = (n, oh, ow) an output pixel and
  kk = (ci, kh, kw); A_b (the im2col matrix) is never built: each (BLOCK_M, BLOCK_K) tile is gathered
  from x by index math, padding and bounds by masks. Grid ``(cdiv(N*Ho*Wo, BLOCK_M), cdiv(Cout, BLOCK_N), B)``:
  networks are a grid dimension, so one launch whatever B. W_b and bias_b are read from
  ``preps[b, w_off:]`` / ``preps[b, b_off:]`` (no unpack copy). A shared x (N, Cin, H, W) is a
  batch stride of 0 (no expand copy). Fused epilogue: + bias, + residual, activation; writes y and,
  for sin only, the pre-activation z.
- ``_act_backward_kernel``: grad_z = grad_y * act'(.) (LeakyReLU from the sign of y, sin from z).
- ``_batched_conv_wgrad_kernel``: weight gradient ``dW_b[co, kk] = sum_m dZ_b[m, co] A_b[m, kk]``
  (implicit GEMM again) fused with the bias gradient ``db_b[co] = sum_m dZ_b[m, co]``. The
  reduction over m = N*Ho*Wo may be split over ``S`` programs (grid axis 1) for parallelism: with
  S == 1 the kernel writes straight into ``grad_preps``; with S > 1 it writes partial sums into a
  (S, B, Cout*Cin*k*k + Cout) workspace and ``_grad_reduce_kernel`` sums them (fixed order:
  deterministic, no atomics) into ``grad_preps``.
- ``_batched_conv_dgrad_kernel``: input gradient by the transposed implicit GEMM
  ``dX_b[(n, ih, iw), ci] = sum_(co, kh, kw) dZ_b[(n, oh, ow), co] W_b[co, ci, kh, kw]`` with
  oh = (ih + pad - kh) / stride when that is an integer in range (masked otherwise). For a shared x
  the kernel loops over the networks inside one program (the network index joins the reduction),
  so the sum over networks is deterministic and needs neither atomics nor a zeroed buffer.

Linear layers are the same kernels with k = 1, H = W = Ho = Wo = 1 (a (Out, In) weight has the
layout of a (Out, In, 1, 1) one); Triton specializes the integer arguments equal to 1, so the
spatial index math folds away.

Launches per call: forward 1; backward <= 4 (activation gradient unless act == 0, weight/bias
gradient, reduction when S > 1, input gradient), whatever B.

Precision: tl.dot with float32 accumulation. On CUDA the products follow torch's float32 matmul
setting (netspace_fast.settings.tf32: IEEE float32 unless ``torch.backends.cuda.matmul.allow_tf32``
or ``NETSPACE_TF32=1``; ``tf32=`` in a launcher decides for one call); the interpreter computes in
float32. sin(30 z) and cos(30 z) reduce their argument to [-pi, pi] first (Cody-Waite), so a fast
hardware sin stays accurate for large arguments.

Limits: every tensor of one network (x_b, y_b, W_b, ...) must have fewer than 2**31 elements and
B <= 65535 (CUDA grid); checked. The dgrad of a strided convolution visits all k*k taps and masks
the (stride**2 - 1)/stride**2 of them that do not hit an output pixel.

The op kernels (``conv2d_op``, ``conv2d_backward_op``, ``linear_op``, ``linear_backward_op``) have
the schemas of the ops ``netspace_fast::batched_conv2d`` / ``batched_conv2d_backward`` /
``batched_linear`` / ``batched_linear_backward`` and are registered as their CUDA kernels by
batched_layers.py: forward returns ``(y, z)`` with z EMPTY (numel 0) unless act == 2; backward
writes into ``grad_preps`` and returns ``(grad_x, grad_z)`` (grad_x empty unless need_grad_x;
grad_z a fresh tensor, never grad_y itself).
"""

from __future__ import annotations

import inspect
import os

import torch
import triton
import triton.language as tl

from .. import settings
from .batched_layers_ref import ACT_LEAKY, ACT_NONE, ACT_SIN, LEAKY_SLOPE, SIN_W0

# the kernels write these constants as literals (0.01, 30.0)
assert LEAKY_SLOPE == 0.01 and SIN_W0 == 30.0, "update the literals in _apply_act / _act_backward_kernel"

_MAX_GRID_YZ = 65535
_INT32_MAX = 2 ** 31 - 1

# ------------------------------------------------------------------------------------------------
# tl.dot compat: `input_precision` (Triton >= 3.0) or the older `allow_tf32`

_DOT_HAS_INPUT_PRECISION = "input_precision" in inspect.signature(tl.dot).parameters

if _DOT_HAS_INPUT_PRECISION:
    @triton.jit
    def _mma(a, b, acc, TF32: tl.constexpr):
        """acc + a @ b, float32 accumulation; TF32 products when TF32."""
        if TF32:
            return tl.dot(a, b, acc, input_precision="tf32")
        else:
            return tl.dot(a, b, acc, input_precision="ieee")
else:  # pragma: no cover - Triton < 3.0
    @triton.jit
    def _mma(a, b, acc, TF32: tl.constexpr):
        return acc + tl.dot(a, b, allow_tf32=TF32)


@triton.jit
def _reduce_2pi(t):
    """t - 2*pi*round(t / (2*pi)) in [-pi, pi]; 2*pi = 6.28125 + 1.9353071795864769e-3 (the first
    part has 8 significant bits, so k * 6.28125 and t - k * 6.28125 are exact for |k| < 2**15)."""
    k = tl.floor(t * 0.15915494309189535 + 0.5)
    return (t - k * 6.28125) - k * 1.9353071795864769e-3


@triton.jit
def _apply_act(z, ACT: tl.constexpr):
    if ACT == 1:
        return tl.where(z > 0, z, z * 0.01)
    elif ACT == 2:
        return tl.sin(_reduce_2pi(z * 30.0))
    else:
        return z


# ------------------------------------------------------------------------------------------------
# kernels


@triton.jit
def _batched_conv_forward_kernel(
        x_ptr, p_ptr, res_ptr, y_ptr, z_ptr,
        M, COUT, CIN, H, W, HO, WO,
        sxb, sxn, sxc, sxh, sxw,  # x strides (sxb = 0: x shared by the networks)
        spb, spp,  # preps strides
        w_off, b_off,
        KSIZE: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, ACT: tl.constexpr,
        HAS_RES: tl.constexpr, STORE_Z: tl.constexpr, TF32: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    KK: tl.constexpr = KSIZE * KSIZE
    KDIM = CIN * KK
    HOWO = HO * WO

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < COUT
    n = offs_m // HOWO
    pix = offs_m % HOWO
    oh = pix // WO
    ow = pix % WO
    ih0 = oh * STRIDE - PAD
    iw0 = ow * STRIDE - PAD
    x_rows = x_ptr + b * sxb + n.to(tl.int64) * sxn  # (BLOCK_M,) pointers
    w_net = p_ptr + b * spb

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, KDIM, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < KDIM
        ci = offs_k // KK
        r = offs_k % KK
        kh = r // KSIZE
        kw = r % KSIZE
        ih = ih0[:, None] + kh[None, :]
        iw = iw0[:, None] + kw[None, :]
        a_mask = (mask_m[:, None] & mask_k[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))
        a = tl.load(x_rows[:, None] + ci[None, :] * sxc + ih * sxh + iw * sxw, mask=a_mask, other=0.0)
        wt = tl.load(w_net + (w_off + offs_n[None, :] * KDIM + offs_k[:, None]) * spp,
                     mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = _mma(a, wt, acc, TF32)

    bias = tl.load(w_net + (b_off + offs_n) * spp, mask=mask_n, other=0.0)
    acc = acc + bias[None, :]
    out_off = (b * M * COUT + n.to(tl.int64)[:, None] * (COUT * HOWO) + offs_n[None, :] * HOWO + pix[:, None])
    out_mask = mask_m[:, None] & mask_n[None, :]
    if HAS_RES:
        acc = acc + tl.load(res_ptr + out_off, mask=out_mask, other=0.0)
    if STORE_Z:
        tl.store(z_ptr + out_off, acc, mask=out_mask)
    tl.store(y_ptr + out_off, _apply_act(acc, ACT), mask=out_mask)


@triton.jit
def _act_backward_kernel(gy_ptr, y_ptr, z_ptr, gz_ptr, numel, ACT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    gy = tl.load(gy_ptr + offs, mask=mask, other=0.0)
    if ACT == 1:
        y = tl.load(y_ptr + offs, mask=mask, other=0.0)
        g = tl.where(y > 0, gy, gy * 0.01)
    else:
        z = tl.load(z_ptr + offs, mask=mask, other=0.0)
        g = gy * (30.0 * tl.cos(_reduce_2pi(z * 30.0)))
    tl.store(gz_ptr + offs, g, mask=mask)


@triton.jit
def _batched_conv_wgrad_kernel(
        gz_ptr, x_ptr, out_ptr,
        M, COUT, CIN, H, W, HO, WO, CHUNK, NK_TILES,
        sxb, sxn, sxc, sxh, sxw,
        sos, sob, sop,  # out strides: split, network, element
        w_dst, b_dst,  # where the weight / bias gradient start in a row of out
        KSIZE: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, TF32: tl.constexpr,
        BLOCK_CO: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    s = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    pid_co = pid // NK_TILES
    pid_k = pid % NK_TILES
    KK: tl.constexpr = KSIZE * KSIZE
    KDIM = CIN * KK
    HOWO = HO * WO

    offs_co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_co = offs_co < COUT
    mask_k = offs_k < KDIM
    ci = offs_k // KK
    r = offs_k % KK
    kh = r // KSIZE
    kw = r % KSIZE
    gz_net = gz_ptr + b * M * COUT
    x_net = x_ptr + b * sxb

    acc = tl.zeros((BLOCK_CO, BLOCK_K), dtype=tl.float32)
    bacc = tl.zeros((BLOCK_CO,), dtype=tl.float32)
    m_start = s * CHUNK
    m_end = tl.minimum(m_start + CHUNK, M)
    for m0 in range(m_start, m_end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < m_end
        n64 = (offs_m // HOWO).to(tl.int64)
        pix = offs_m % HOWO
        oh = pix // WO
        ow = pix % WO
        g = tl.load(gz_net + n64[None, :] * (COUT * HOWO) + offs_co[:, None] * HOWO + pix[None, :],
                    mask=mask_co[:, None] & mask_m[None, :], other=0.0)  # (BLOCK_CO, BLOCK_M) = dZ^T
        ih = (oh * STRIDE - PAD)[:, None] + kh[None, :]
        iw = (ow * STRIDE - PAD)[:, None] + kw[None, :]
        a_mask = (mask_m[:, None] & mask_k[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))
        a = tl.load(x_net + n64[:, None] * sxn + ci[None, :] * sxc + ih * sxh + iw * sxw, mask=a_mask, other=0.0)
        acc = _mma(g, a, acc, TF32)
        bacc += tl.sum(g, axis=1)

    out_net = out_ptr + s.to(tl.int64) * sos + b * sob
    tl.store(out_net + (w_dst + offs_co[:, None] * KDIM + offs_k[None, :]) * sop, acc,
             mask=mask_co[:, None] & mask_k[None, :])
    tl.store(out_net + (b_dst + offs_co) * sop, bacc, mask=mask_co & (pid_k == 0))


@triton.jit
def _grad_reduce_kernel(ws_ptr, g_ptr, S, L, CK, sws, swb, sgb, sgp, w_off, b_off, BLOCK: tl.constexpr):
    """grad_preps[b, dst(i)] = sum_s ws[s, b, i] for i < L = CK + Cout (dst: weight, then bias)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    b = tl.program_id(1).to(tl.int64)
    mask = offs < L
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    src = ws_ptr + b * swb + offs
    for s in range(0, S):
        acc += tl.load(src + s * sws, mask=mask, other=0.0)
    dst = tl.where(offs < CK, w_off + offs, b_off + (offs - CK))
    tl.store(g_ptr + b * sgb + dst * sgp, acc, mask=mask)


@triton.jit
def _batched_conv_dgrad_kernel(
        gz_ptr, p_ptr, gx_ptr,
        MX, COUT, CIN, H, W, HO, WO, NLOOP,
        sgzb, spb, spp, sgxb, w_off,
        KSIZE: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, TF32: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    KK: tl.constexpr = KSIZE * KSIZE
    KD = COUT * KK
    HW = H * W
    HOWO = HO * WO

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # input pixels (n, ih, iw)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # input channels
    mask_m = offs_m < MX
    mask_n = offs_n < CIN
    n64 = (offs_m // HW).to(tl.int64)
    q = offs_m % HW
    ih = q // W
    iw = q % W

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for i in range(0, NLOOP):  # NLOOP = B for a shared x (sum over networks), else 1
        b = pid_b + i
        gz_rows = gz_ptr + b * sgzb + n64 * (COUT * HOWO)
        w_net = p_ptr + b * spb
        for k0 in range(0, KD, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < KD
            co = offs_k // KK
            r = offs_k % KK
            kh = r // KSIZE
            kw = r % KSIZE
            th = (ih + PAD)[:, None] - kh[None, :]
            tw = (iw + PAD)[:, None] - kw[None, :]
            oh = th // STRIDE
            ow = tw // STRIDE
            valid = (mask_m[:, None] & mask_k[None, :] & (th >= 0) & (tw >= 0) & (oh < HO) & (ow < WO))
            if STRIDE > 1:
                valid = valid & (th % STRIDE == 0) & (tw % STRIDE == 0)
            a = tl.load(gz_rows[:, None] + co[None, :] * HOWO + oh * WO + ow, mask=valid, other=0.0)
            wt = tl.load(w_net + (w_off + co[:, None] * (CIN * KK) + offs_n[None, :] * KK + r[:, None]) * spp,
                         mask=mask_k[:, None] & mask_n[None, :], other=0.0)
            acc = _mma(a, wt, acc, TF32)

    out = gx_ptr + pid_b * sgxb + n64[:, None] * (CIN * HW) + offs_n[None, :] * HW + q[:, None]
    tl.store(out, acc, mask=mask_m[:, None] & mask_n[None, :])


# ------------------------------------------------------------------------------------------------
# argument checks


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_int(name: str, v, lo: int) -> None:
    if not _is_int(v):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    if v < lo:
        raise ValueError(f"{name}: expected >= {lo}, got {v}")


def _check_tensor(name: str, t, device: torch.device | None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(t).__name__}")
    if t.dtype != torch.float32:
        raise TypeError(f"{name}: expected float32, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (the device of preps), got {t.device}")


def _check_shape(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")


def _check_small(name: str, numel: int) -> None:
    if numel > _INT32_MAX - (1 << 16):
        raise ValueError(f"{name}: {numel} elements per network, more than the kernels' int32 indexing allows")


def _check_layer(kind: str, x, preps, w_off, b_off, cout, cin, k, stride, padding, act, spatial: bool):
    """Checks shared by the four launchers; returns (B, N, H, W, Ho, Wo, x_shared)."""
    _check_tensor("preps", preps, None)
    if preps.dim() != 2:
        raise ValueError(f"preps: expected a (B, P) tensor, got shape {tuple(preps.shape)}")
    device = preps.device
    if device.type != "cuda" and not (device.type == "cpu" and _interpreted()):
        raise ValueError(f"preps: the Triton kernels need CUDA tensors (or CPU ones under TRITON_INTERPRET=1), "
                         f"got {device}")
    _check_tensor("x", x, device)
    out_name, in_name = ("cout", "cin") if spatial else ("out_features", "in_features")
    _check_int(out_name, cout, 1)
    _check_int(in_name, cin, 1)
    _check_int("k", k, 1)
    _check_int("stride", stride, 1)
    _check_int("padding", padding, 0)
    _check_int("w_off", w_off, 0)
    _check_int("b_off", b_off, 0)
    if not _is_int(act):
        raise TypeError(f"act: expected an int, got {type(act).__name__}")
    if act not in (ACT_NONE, ACT_LEAKY, ACT_SIN):
        raise ValueError(f"act: expected 0 (none), 1 (LeakyReLU) or 2 (sin), got {act}")
    B, P = preps.shape
    if B > _MAX_GRID_YZ:
        raise ValueError(f"preps: at most {_MAX_GRID_YZ} networks per call, got B={B}")
    numel = cout * cin * k * k
    if w_off + numel > P:
        raise ValueError(f"w_off: the weight [{w_off}, {w_off + numel}) of {kind} does not fit in P={P}")
    if b_off + cout > P:
        raise ValueError(f"b_off: the bias [{b_off}, {b_off + cout}) of {kind} does not fit in P={P}")
    if P > 0 and (P - 1) * max(preps.stride(1), 1) > _INT32_MAX:
        raise ValueError("preps: a row spans more than 2**31 - 1 elements")
    if spatial:
        if x.dim() == 4:
            shared, (N, C, H, W) = True, x.shape
        elif x.dim() == 5:
            shared, (Bx, N, C, H, W) = False, x.shape
            if Bx != B:
                raise ValueError(f"x: expected {B} networks (preps has B={B}), got shape {tuple(x.shape)}")
        else:
            raise ValueError(f"x: expected (N, Cin, H, W) shared or (B, N, Cin, H, W), got shape {tuple(x.shape)}")
        if C != cin:
            raise ValueError(f"x: expected cin={cin} channels, got shape {tuple(x.shape)}")
        Ho = (H + 2 * padding - k) // stride + 1
        Wo = (W + 2 * padding - k) // stride + 1
        if H + 2 * padding < k or W + 2 * padding < k:
            raise ValueError(f"k: kernel {k} larger than the padded input {H + 2 * padding}x{W + 2 * padding}")
    else:
        if k != 1 or stride != 1 or padding != 0:  # pragma: no cover - internal
            raise ValueError("linear: k, stride, padding must be 1, 1, 0")
        if x.dim() == 2:
            shared, (N, C) = True, x.shape
        elif x.dim() == 3:
            shared, (Bx, N, C) = False, x.shape
            if Bx != B:
                raise ValueError(f"x: expected {B} networks (preps has B={B}), got shape {tuple(x.shape)}")
        else:
            raise ValueError(f"x: expected (N, in_features) shared or (B, N, in_features), got shape {tuple(x.shape)}")
        if C != cin:
            raise ValueError(f"x: expected in_features={cin}, got shape {tuple(x.shape)}")
        H = W = Ho = Wo = 1
    _check_small("x", N * cin * H * W)
    _check_small("y", N * cout * Ho * Wo)
    _check_small("weight", numel)
    return B, N, H, W, Ho, Wo, shared


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _tiles(device: torch.device) -> str:
    """Which tile sizes a launch uses: "gpu" on CUDA; "rehearsal" in the GPU program's rehearsal on
    CPU (``NETSPACE_GPU_REHEARSAL=1``: large tiles, since the interpreter's cost is per tile operation
    and whole networks must run interpreted within seconds; masks make any tile size compute the same
    values); otherwise "interpreter", the smallest tiles ``tl.dot`` takes, so that the op tests'
    tiny shapes cross block boundaries."""
    if device.type == "cuda":
        return "gpu"
    return "rehearsal" if device.type == "cpu" and settings.gpu_rehearsal() else "interpreter"


def _use_tf32(device: torch.device, tf32: bool | None) -> bool:
    if device.type != "cuda":
        return False
    return settings.tf32() if tf32 is None else bool(tf32)


def _np2(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(int(v), 1))))


def _prep_x(x: torch.Tensor, shared: bool, spatial: bool):
    """x (a copy only if one sample spans more than int32 offsets) and its (batch, sample, channel,
    row, column) strides; batch stride 0 when shared (no expand copy)."""
    inner = x.stride()[-3:] if spatial else x.stride()[-1:]
    sizes = x.shape[-3:] if spatial else x.shape[-1:]
    if sum((n - 1) * st for n, st in zip(sizes, inner) if n > 0) > _INT32_MAX:
        x = x.contiguous()
    st = x.stride()
    if spatial:
        strides = ((0,) + tuple(st)) if shared else tuple(st)
    else:
        strides = (0, st[0], st[1], 0, 0) if shared else (st[0], st[1], st[2], 0, 0)
    return x, strides


# ------------------------------------------------------------------------------------------------
# launchers (generic over conv / linear)


def _forward(kind, x, preps, w_off, b_off, cout, cin, k, stride, padding, act, residual, spatial, tf32):
    B, N, H, W, Ho, Wo, shared = _check_layer(kind, x, preps, w_off, b_off, cout, cin, k, stride, padding, act,
                                              spatial)
    out_shape = (B, N, cout, Ho, Wo) if spatial else (B, N, cout)
    if residual is not None:
        _check_tensor("residual", residual, preps.device)
        _check_shape("residual", residual, out_shape)
        residual = residual.contiguous()
    y = torch.empty(out_shape, dtype=torch.float32, device=preps.device)
    z = torch.empty(out_shape, dtype=torch.float32, device=preps.device) if act == ACT_SIN else None
    M = N * Ho * Wo
    if B == 0 or M == 0:
        return y, z
    tiles = _tiles(preps.device)
    if tiles == "gpu":
        BM, BN, BK = 64, _np2(cout, 16, 64), 32
    elif tiles == "rehearsal":
        BM, BN, BK = 256, _np2(cout, 16, 256), 128
    else:  # interpreter: the smallest tiles tl.dot takes, so tiny test shapes cross block boundaries
        BM, BN, BK = 16, 16, 16
    grid = (triton.cdiv(M, BM), triton.cdiv(cout, BN), B)
    x, xs = _prep_x(x, shared, spatial)
    _batched_conv_forward_kernel[grid](
        x, preps, residual if residual is not None else y, y, z if z is not None else y,
        M, cout, cin, H, W, Ho, Wo,
        *xs, preps.stride(0), preps.stride(1), w_off, b_off,
        KSIZE=k, STRIDE=stride, PAD=padding, ACT=act, HAS_RES=residual is not None, STORE_Z=z is not None,
        TF32=_use_tf32(preps.device, tf32), BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK)
    return y, z


def _choose_split(M: int, tiles: int, B: int, BM: int, device: torch.device, split: int | None) -> int:
    blocks = max(triton.cdiv(M, BM), 1)
    if split is not None:
        return max(1, min(int(split), blocks))
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        want = max(1, (4 * sms) // max(tiles * B, 1))
        return max(1, min(want, blocks, 32))
    return max(1, min(2, blocks))  # interpreter: exercise the split path whenever M > BLOCK_M


def _backward(kind, grad_y, x, preps, y, z, w_off, b_off, cout, cin, k, stride, padding, act, grad_preps, x_shared,
              spatial, tf32, split, need_grad_x=True):
    B, N, H, W, Ho, Wo, shared = _check_layer(kind, x, preps, w_off, b_off, cout, cin, k, stride, padding, act,
                                              spatial)
    device = preps.device
    if not isinstance(x_shared, bool):
        raise TypeError(f"x_shared: expected a bool, got {type(x_shared).__name__}")
    if x_shared != shared:
        raise ValueError(f"x_shared: {x_shared} but x has shape {tuple(x.shape)} "
                         f"({'shared' if shared else 'per network'})")
    out_shape = (B, N, cout, Ho, Wo) if spatial else (B, N, cout)
    _check_tensor("grad_y", grad_y, device)
    _check_shape("grad_y", grad_y, out_shape)
    if act == ACT_LEAKY:
        if y is None:
            raise ValueError("y: the LeakyReLU backward needs the forward output y")
        _check_tensor("y", y, device)
        _check_shape("y", y, out_shape)
    if act == ACT_SIN:
        if z is None:
            raise ValueError("z: the sin backward needs the pre-activation z")
        _check_tensor("z", z, device)
        _check_shape("z", z, out_shape)
    _check_tensor("grad_preps", grad_preps, device)
    _check_shape("grad_preps", grad_preps, tuple(preps.shape))
    numel = cout * cin * k * k
    if w_off < b_off + cout and b_off < w_off + numel:
        raise ValueError(f"b_off: the bias [{b_off}, {b_off + cout}) overlaps the weight [{w_off}, {w_off + numel}) "
                         f"(their gradients are written, not accumulated)")
    P = preps.shape[1]
    if (B > 1 and grad_preps.stride(0) == 0) or (P > 1 and grad_preps.stride(1) == 0):
        raise ValueError("grad_preps: expected a writable tensor without overlapping (stride 0, expanded) rows")
    if P > 0 and (P - 1) * max(grad_preps.stride(1), 1) > _INT32_MAX:
        raise ValueError("grad_preps: a row spans more than 2**31 - 1 elements")

    grad_y = grad_y.contiguous()
    total = grad_y.numel()
    if act == ACT_NONE:
        grad_z = grad_y
    else:
        grad_z = torch.empty(out_shape, dtype=torch.float32, device=device)
        if total:
            BLOCK = 1 << 16 if _tiles(device) == "rehearsal" else 1024  # elementwise: any block, same values
            _act_backward_kernel[(triton.cdiv(total, BLOCK),)](
                grad_y, y.contiguous() if act == ACT_LEAKY else grad_y, z.contiguous() if act == ACT_SIN else grad_y,
                grad_z, total, ACT=act, BLOCK=BLOCK)
    if not isinstance(need_grad_x, bool):
        raise TypeError(f"need_grad_x: expected a bool, got {type(need_grad_x).__name__}")
    grad_x = torch.empty(tuple(x.shape), dtype=torch.float32, device=device) if need_grad_x else None
    if B == 0:
        if grad_x is not None:
            grad_x.zero_()
        return grad_x, grad_z

    mode = _tiles(device)
    use_tf32 = _use_tf32(device, tf32)
    M = N * Ho * Wo
    KDIM = cin * k * k
    # weight and bias gradient
    if mode == "gpu":
        BCO, BMR, BK = _np2(cout, 16, 64), 32, _np2(KDIM, 16, 64)
    elif mode == "rehearsal":
        BCO, BMR, BK = _np2(cout, 16, 256), 256, _np2(KDIM, 16, 256)
    else:
        BCO, BMR, BK = 16, 16, 16
    nk_tiles = triton.cdiv(KDIM, BK)
    tiles = triton.cdiv(cout, BCO) * nk_tiles
    L = numel + cout
    S = _choose_split(M, tiles, B, BMR, device, split)
    S = max(1, min(S, (1 << 26) // max(B * L, 1)))  # workspace <= 256 MiB (and int32-indexable)
    chunk = triton.cdiv(triton.cdiv(max(M, 1), S), BMR) * BMR
    S = max(1, triton.cdiv(M, chunk))
    x, xs = _prep_x(x, shared, spatial)
    if S == 1:
        out, sos, sob, sop, w_dst, b_dst = grad_preps, 0, grad_preps.stride(0), grad_preps.stride(1), w_off, b_off
    else:
        ws = torch.empty((S, B, L), dtype=torch.float32, device=device)
        out, sos, sob, sop, w_dst, b_dst = ws, B * L, L, 1, 0, numel
    _batched_conv_wgrad_kernel[(tiles, S, B)](
        grad_z, x, out, M, cout, cin, H, W, Ho, Wo, chunk, nk_tiles, *xs, sos, sob, sop, w_dst, b_dst,
        KSIZE=k, STRIDE=stride, PAD=padding, TF32=use_tf32, BLOCK_CO=BCO, BLOCK_M=BMR, BLOCK_K=BK)
    if S > 1:
        RB = 256 if mode == "interpreter" else 1024
        _grad_reduce_kernel[(triton.cdiv(L, RB), B)](
            ws, grad_preps, S, L, numel, B * L, L, grad_preps.stride(0), grad_preps.stride(1), w_off, b_off, BLOCK=RB)

    # input gradient (not computed at all unless asked for: the network input's, when x needs none)
    MX = N * H * W
    if MX and need_grad_x:
        if mode == "gpu":
            BM, BN, BK2 = 64, _np2(cin, 16, 64), 32
        elif mode == "rehearsal":
            BM, BN, BK2 = 256, _np2(cin, 16, 256), 128
        else:
            BM, BN, BK2 = 16, 16, 16
        grid = (triton.cdiv(MX, BM), triton.cdiv(cin, BN), 1 if shared else B)
        _batched_conv_dgrad_kernel[grid](
            grad_z, preps, grad_x, MX, cout, cin, H, W, Ho, Wo, B if shared else 1, M * cout,
            preps.stride(0), preps.stride(1), 0 if shared else MX * cin, w_off,
            KSIZE=k, STRIDE=stride, PAD=padding, TF32=use_tf32, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK2)
    return grad_x, grad_z


# ------------------------------------------------------------------------------------------------
# public launchers


def conv2d_forward(x: torch.Tensor, preps: torch.Tensor, w_off: int, b_off: int, cout: int, cin: int, k: int,
                   stride: int, padding: int, act: int, residual: torch.Tensor | None = None, *,
                   tf32: bool | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Batched conv2d of batched_layers_ref.batched_conv2d_ref. Returns (y, z): y (B, N, Cout, Ho, Wo)
    contiguous float32, z the pre-activation (same shape) when act == 2, else None.
    ``tf32`` (CUDA only): None -> settings.tf32() (NETSPACE_TF32)."""
    return _forward("conv2d", x, preps, w_off, b_off, cout, cin, k, stride, padding, act, residual, True, tf32)


def conv2d_backward(grad_y: torch.Tensor, x: torch.Tensor, preps: torch.Tensor, y: torch.Tensor | None,
                    z: torch.Tensor | None, w_off: int, b_off: int, cout: int, cin: int, k: int, stride: int,
                    padding: int, act: int, grad_preps: torch.Tensor, x_shared: bool, *, tf32: bool | None = None,
                    split: int | None = None, need_grad_x: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Backward of conv2d_forward. Writes the weight and bias gradients into
    ``grad_preps[:, w_off:w_off + cout*cin*k*k]`` and ``grad_preps[:, b_off:b_off + cout]``
    (overwrite; nothing else of grad_preps is touched). Returns (grad_x, grad_z): grad_x of x's shape
    (summed over networks for a shared x), grad_z = the gradient of the pre-activation = of the
    residual. y is needed for act == 1, z for act == 2 (otherwise they may be None). With act == 0,
    grad_z IS grad_y (made contiguous), not a copy. ``split``: the number of programs the reduction
    over N*Ho*Wo is split into (None: chosen from the device). ``need_grad_x=False``: grad_x is not
    computed (its kernel is not launched) and None is returned in its place."""
    return _backward("conv2d", grad_y, x, preps, y, z, w_off, b_off, cout, cin, k, stride, padding, act, grad_preps,
                     x_shared, True, tf32, split, need_grad_x)


def linear_forward(x: torch.Tensor, preps: torch.Tensor, w_off: int, b_off: int, out_features: int,
                   in_features: int, act: int, residual: torch.Tensor | None = None, *,
                   tf32: bool | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Batched linear of batched_layers_ref.batched_linear_ref: x (N, In) shared or (B, N, In) -> (y, z),
    y (B, N, Out), z as in conv2d_forward."""
    return _forward("linear", x, preps, w_off, b_off, out_features, in_features, 1, 1, 0, act, residual, False, tf32)


def linear_backward(grad_y: torch.Tensor, x: torch.Tensor, preps: torch.Tensor, y: torch.Tensor | None,
                    z: torch.Tensor | None, w_off: int, b_off: int, out_features: int, in_features: int, act: int,
                    grad_preps: torch.Tensor, x_shared: bool, *, tf32: bool | None = None,
                    split: int | None = None, need_grad_x: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Backward of linear_forward; as conv2d_backward."""
    return _backward("linear", grad_y, x, preps, y, z, w_off, b_off, out_features, in_features, 1, 1, 0, act,
                     grad_preps, x_shared, False, tf32, split, need_grad_x)


# ------------------------------------------------------------------------------------------------
# the op kernels: the schemas of netspace_fast::batched_conv2d / _backward, batched_linear /
# _backward (csrc/registration.cpp). batched_layers.py registers them as the ops' CUDA kernels
# (there is no native CUDA kernel of these ops).


def _z_out(y: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
    return z if z is not None else y.new_empty((0,))


def _fresh(gz: torch.Tensor, grad_y: torch.Tensor) -> torch.Tensor:
    """An op output must not alias an input: act == 0 hands grad_y itself back as grad_z."""
    return gz.clone() if gz is grad_y or gz.data_ptr() == grad_y.data_ptr() else gz


def conv2d_op(x: torch.Tensor, preps: torch.Tensor, w_off: int, b_off: int, cout: int, cin: int, k: int,
              stride: int, padding: int, act: int, residual: torch.Tensor | None = None):
    """(y, z) of conv2d_forward; z is an empty tensor (numel 0) unless act == 2."""
    y, z = conv2d_forward(x, preps, w_off, b_off, cout, cin, k, stride, padding, act, residual)
    return y, _z_out(y, z)


def conv2d_backward_op(grad_y, x, preps, y, z, w_off: int, b_off: int, cout: int, cin: int, k: int, stride: int,
                       padding: int, act: int, grad_preps: torch.Tensor, need_grad_x: bool):
    """(grad_x or an empty tensor, grad_z) of conv2d_backward; z is read only when act == 2."""
    grad_y = grad_y.contiguous()
    gx, gz = conv2d_backward(grad_y, x, preps, y, z if act == ACT_SIN else None, w_off, b_off, cout, cin, k, stride,
                             padding, act, grad_preps, x.dim() == 4, need_grad_x=bool(need_grad_x))
    return (gx if need_grad_x else x.new_empty((0,))), _fresh(gz, grad_y)


def linear_op(x: torch.Tensor, preps: torch.Tensor, w_off: int, b_off: int, out_features: int, in_features: int,
              act: int, residual: torch.Tensor | None = None):
    """(y, z) of linear_forward; z is an empty tensor (numel 0) unless act == 2."""
    y, z = linear_forward(x, preps, w_off, b_off, out_features, in_features, act, residual)
    return y, _z_out(y, z)


def linear_backward_op(grad_y, x, preps, y, z, w_off: int, b_off: int, out_features: int, in_features: int, act: int,
                       grad_preps: torch.Tensor, need_grad_x: bool):
    """(grad_x or an empty tensor, grad_z) of linear_backward."""
    grad_y = grad_y.contiguous()
    gx, gz = linear_backward(grad_y, x, preps, y, z if act == ACT_SIN else None, w_off, b_off, out_features,
                             in_features, act, grad_preps, x.dim() == 2, need_grad_x=bool(need_grad_x))
    return (gx if need_grad_x else x.new_empty((0,))), _fresh(gz, grad_y)


__all__ = [
    "conv2d_backward", "conv2d_backward_op", "conv2d_forward", "conv2d_op", "linear_backward", "linear_backward_op",
    "linear_forward", "linear_op",
]
