"""CUDA graphs of the GPU program's fixed-shape calls, and the same bookkeeping rehearsed on CPU.

Small networks are launch-bound on a GPU: a batched forward + backward of 8 ResNet8 is hundreds of
kernel launches of a few microseconds of work each. :class:`GraphCache` captures such a call, a
function of tensors ``fn(*args)`` returning one tensor (and reading ``params`` in place), as two
CUDA graphs, its forward and its backward, the first time a call signature is seen for the
:data:`CAPTURE_AFTER`-th time, and from then on replays them: the arguments are copied into the
graph's static inputs, the forward graph replays, and (under autograd) the backward graph replays
when the gradient arrives. Used for :func:`netspace_fast.batched_forward` (NetSpace training and
evaluation, SIREN fitting, the explore commands: one process-wide cache, :data:`ENGINE`) and for
zoo training (one cache per :class:`netspace_fast.zoo.model.BatchedZooNet`, its parameters and
BatchNorm statistics read and updated in place by the replays).

A call signature is the caller's key (what ``fn`` computes: the architecture, shared input or not)
plus every argument's shape, dtype, device and ``requires_grad``, the parameters' ``requires_grad``,
the grad mode and the settings that change the program (layout, backend, TF32). A new shape
captures anew (the last batch of an epoch is a shape of its own); at most ``max_graphs`` captures
are kept per cache, the least recently used evicted. A shape seen once runs eagerly and costs no
capture.

Semantics kept from eager execution:

* outputs are fresh tensors (copies of the graph's static output: a caller may keep them across
  calls), and so are the gradients handed to autograd (a parameter's ``.grad`` never aliases graph
  memory);
* a forward whose backward comes after another forward of the same signature (two calls, then
  their backwards) gets a correct gradient: its backward replays the forward again from its own
  inputs first (counted as ``recomputed`` in :func:`GraphCache.stats`);
* the warm-up passes that precede a capture (cuDNN and Triton choose and compile kernels there,
  the conv layout rule measures new shapes there, so nothing is timed or compiled inside a capture)
  leave the ``buffers`` (BatchNorm statistics) as they found them; parameters are only read;
* a capture that fails (an operation that cannot be captured) warns once and that signature runs
  eagerly from then on (it is remembered apart from the captures: it takes no place among the
  ``max_graphs`` and is never retried).

Devices. Capture and both replays run under the arguments' device (``torch.cuda.device``): a call
on ``cuda:1`` while another device is current captures its kernels on ``cuda:1``'s stream (without
the guard the graph would be empty and every replay would return the capture-time output).

Memory. A forward + backward capture keeps its activations in its own pool (its backward reads
them). Calls without gradient keep nothing between replays: their captures share ONE pool per
device, so their memory is the largest of them, not their sum. This is safe because a replay's
output is cloned before anything else runs: another capture of the pool may reuse the memory of
this one's intermediates (and so overwrite its static output when replayed), never its static
inputs, which live outside the pool.

Graphs are used for work on CUDA tensors when ``NETSPACE_CUDA_GRAPHS`` is on (the default), never
inside ``torch.compile`` tracing or another capture. In the rehearsal (``NETSPACE_GPU_REHEARSAL=1``,
CPU tensors) the same class does the same bookkeeping (static inputs and outputs, signatures,
generations, eviction, buffer restore, gradients copied out) with "capture" and "replay" being
eager runs of ``fn`` whose results are copied into the static tensors, so the code around the
graphs is tested on CPU; only ``torch.cuda.graph`` itself is not.
"""

from __future__ import annotations

import collections
import contextlib
import warnings
from collections.abc import Callable, Sequence

import torch

from .. import settings

__all__ = ["CAPTURE_AFTER", "ENGINE", "GraphCache", "WARMUP", "enabled", "on_device"]

#: a signature is captured when it is seen for this many times (once: eager, no capture cost)
CAPTURE_AFTER = 2
#: eager forward + backward passes before a CUDA capture (cuDNN and Triton pick and compile kernels)
WARMUP = 3


def enabled(device: torch.device) -> bool:
    """Whether calls on ``device`` go through graphs now (module docstring)."""
    if not settings.cuda_graphs() or torch.compiler.is_compiling():
        return False
    if device.type == "cuda":
        return not torch.cuda.is_current_stream_capturing()
    return device.type == "cpu" and settings.gpu_rehearsal()


def on_device(device: torch.device):
    """A context where ``device`` is the current CUDA device (``torch.cuda.device``); nothing for
    other devices (the rehearsal's CPU tensors)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def _static_like(a: torch.Tensor) -> torch.Tensor:
    s = torch.empty_like(a)
    s.copy_(a.detach())
    return s.requires_grad_(a.requires_grad)


class _Captured:
    """One signature's static tensors and its forward (and backward) graph."""

    def __init__(self, fn: Callable[..., torch.Tensor], args: Sequence[torch.Tensor], params: Sequence[torch.Tensor],
                 buffers: Sequence[torch.Tensor], pools: dict | None = None, device: torch.device | None = None
                 ) -> None:
        self.fn = fn
        self.device = args[0].device if device is None else device  # where the arguments live
        self.cuda = self.device.type == "cuda"
        self.n_args = len(args)
        self.static_args = [_static_like(a) for a in args]
        self.params = list(params)
        inputs = (*self.static_args, *self.params)
        self.grad = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
        self.diff = [t for t in inputs if t.requires_grad] if self.grad else []
        self.gen = 0
        self.live: torch.Tensor | None = None  # the rehearsal's latest forward, with its autograd graph
        kept = [b.detach().clone() for b in buffers]
        try:
            with on_device(self.device):
                if self.cuda:
                    self._capture_cuda(pools)
                else:
                    self._capture_rehearsed()
        finally:
            with torch.no_grad():
                for b, k in zip(buffers, kept):
                    b.copy_(k)

    def _grads(self, out: torch.Tensor, gout: torch.Tensor):
        return torch.autograd.grad(out, self.diff, gout, allow_unused=True)

    def _capture_cuda(self, pools: dict | None) -> None:
        """Warm-up on a side stream, then the capture (the caller made ``self.device`` current).
        Without gradient the forward goes into the device's shared pool of ``pools`` (module
        docstring), else into a private pool that its backward shares."""
        pool = None
        if not self.grad and pools is not None:
            pool = pools.get(self.device)
            if pool is None:
                pool = pools[self.device] = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP):
                out = self.fn(*self.static_args)
                if self.grad:
                    self._grads(out, torch.ones_like(out))
                del out
        torch.cuda.current_stream().wait_stream(side)
        self.fwd = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.fwd, pool=pool):
            live = self.fn(*self.static_args)
        self.static_out = live.detach()
        if self.grad:
            self.static_gout = torch.empty_like(live)
            self.bwd = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.bwd, pool=self.fwd.pool()):
                self.static_grads = list(self._grads(live, self.static_gout))

    def _capture_rehearsed(self) -> None:
        out = self.fn(*self.static_args)  # the warm-up pass
        if self.grad:
            self._grads(out, torch.ones_like(out))
        live = self.fn(*self.static_args)  # the "capture": it makes the static output
        self.static_out = live.detach().clone()
        if self.grad:
            self.static_gout = torch.zeros_like(live)
            self.static_grads = [g.detach().clone() if g is not None else None
                                 for g in self._grads(live, self.static_gout)]

    def forward(self, args: Sequence[torch.Tensor]) -> int:
        """Copies ``args`` into the static inputs and replays the forward; returns its generation."""
        with torch.no_grad():
            for s, a in zip(self.static_args, args):
                s.copy_(a)
        if self.cuda:
            with on_device(self.device):
                self.fwd.replay()
        else:
            with torch.set_grad_enabled(self.grad):  # autograd.Function.forward runs without grad mode
                live = self.fn(*self.static_args)
            with torch.no_grad():
                self.static_out.copy_(live)
            self.live = live if self.grad else None
        self.gen += 1
        return self.gen

    def backward(self, gout: torch.Tensor) -> list[torch.Tensor | None]:
        """Replays the backward of the latest forward with ``gout``; fresh gradient tensors of
        :attr:`diff` (None where ``fn`` does not depend on one)."""
        with torch.no_grad():
            self.static_gout.copy_(gout)
        if self.cuda:
            with on_device(self.device):
                self.bwd.replay()
        else:
            grads = self._grads(self.live, self.static_gout)
            self.live = None
            with torch.no_grad():
                for s, g in zip(self.static_grads, grads):
                    if s is not None:
                        s.copy_(g) if g is not None else s.zero_()
        return [g.clone() if g is not None else None for g in self.static_grads]


class _Replay(torch.autograd.Function):
    """A captured call as one autograd node over (args, params)."""

    @staticmethod
    def forward(ctx, cap: _Captured, stats: collections.Counter, *tensors):
        args = tensors[:cap.n_args]
        ctx.cap, ctx.stats = cap, stats
        ctx.gen = cap.forward(args)
        ctx.args = [a.detach() for a in args]  # for a second replay when another call overwrote the graph's activations
        return cap.static_out.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gout):
        cap = ctx.cap
        if ctx.gen != cap.gen:
            ctx.stats["recomputed"] += 1
            cap.forward(ctx.args)
        grads = iter(cap.backward(gout))
        out = [next(grads) if t.requires_grad else None for t in (*cap.static_args, *cap.params)]
        return (None, None, *out)


class GraphCache:
    """Captured calls by signature (module docstring), at most ``max_graphs`` of them."""

    def __init__(self, max_graphs: int = 8) -> None:
        if isinstance(max_graphs, bool) or not isinstance(max_graphs, int) or max_graphs < 1:
            raise ValueError(f"max_graphs: expected a positive int, got {max_graphs!r}")
        self.max_graphs = max_graphs
        self._graphs: collections.OrderedDict = collections.OrderedDict()
        self._failed: set = set()  # signatures whose capture failed: eager from then on, never evicted
        self._pools: dict = {}  # device -> the memory pool of the no-grad captures (module docstring)
        self._seen: collections.Counter = collections.Counter()
        self._stats: collections.Counter = collections.Counter()

    def stats(self) -> dict[str, int]:
        """Counts since creation (or :meth:`clear`): ``captured``, ``replayed``, ``eager`` (calls run
        without a graph), ``recomputed`` (backwards that replayed their forward again), ``evicted``,
        ``failed`` (captures that failed); ``graphs``: the captures kept now."""
        out = {k: self._stats[k] for k in ("captured", "replayed", "eager", "recomputed", "evicted", "failed")}
        out["graphs"] = len(self._graphs)
        return out

    def clear(self) -> None:
        """Drops every capture (their memory goes back to the allocator), the failed signatures and
        the counts."""
        self._graphs.clear()
        self._failed.clear()
        self._pools.clear()
        self._seen.clear()
        self._stats.clear()

    def _signature(self, key, args, params) -> tuple:
        return (key, tuple((tuple(a.shape), a.dtype, a.device, a.requires_grad) for a in args),
                tuple(p.requires_grad for p in params), torch.is_grad_enabled(), settings.conv_layout(),
                settings.backend(), settings.tf32(), torch.backends.cudnn.allow_tf32)

    def call(self, key, fn: Callable[..., torch.Tensor], args: Sequence[torch.Tensor], params: Sequence[torch.Tensor] = (),
             buffers: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """``fn(*args)``, from a graph where one is captured (module docstring). ``key``: hashable,
        what ``fn`` computes besides its arguments; ``params``: tensors ``fn`` reads that gradients
        flow to (a module's parameters); ``buffers``: tensors ``fn`` updates in place (BatchNorm
        statistics), restored after the warm-up passes."""
        args = tuple(args)
        if not args or not enabled(args[0].device):
            return fn(*args)
        settings.apply_cudnn_benchmark()  # the one rule of the GPU program, its rehearsal included
        sig = self._signature(key, args, params)
        if sig in self._failed:
            self._stats["eager"] += 1
            return fn(*args)
        cap = self._graphs.get(sig)
        if cap is None:
            self._seen[sig] += 1
            if self._seen[sig] < CAPTURE_AFTER:
                self._stats["eager"] += 1
                return fn(*args)
            try:
                cap = _Captured(fn, args, params, buffers, self._pools, args[0].device)
            except Exception as e:  # an operation that cannot be captured: this signature stays eager
                self._failed.add(sig)
                self._seen.pop(sig, None)
                self._stats["failed"] += 1
                warnings.warn(f"netspace_fast: capturing a CUDA graph of {key!r} failed ({type(e).__name__}: {e}); "
                              f"these calls run without a graph", RuntimeWarning, stacklevel=2)
                return fn(*args)
            self._graphs[sig] = cap
            self._stats["captured"] += 1
            while len(self._graphs) > self.max_graphs:
                old, _ = self._graphs.popitem(last=False)
                self._seen[old] = 0  # an evicted signature must be seen again as often before it is recaptured
                self._stats["evicted"] += 1
        else:
            self._graphs.move_to_end(sig)
        self._stats["replayed"] += 1
        if cap.grad:
            return _Replay.apply(cap, self._stats, *args, *cap.params)
        cap.forward(args)
        return cap.static_out.clone()  # at once: another no-grad capture of the pool may overwrite it


#: the process-wide cache of :func:`netspace_fast.batched_forward`'s GPU program (a Multi space's step
#: has a teacher and a student call per architecture, its validation other shapes: room for all)
ENGINE = GraphCache(max_graphs=32)
