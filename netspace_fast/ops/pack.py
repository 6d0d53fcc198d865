"""The fused fold-and-pack op `netspace_fast::pack_preps` (csrc/pack.h documents the semantics).

Here: the pure-PyTorch reference (fallback and oracle), the argument checks shared by the Python
backends, the fake kernel (torch.compile), the autograd formula, and the dispatching wrapper.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import _native, backend as _backend

COPY, FOLD_W, FOLD_B = 0, 1, 2
SEG_FIELDS = 7


def _segments(plan: Sequence[int]) -> list[tuple[int, ...]]:
    return [tuple(plan[i:i + SEG_FIELDS]) for i in range(0, len(plan), SEG_FIELDS)]


def check_pack_args(tensors: Sequence[torch.Tensor], plan: Sequence[int], eps: Sequence[float], num_nets: int,
                    rows: int, width: int) -> int:
    """The checks of csrc/pack_check.cpp, for the Python backends; returns tensors per network."""
    if num_nets < 0:
        raise ValueError(f"num_nets: expected >= 0, got {num_nets}")
    if rows < 0:
        raise ValueError(f"rows: expected >= 0, got {rows}")
    if width <= 0:
        raise ValueError(f"width: expected > 0, got {width}")
    if len(plan) % SEG_FIELDS:
        raise ValueError(f"plan: expected a multiple of {SEG_FIELDS} integers (7 per segment), got {len(plan)}")
    segs = _segments(plan)
    if len(eps) != len(segs):
        raise ValueError(f"eps: expected one value per segment ({len(segs)}), got {len(eps)}")
    if num_nets == 0:
        if len(tensors):
            raise ValueError(f"tensors: expected none for num_nets=0, got {len(tensors)}")
        T = 0
    else:
        if not len(tensors) or len(tensors) % num_nets:
            raise ValueError(f"tensors: expected a positive multiple of num_nets={num_nets} tensors, got {len(tensors)}")
        T = len(tensors) // num_nets
    total = 0
    for s, (kind, numel, *idx) in enumerate(segs):
        if numel < 0:
            raise ValueError(f"plan: segment {s} numel must be >= 0, got {numel}")
        if kind == COPY:
            used = [(idx[0], "source", False)]
        elif kind == FOLD_W:
            used = [(idx[0], "weight", False), (idx[1], "gamma", False), (idx[2], "var", False)]
            if idx[3] <= 0 or numel % idx[3]:
                raise ValueError(f"plan: segment {s} channels must be > 0 and divide numel={numel}, got {idx[3]}")
        elif kind == FOLD_B:
            used = [(idx[0], "bias", True)] + [(i, n, False) for i, n in zip(idx[1:], ("gamma", "beta", "mean", "var"))]
        else:
            raise ValueError(f"plan: segment {s} kind must be 0 (copy), 1 (fold weight) or 2 (fold bias), got {kind}")
        if kind != COPY and eps[s] < 0:
            raise ValueError(f"eps: segment {s} expected >= 0, got {eps[s]}")
        if num_nets:
            for i, name, optional in used:
                if not ((optional and i == -1) or 0 <= i < T):
                    raise ValueError(f"plan: segment {s} {name} index must be in [{-1 if optional else 0}, {T}), got {i}")
        total += numel
    if total > rows * width:
        raise ValueError(f"rows: the plan writes {total} values, more than rows*width = {rows}*{width} = {rows * width}")
    if num_nets == 0:
        return 0
    device = tensors[0].device
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensors: element {i} is a {type(t).__name__}, expected a Tensor")
        if t.dtype != torch.float32:
            raise TypeError(f"tensors: expected float32 parameters, tensor {i} (network {i // T}, index {i % T}) "
                            f"is {t.dtype}")
        if t.device != device:
            raise ValueError(f"tensors: expected every parameter on one device ({device}), tensor {i} "
                             f"(network {i // T}) is on {t.device}")
    for b in range(num_nets):
        base = tensors[b * T:(b + 1) * T]
        for s, (kind, numel, *idx) in enumerate(segs):
            if kind == COPY:
                need = [(idx[0], numel)]
            elif kind == FOLD_W:
                need = [(idx[0], numel), (idx[1], idx[3]), (idx[2], idx[3])]
            else:
                need = [(i, numel) for i in idx[:5] if i >= 0]
            for i, n in need:
                if base[i].numel() != n:
                    raise ValueError(f"tensors: network {b} segment {s} expects tensor {i} with {n} values, "
                                     f"got {base[i].numel()}")
    return T


def _segment_values(kind: int, numel: int, idx: Sequence[int], eps: float, base: Sequence[torch.Tensor]):
    if kind == COPY:
        return base[idx[0]].reshape(-1)
    if kind == FOLD_W:
        w, gamma, var = base[idx[0]], base[idx[1]], base[idx[2]]
        scale = gamma.reshape(-1) / torch.sqrt(var.reshape(-1) + eps)  # seed Eq. 2, 6
        return (w.reshape(idx[3], -1) * scale[:, None]).reshape(-1)
    bias = base[idx[0]].reshape(-1) if idx[0] >= 0 else 0.0
    gamma, beta, mean, var = (base[i].reshape(-1) for i in idx[1:5])
    return (bias - mean) * (gamma / torch.sqrt(var + eps)) + beta  # seed Eq. 3, 7


def pack_preps_reference(tensors: Sequence[torch.Tensor], plan: Sequence[int], eps: Sequence[float], num_nets: int,
                         rows: int, width: int, check_finite: bool = False) -> torch.Tensor:
    """Pure-PyTorch `pack_preps`: per network, cat the segments' values and zero-pad. Differentiable."""
    T = check_pack_args(tensors, plan, eps, num_nets, rows, width)
    device = tensors[0].device if num_nets else torch.device("cpu")
    if num_nets == 0:
        return torch.empty((0, rows, width), dtype=torch.float32, device=device)
    segs = _segments(plan)
    out = []
    for b in range(num_nets):
        base = tensors[b * T:(b + 1) * T]
        parts = [_segment_values(k, n, idx, e, base) for (k, n, *idx), e in zip(segs, eps)]
        flat = torch.cat(parts) if parts else torch.zeros(0, device=device)
        out.append(torch.nn.functional.pad(flat, (0, rows * width - flat.numel())).view(rows, width))
    result = torch.stack(out)
    if check_finite and not bool(torch.isfinite(result).all()):
        raise ValueError("non-finite value (NaN or Inf) in a parameter being packed")
    return result


# ---------------------------------------------------------------------------------------------
# autograd: the gradient of each segment written with torch ops (so it is itself differentiable)


def _setup_context(ctx, inputs, output):
    tensors, plan, eps, num_nets, rows, width, _check = inputs
    ctx.plan, ctx.eps, ctx.num_nets = list(plan), list(eps), num_nets
    ctx.needs = [t.requires_grad for t in tensors]
    ctx.save_for_backward(*tensors)


def _backward(ctx, grad):
    tensors = ctx.saved_tensors
    B = ctx.num_nets
    T = len(tensors) // B if B else 0
    grads: list[torch.Tensor | None] = [None] * len(tensors)
    if B == 0:
        return grads, None, None, None, None, None, None

    def acc(i: int, g: torch.Tensor) -> None:
        if not ctx.needs[i]:
            return
        g = g.reshape(tensors[i].shape)
        grads[i] = g if grads[i] is None else grads[i] + g

    flat = grad.reshape(B, -1)
    offset = 0
    for (kind, numel, *idx), eps in zip(_segments(ctx.plan), ctx.eps):
        for b in range(B):
            g = flat[b, offset:offset + numel]
            base = b * T
            if kind == COPY:
                acc(base + idx[0], g)
                continue
            # out = f(scale) with scale = gamma * rstd, rstd = (var + eps)^(-1/2)
            if kind == FOLD_W:
                w, gi, vi = tensors[base + idx[0]], idx[1], idx[2]
            else:
                gi, vi = idx[1], idx[4]
            gamma, var = tensors[base + gi].reshape(-1), tensors[base + vi].reshape(-1)
            rstd = torch.rsqrt(var + eps)
            scale = gamma * rstd
            if kind == FOLD_W:
                g2 = g.reshape(idx[3], -1)
                acc(base + idx[0], g2 * scale[:, None])
                dscale = (g2 * w.reshape(idx[3], -1)).sum(1)
            else:
                bias = tensors[base + idx[0]].reshape(-1) if idx[0] >= 0 else None
                mean = tensors[base + idx[3]].reshape(-1)
                if bias is not None:
                    acc(base + idx[0], g * scale)
                acc(base + idx[3], -g * scale)
                acc(base + idx[2], g)
                dscale = g * ((bias if bias is not None else 0.0) - mean)
            acc(base + gi, dscale * rstd)
            acc(base + vi, dscale * gamma * (-0.5) * rstd ** 3)
        offset += numel
    return grads, None, None, None, None, None, None


def _fake(tensors, plan, eps, num_nets, rows, width, check_finite):
    # the Meta kernel also runs when one real tensor is mixed with meta ones: refuse that here
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"tensors: expected every parameter on one device, got {sorted(map(str, devices))}")
    torch._check(num_nets >= 0)
    torch._check(rows >= 0)
    torch._check(width > 0)
    torch._check(len(plan) % SEG_FIELDS == 0)
    if len(tensors):
        return tensors[0].new_empty((num_nets, rows, width))
    return torch.empty((num_nets, rows, width), dtype=torch.float32)


if _native.LOADED:
    torch.library.register_fake("netspace_fast::pack_preps")(_fake)
    torch.library.register_autograd("netspace_fast::pack_preps", _backward, setup_context=_setup_context)


def pack_op(tensors: Sequence[torch.Tensor], plan: Sequence[int], eps: Sequence[float], num_nets: int, rows: int,
            width: int, check_finite: bool = False, backend: str | None = None) -> torch.Tensor:
    """Run `pack_preps` on the backend chosen for the tensors' device (see netspace_fast.backend)."""
    if num_nets == 0:  # no tensor argument: the dispatcher could not pick a kernel; nothing to launch
        return pack_preps_reference(tensors, plan, eps, num_nets, rows, width, check_finite)
    device = tensors[0].device if len(tensors) else torch.device("cpu")
    # before any dispatch: the dispatcher would route a CPU/CUDA mix to the CUDA kernel
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"tensors: expected every parameter on one device, got {sorted(map(str, devices))}")
    which = _backend.select("pack_preps", device, backend)
    if which in ("cpp", "cuda"):
        return torch.ops.netspace_fast.pack_preps(list(tensors), list(plan), [float(e) for e in eps], num_nets,
                                                  rows, width, check_finite)
    if which == "triton":
        from .pack_triton import pack_preps_triton

        return pack_preps_triton(list(tensors), list(plan), [float(e) for e in eps], num_nets, rows, width,
                                 check_finite)
    return pack_preps_reference(tensors, plan, eps, num_nets, rows, width, check_finite)


__all__ = ["COPY", "FOLD_B", "FOLD_W", "check_pack_args", "pack_op", "pack_preps_reference"]
