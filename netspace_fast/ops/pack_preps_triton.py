"""Triton kernel of the op `netspace_fast::pack_preps` (its CUDA kernel in builds without the
native one; see pack_preps.py for how it is registered and called).

Same scheme as the CUDA kernel: a host-built table (source pointers, segment descriptors and a
program -> (network, segment, chunk) map) and one launch over all chunks of all networks. Source
pointers are read from the table as int64 and cast to pointers inside the kernel. Runs on CPU
tensors under TRITON_INTERPRET=1 (the tests), on CUDA tensors compiled.

Two steps, shared by the one-shot op and the reusable plan (:class:`netspace_fast.prep.PRepPacker`):
:func:`build_tables` (host work: checks, tables, one host -> device copy of each) and
:func:`launch` (one kernel launch on prebuilt tables, nothing else). The op does both per call;
the packer builds once and launches per call.
"""

from __future__ import annotations

from typing import NamedTuple

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


class PackTables(NamedTuple):
    """The kernel's metadata for one (tensors, plan, eps, num_nets, rows, width), on the tensors' device.

    Built once by :func:`build_tables` and launched any number of times by :func:`launch`: the
    one-shot op builds it per call, :class:`netspace_fast.prep.PRepPacker` once. ``ptrs`` holds the
    sources' addresses, not the tensors: whoever keeps the tables keeps the tensors alive.
    """

    ptrs: torch.Tensor  # (num_nets * T,) int64: source addresses, network after network
    segs: torch.Tensor  # (nseg * SEG_INTS,) int64: kind, numel, offset, channels, src[5] per segment
    chunks: torch.Tensor  # (programs * 3,) int64: (network, segment or nseg for the padding, start) per program
    eps: torch.Tensor  # (nseg,) float32
    bad: torch.Tensor  # (1,) int32: the finite check's flag
    T: int  # tensors per network
    nseg: int
    per_net: int  # rows * width
    total: int  # values the plan writes per network
    programs: int
    shape: tuple[int, int, int]  # (num_nets, rows, width) of the output


def build_tables(tensors, plan, eps, num_nets, rows, width) -> PackTables:
    """Checks the arguments (the op's checks) and builds the kernel's tables on the tensors' device.

    The tensors must be contiguous (their storage is read in place, ``data_ptr()`` onwards) and
    ``num_nets`` >= 1."""
    T = check_pack_args(tensors, plan, eps, num_nets, rows, width)
    if num_nets < 1:
        raise ValueError(f"num_nets: expected >= 1 to build tables, got {num_nets}")
    for i, t in enumerate(tensors):
        if not t.is_contiguous():
            raise ValueError(f"tensors: tensor {i} (network {i // T}, index {i % T}) is not contiguous")
    return _tables(tensors, plan, eps, num_nets, rows, width, T)


def _tables(tensors, plan, eps, num_nets, rows, width, T) -> PackTables:
    """:func:`build_tables` on checked arguments (contiguous tensors, num_nets >= 1)."""
    device = tensors[0].device
    segs = segments(plan)
    seg_table, offset = [], 0
    for kind, numel, *idx in segs:
        channels = idx[3] if kind == FOLD_W else numel
        src = [idx[0]] if kind == 0 else (idx[:3] if kind == FOLD_W else idx[:5])
        src = list(src) + [-1] * (5 - len(src))
        seg_table += [kind, numel, offset, channels] + src
        offset += numel
    total, per_net = offset, rows * width
    # one network's programs: (segment, start) for every BLOCK of every segment, then of the padding;
    # every network has the same, so the map is that pattern repeated with the network index
    pattern: list[int] = []
    for s, n in enumerate([n for _, n, *_ in segs] + [per_net - total]):
        for start in range(0, n, BLOCK):
            pattern += [s, start]
    per_net_programs = len(pattern) // 2
    programs = per_net_programs * num_nets
    pat = torch.tensor(pattern, dtype=torch.int64).view(-1, 2)
    nets = torch.arange(num_nets, dtype=torch.int64).repeat_interleave(per_net_programs)
    chunk_map = torch.cat([nets[:, None], pat.repeat(num_nets, 1)], dim=1).reshape(-1)
    ptrs = torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64)
    return PackTables(
        ptrs=ptrs.to(device),
        segs=torch.tensor(seg_table or [0], dtype=torch.int64).to(device),
        chunks=(chunk_map if programs else torch.zeros(3, dtype=torch.int64)).to(device),
        eps=torch.tensor([float(e) for e in eps] or [0.0], dtype=torch.float32).to(device),
        bad=torch.zeros(1, dtype=torch.int32, device=device),
        T=T, nseg=len(segs), per_net=per_net, total=total, programs=programs, shape=(num_nets, rows, width))


def launch(tables: PackTables, out: torch.Tensor, check_finite: bool = False) -> torch.Tensor:
    """One launch of the kernel over every program of ``tables``, writing all of ``out`` (a
    contiguous float32 tensor of ``tables.shape`` on the tables' device: not checked here).

    No host work but the launch, except with ``check_finite`` (the flag is zeroed before and read
    after: a device -> host synchronization); a NaN or Inf written is then a ValueError."""
    if tables.programs == 0:
        return out
    if check_finite:
        tables.bad.zero_()
    _pack_preps_kernel[(tables.programs,)](
        tables.ptrs, tables.segs, tables.chunks, tables.eps, out, tables.T, tables.nseg, tables.per_net,
        tables.total, int(bool(check_finite)), tables.bad, SEG_INTS=SEG_INTS, BLOCK=BLOCK)
    if check_finite and int(tables.bad.item()):
        raise ValueError("non-finite value (NaN or Inf) in a parameter being packed")
    return out


def pack_preps_forward(tensors, plan, eps, num_nets, rows, width, check_finite):
    """The op's Triton kernel: builds the tables for this call (:func:`build_tables`) and runs one
    launch over every chunk (:func:`launch`)."""
    T = check_pack_args(tensors, plan, eps, num_nets, rows, width)
    device = tensors[0].device if num_nets else torch.device("cpu")
    out = torch.empty((num_nets, rows, width), dtype=torch.float32, device=device)
    if num_nets == 0:
        return out
    # contiguous copies of non-contiguous sources live until this returns (the launch is queued by then)
    tensors = [t if t.is_contiguous() else t.contiguous() for t in tensors]
    return launch(_tables(tensors, plan, eps, num_nets, rows, width, T), out, check_finite)


__all__ = ["BLOCK", "SEG_INTS", "PackTables", "build_tables", "launch", "pack_preps_forward"]
