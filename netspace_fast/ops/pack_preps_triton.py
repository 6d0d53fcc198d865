"""Triton kernel of the op `netspace_fast::pack_preps` (its CUDA kernel in builds without the
native one; see pack_preps.py for how it is registered and called).

Same scheme as the CUDA kernel: a host-built table (source pointers, segment descriptors and a
program -> (network, segment, chunk) map) and one launch over all chunks of all networks. Source
pointers are read from the table as int64 and cast to pointers inside the kernel. Runs on CPU
tensors under TRITON_INTERPRET=1 (the tests), on CUDA tensors compiled.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .pack_preps_ref import FOLD_W, check_pack_args, segments

BLOCK = 1024
SEG_INTS = 9  # kind, numel, offset, channels, src[5]


@triton.jit
def _pack_preps_kernel(ptrs, segs, chunks, eps_ptr, out, T, nseg, per_net, total, check,
                       bad_ptr, SEG_INTS: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b = tl.load(chunks + 3 * pid)
    s = tl.load(chunks + 3 * pid + 1)
    start = tl.load(chunks + 3 * pid + 2)
    offs = start + tl.arange(0, BLOCK).to(tl.int64)
    dst_net = out + b * per_net
    if s == nseg:  # zero padding after the last segment
        pad = per_net - total
        tl.store(dst_net + total + offs, tl.zeros([BLOCK], dtype=tl.float32), mask=offs < pad)
    else:
        seg = segs + SEG_INTS * s
        kind = tl.load(seg)
        numel = tl.load(seg + 1)
        offset = tl.load(seg + 2)
        channels = tl.load(seg + 3)
        eps = tl.load(eps_ptr + s)
        table = ptrs + b * T
        mask = offs < numel
        i0 = tl.load(seg + 4)
        p0 = tl.load(table + tl.maximum(i0, 0)).to(tl.pointer_type(tl.float32))
        if kind == 0:
            v = tl.load(p0 + offs, mask=mask, other=0.0)
        elif kind == 1:
            gamma = tl.load(table + tl.load(seg + 5)).to(tl.pointer_type(tl.float32))
            var = tl.load(table + tl.load(seg + 6)).to(tl.pointer_type(tl.float32))
            o = offs // (numel // channels)
            scale = tl.load(gamma + o, mask=mask, other=1.0) / tl.sqrt(tl.load(var + o, mask=mask, other=1.0) + eps)
            v = tl.load(p0 + offs, mask=mask, other=0.0) * scale
        else:
            gamma = tl.load(table + tl.load(seg + 5)).to(tl.pointer_type(tl.float32))
            beta = tl.load(table + tl.load(seg + 6)).to(tl.pointer_type(tl.float32))
            mean = tl.load(table + tl.load(seg + 7)).to(tl.pointer_type(tl.float32))
            var = tl.load(table + tl.load(seg + 8)).to(tl.pointer_type(tl.float32))
            bias = tl.load(p0 + offs, mask=mask & (i0 >= 0), other=0.0)
            scale = tl.load(gamma + offs, mask=mask, other=1.0) / tl.sqrt(tl.load(var + offs, mask=mask, other=1.0) + eps)
            v = (bias - tl.load(mean + offs, mask=mask, other=0.0)) * scale + tl.load(beta + offs, mask=mask, other=0.0)
        tl.store(dst_net + offset + offs, v, mask=mask)
        if check != 0:
            bad = tl.sum(((v - v) != 0).to(tl.int32), axis=0)  # NaN for Inf and NaN, 0 otherwise
            if bad > 0:
                tl.atomic_or(bad_ptr, 1)


def pack_preps_forward(tensors, plan, eps, num_nets, rows, width, check_finite):
    """Launcher: builds the metadata table and runs one kernel over every chunk."""
    T = check_pack_args(tensors, plan, eps, num_nets, rows, width)
    device = tensors[0].device if num_nets else torch.device("cpu")
    out = torch.empty((num_nets, rows, width), dtype=torch.float32, device=device)
    if num_nets == 0:
        return out
    segs = segments(plan)
    tensors = [t if t.is_contiguous() else t.contiguous() for t in tensors]
    ptrs = torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64)
    seg_table, chunk_map, offset = [], [], 0
    per_net = rows * width
    for kind, numel, *idx in segs:
        channels = idx[3] if kind == FOLD_W else numel
        src = [idx[0]] if kind == 0 else (idx[:3] if kind == FOLD_W else idx[:5])
        src = list(src) + [-1] * (5 - len(src))
        seg_table += [kind, numel, offset, channels] + src
        offset += numel
    total = offset
    sizes = [n for _, n, *_ in segs] + [per_net - total]
    for b in range(num_nets):
        for s, n in enumerate(sizes):
            for start in range(0, n, BLOCK):
                chunk_map += [b, s, start]
    if not chunk_map:
        return out
    segs_t = torch.tensor(seg_table or [0], dtype=torch.int64, device=device)
    chunks_t = torch.tensor(chunk_map, dtype=torch.int64, device=device)
    eps_t = torch.tensor(list(eps) or [0.0], dtype=torch.float32, device=device)
    bad = torch.zeros(1, dtype=torch.int32, device=device)
    _pack_preps_kernel[(len(chunk_map) // 3,)](
        ptrs.to(device), segs_t, chunks_t, eps_t, out, T, len(segs), per_net, total, int(check_finite), bad,
        SEG_INTS=SEG_INTS, BLOCK=BLOCK)
    if check_finite and int(bad.item()):
        raise ValueError("non-finite value (NaN or Inf) in a parameter being packed")
    return out


__all__ = ["BLOCK", "SEG_INTS", "pack_preps_forward"]
