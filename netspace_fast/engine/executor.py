"""The one forward executor of the batched engine: B networks of one architecture, every layer run
for all networks at once, in one of two layouts of their activations (:mod:`.layout`):

* grouped: ONE (N, B*C, H, W) channels-last tensor, network-major channels; a conv is ONE grouped
  call (a shared input: ONE ordinary conv with the B networks' filters stacked);
* split: B (N, C, H, W) channels-last tensors; a maximal run of per-network convs (and the pools
  between them) executes network by network, so each network's activations flow from layer to
  layer while still in cache (ResNet8 forward, B=8, N=128: 98 vs 126 ms layer by layer).

Activations are converted once where the layout changes. Linear layers work on (B, N, F).

Where the weights come from is a :class:`Weights` object: PReps (``batched_forward`` on CPU,
:mod:`.cpu`, whose own backward writes every gradient into one (B, P) PRep gradient) or the zoo
trainer's stacked trainable parameters with per-instance BatchNorm (:mod:`netspace_fast.zoo.model`,
differentiated by autograd). With ``record=True`` the executor keeps what :mod:`.cpu`'s backward
needs; otherwise autograd keeps what it needs, and the executor drops each value (and its converted
forms) after the block that reads it last: without gradient (evaluation, a teacher's logits, a
no-grad CUDA graph's pool) the peak is a few layers' activations instead of the whole network's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops.batched_layers_ref import ACT_NONE, ACT_SIN, apply_act
from ..ops.epilogue import conv_epilogue
from .layout import Block, flatten, plan_blocks, to_grouped, to_split

CL = torch.channels_last

__all__ = ["Weights", "fused_backend", "plan", "run"]


def fused_backend(device: torch.device) -> str | None:
    """How the GPU program calls its fused kernels: on CUDA tensors through the ops' dispatch (their
    CUDA kernels are the Triton ones); on CPU tensors (the rehearsal) the Triton kernels directly,
    interpreted."""
    return "triton" if device.type == "cpu" else None


class Weights:
    """Where a network's layer weights come from (subclassed by the PRep and the zoo sources).

    ``i`` is the step's index in the program, ``step`` the step itself (:mod:`.program`)."""

    def conv(self, i: int, step: tuple, h: torch.Tensor, groups: int, with_bias: bool = True
             ) -> tuple[torch.Tensor, object]:
        """All networks' conv (+ bias, + whatever normalization the source has) of the grouped
        input ``h`` as one call with ``groups`` groups (1: a shared input); returns (z, the weight
        tensor used, for a recorded backward). ``with_bias=False``: the bias is left to the fused
        epilogue, which adds :meth:`conv_bias` (a source that must apply its bias itself, before
        a normalization, ignores it and its ``conv_bias`` is None)."""
        raise NotImplementedError

    def conv_bias(self, i: int, step: tuple) -> torch.Tensor | None:
        """The (B*cout,) bias that ``conv(..., with_bias=False)`` left out, or None."""
        return None

    def conv_params(self, i: int, step: tuple) -> tuple[object, object]:
        """Per-network parameters of conv step ``i`` for a split block; returns (params for
        :meth:`conv_one`, the per-network weights to record)."""
        raise NotImplementedError

    def conv_one(self, i: int, step: tuple, params: object, b: int, h: torch.Tensor) -> torch.Tensor:
        """Network b's conv (+ bias, + normalization) of its (N, C, H, W) input."""
        raise NotImplementedError

    def linear(self, i: int, step: tuple, h: torch.Tensor, residual: torch.Tensor | None):
        """All networks' linear layer on (B, N, F) (or a shared (N, F)), residual and activation
        included; returns (y, the pre-activation to record or None)."""
        raise NotImplementedError


def plan(program, x0: torch.Tensor, n: int, B: int, *, shared: bool = False,
         grouped_input: bool = False) -> list:
    """The program cut into blocks (see :func:`netspace_fast.engine.layout.plan_blocks`); ``x0`` the
    image input as :func:`run` takes it (any memory layout; only its shape, dtype and device are
    read), ``n`` images per network, ``B`` networks."""
    if x0.dim() < 4:  # no image input, no convolutions
        return [Block(i, i + 1, False) for i in range(len(program))]
    c0 = x0.shape[1] // max(B, 1) if grouped_input else x0.shape[-3]  # channels per network
    geoms = [(kind, src, dst, geom[2], geom[4], geom[5], geom[6]) if kind == "conv" else
             (kind, src, dst, None, geom[0], geom[1], 0) if kind == "avgpool" else (kind, src, dst, None, 0, 1, 0)
             for kind, src, dst, residual, act, geom in program]
    return plan_blocks(geoms, n, tuple(x0.shape[-2:]), x0.device, B, c0, x0.dtype, shared)


def run(program, x: torch.Tensor, B: int, weights: Weights, *, shared: bool = False, grouped_input: bool = False,
        record: bool = False, fused: bool = False):
    """Runs ``program`` for B networks; returns (output (B, N, out), state) where state is
    ``(saved, blocks)`` with ``record`` (what :func:`netspace_fast.engine.cpu.grouped_backward` reads),
    else None.

    ``fused``: the GPU program's epilogue (:mod:`netspace_fast.engine.gpu`): a grouped conv runs
    without its bias, then ONE fused kernel adds bias and residual and applies the activation
    (:func:`netspace_fast.ops.epilogue.conv_epilogue`) instead of up to three passes.

    ``x``: (N, ...) shared by every network (``shared``), (B, N, ...) one batch per network, or with
    ``grouped_input`` the grouped (N, B*C, H, W) input itself (what ``gather_grouped`` writes)."""
    values: dict[int, object] = {0: x}
    cache: dict[tuple[int, str], object] = {}
    saved: list | None = [None] * len(program) if record else None
    n = x.shape[0] if (grouped_input or shared) else x.shape[1]  # images per network
    blocks = plan(program, x, n, B, shared=shared, grouped_input=grouped_input)
    dead = None if record else last_uses(program, blocks)  # block -> the values it is the last to need

    def value(v: int, form: str):
        """Activation v in ``form`` ("grouped" or "split"), converted once. The shared input is one
        tensor in both forms (every network reads it)."""
        if v == 0 and shared:
            xs = cache.setdefault((0, "cl"), x.contiguous(memory_format=CL))
            return [xs] * B if form == "split" else xs
        if (v, form) not in cache:
            h = values[v]
            if v == 0 and grouped_input:
                h = x.contiguous(memory_format=CL)
            elif v == 0 and x.dim() == 5:  # per-network input (B, N, C, H, W)
                Bx, N, C, H, W = x.shape
                h = ([x[b].contiguous(memory_format=CL) for b in range(B)] if form == "split" else
                     x.transpose(0, 1).reshape(N, B * C, H, W).contiguous(memory_format=CL))
            cache[(v, form)] = to_split(h, B) if form == "split" else to_grouped(h)
        return cache[(v, form)]

    for k, (start, stop, split, nchw) in enumerate(blocks):
        if split:
            _split_block(program, start, stop, values, value, weights, saved, B,
                         None if dead is None else dead[k])
        else:
            _block(program, start, values, value, weights, saved, B, shared, grouped_input, record, fused, nchw)
        if dead is not None:
            for v in dead[k]:
                values.pop(v, None)
                for form in ("grouped", "split", "cl"):
                    cache.pop((v, form), None)
    out = values[program[-1][2]]
    return out, ((saved, blocks) if record else None)


def last_uses(program, blocks) -> list[set[int]]:
    """For each block, the values that no later block reads (made or last read there), the
    network's output excepted: what :func:`run` drops after the block when it does not record."""
    last: dict[int, int] = {}
    for k, (start, stop, *_) in enumerate(blocks):
        for kind, src, dst, residual, act, geom in program[start:stop]:
            for v in (src, dst, residual):
                if v is not None:
                    last[v] = k
    last.pop(program[-1][2], None)
    dead: list[set[int]] = [set() for _ in blocks]
    for v, k in last.items():
        dead[k].add(v)
    return dead


def _block(program, start, values, value, weights: Weights, saved, B, shared, grouped_input, record, fused,
           nchw=False) -> None:
    """Step ``start``, for all networks at once (``nchw``: a conv in NCHW, its output back in
    channels-last)."""
    kind, src, dst, residual, act, geom = program[start]
    if kind == "conv":
        groups = 1 if (src == 0 and shared) else B
        hin = value(src, "grouped")
        if nchw:
            hin = hin.contiguous()
        if fused:
            z, w = weights.conv(start, program[start], hin, groups, with_bias=False)
            z = z.contiguous(memory_format=CL)
            res = value(residual, "grouped") if residual is not None else None
            bias = weights.conv_bias(start, program[start])
            if bias is None and res is None and act == ACT_NONE:  # nothing to do after the conv
                y, pre = z, None
            else:
                y, pre = conv_epilogue(z, bias, res, act, backend=fused_backend(z.device))
                pre = pre if (record and act == ACT_SIN) else None
        else:
            z, w = weights.conv(start, program[start], hin, groups)
            z = z.contiguous(memory_format=CL)
            if residual is not None:
                z.add_(value(residual, "grouped"))
            pre = z.clone() if (record and act == ACT_SIN) else None
            y = apply_act(z, act, inplace=True)
        if record:
            saved[start] = (hin, w, y, pre, groups)
    elif kind == "linear":
        h = values[src]
        y, z = weights.linear(start, program[start], h, values[residual] if residual is not None else None)
        if record:
            saved[start] = (h, None, y, z, None)
    elif kind == "avgpool":
        hin = value(src, "grouped")
        y = F.avg_pool2d(hin, geom[0], geom[1])
        if residual is not None:
            y.add_(value(residual, "grouped"))
        y = apply_act(y, act, inplace=True)
        if record:
            saved[start] = (hin, None, None, None, None)
    else:  # flatten: -> (B, N, C*H*W) in each network's own (c, h, w) order
        h = values[src]
        if src == 0 and grouped_input:
            h = value(0, "grouped")
        y = flatten(h, B) if (isinstance(h, list) or h.dim() == 4) else h
        if record:
            saved[start] = (h, None, None, None, None)
    values[dst] = y


def _split_block(program, start, stop, values, value, weights: Weights, saved, B, dead=None) -> None:
    """Steps start..stop-1 (per-network convs and pools), network by network. ``dead`` (when not
    recording): the values no later block reads; those made inside the block are dropped, network
    by network, after the step that reads them last."""
    entries = program[start:stop]
    inside = {e[2] for e in entries}
    drop: dict[int, list[int]] = {}  # step -> the block's own values read for the last time there
    if dead is not None:
        last = {}
        for i, e in enumerate(entries, start):
            for v in (e[1], e[2], e[3]):
                if v in inside and v in dead:
                    last[v] = i
        for v, i in last.items():
            drop.setdefault(i, []).append(v)
    outside = {v: value(v, "split") for e in entries for v in (e[1], e[3]) if v is not None and v not in inside}
    out = {e[2]: [None] * B for e in entries}
    record = saved is not None
    recs = []
    for i, e in enumerate(entries, start):
        if e[0] == "conv":
            prm, ws = weights.conv_params(i, e)
            recs.append((prm, ws, [None] * B, [None] * B, [None] * B if (record and e[4] == ACT_SIN) else None))
        else:
            recs.append((None, None, [None] * B, [None] * B if record else None, None))
    for b in range(B):
        for i, ((kind, src, dst, residual, act, geom), (prm, ws, hs, ys, pres)) in enumerate(zip(entries, recs), start):
            h = out[src][b] if src in inside else outside[src][b]
            if record:
                hs[b] = h
            if kind == "conv":
                z = weights.conv_one(i, entries[i - start], prm, b, h)
            else:
                z = F.avg_pool2d(h, geom[0], geom[1])
            if residual is not None:
                z.add_(out[residual][b] if residual in inside else outside[residual][b])
            if pres is not None:
                pres[b] = z.clone()
            y = apply_act(z, act, inplace=True)
            if kind == "conv" and record:
                ys[b] = y
            out[dst][b] = y
            for v in drop.get(i, ()):
                out[v][b] = None
    if record:
        for i, (prm, ws, hs, ys, pres) in enumerate(recs, start):
            saved[i] = (hs, ws, ys if program[i][0] == "conv" else None, pres, "split")
    values.update(out)
