"""Pure-PyTorch reference of the op `netspace_fast::pack_preps` (csrc/pack_preps.h documents the
semantics): the fallback when no kernel fits, the oracle of the tests, and the argument checks of
the Python backends (the same checks as csrc/pack_preps_check.cpp).

A plan is 7 integers per segment: (kind, numel, i0..i4) with kind COPY (i0 = source tensor),
FOLD_W (i0 = conv weight, i1 = gamma, i2 = running_var, i3 = channels) or FOLD_B (i0 = conv bias
or -1, i1..i4 = gamma, beta, running_mean, running_var); tensor indices count within one network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

COPY, FOLD_W, FOLD_B = 0, 1, 2
SEG_FIELDS = 7


def segments(plan: Sequence[int]) -> list[tuple[int, ...]]:
    return [tuple(plan[i:i + SEG_FIELDS]) for i in range(0, len(plan), SEG_FIELDS)]


def check_pack_args(tensors: Sequence[torch.Tensor], plan: Sequence[int], eps: Sequence[float], num_nets: int,
                    rows: int, width: int) -> int:
    """The checks of csrc/pack_preps_check.cpp, for the Python backends; returns tensors per network."""
    if num_nets < 0:
        raise ValueError(f"num_nets: expected >= 0, got {num_nets}")
    if rows < 0:
        raise ValueError(f"rows: expected >= 0, got {rows}")
    if width <= 0:
        raise ValueError(f"width: expected > 0, got {width}")
    if len(plan) % SEG_FIELDS:
        raise ValueError(f"plan: expected a multiple of {SEG_FIELDS} integers (7 per segment), got {len(plan)}")
    segs = segments(plan)
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


def segment_values(kind: int, numel: int, idx: Sequence[int], eps: float, base: Sequence[torch.Tensor]):
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
    segs = segments(plan)
    out = []
    for b in range(num_nets):
        base = tensors[b * T:(b + 1) * T]
        parts = [segment_values(k, n, idx, e, base) for (k, n, *idx), e in zip(segs, eps)]
        flat = torch.cat(parts) if parts else torch.zeros(0, device=device)
        out.append(torch.nn.functional.pad(flat, (0, rows * width - flat.numel())).view(rows, width))
    result = torch.stack(out)
    if check_finite and not bool(torch.isfinite(result).all()):
        raise ValueError("non-finite value (NaN or Inf) in a parameter being packed")
    return result


__all__ = ["COPY", "FOLD_B", "FOLD_W", "SEG_FIELDS", "check_pack_args", "pack_preps_reference", "segment_values",
           "segments"]
