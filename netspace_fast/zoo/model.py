"""Batched zoo training's model: B instances of one architecture as one module.

The B instances live in one module with every parameter stacked along a leading B dimension. The
activations of a convolution are either ONE grouped channels-last tensor (the layout of
:mod:`netspace_fast.engine.cpu`): the conv is one grouped convolution over all instances, and
BatchNorm over the B*C network-major channels IS per-instance BatchNorm (statistics per instance,
running statistics per instance); or B per-instance channels-last tensors, each conv and BatchNorm
run per instance. :mod:`netspace_fast.engine.layout` picks per layer from the work per instance. Adam and SGD
(momentum, weight decay) act elementwise, so one optimizer over the stacked parameters keeps
per-instance optimizer state. Each instance has its own initialization seed and its own data
order and augmentation draws, so training B instances together gives the instances each would
get alone (tested).
"""
from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from .. import archs
from ..archs import ArchSpec, SpecNet
from ..engine.executor import Weights, run
from ..engine.general import GeneralWeights, chunked_forward
from ..engine.gpu import gpu_program
from ..engine.graphs import GraphCache, enabled as graphs_enabled
from ..engine.program import compile_program
from ..ops.batched_layers_ref import apply_act

CL = torch.channels_last

__all__ = ["BatchedZooNet", "StackedLinear"]


def _key(name: str) -> str:
    return name.replace(".", "__")


class BatchedZooNet(nn.Module):
    """B instances (BN form) of one architecture, parameters stacked: forward (B, N, ...) -> (B, N, out)."""

    def __init__(self, models: list[SpecNet]) -> None:
        super().__init__()
        if not models:
            raise ValueError("models: expected at least one network")
        spec = models[0].spec
        for i, m in enumerate(models):
            if not isinstance(m, SpecNet) or m.spec != spec or m.batchnorm != models[0].batchnorm:
                raise ValueError(f"models: model {i} is not a {spec.name}/{spec.dataset} like model 0")
        self.spec: ArchSpec = spec
        self.B = len(models)
        self.graphs = GraphCache(max_graphs=4)  # the GPU program's CUDA graphs of this net's calls
        self.batchnorm = models[0].batchnorm
        self.eps: dict[str, float] = {}
        self.momentum: dict[str, float] = {}
        states = [m.state_dict() for m in models]
        for name in states[0]:
            stacked = torch.stack([s[name].detach().clone() for s in states])
            if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
                self.register_buffer(_key(name), stacked)
            else:
                self.register_parameter(_key(name), nn.Parameter(stacked))
        for layer in spec.layers:
            if self.batchnorm and layer.bn is not None:
                bn = models[0].get_submodule(layer.bn)
                self.eps[layer.bn], self.momentum[layer.bn] = bn.eps, bn.momentum

    def _t(self, name: str) -> torch.Tensor:
        return getattr(self, _key(name))

    def forward(self, x: torch.Tensor, *, grouped: bool = False) -> torch.Tensor:
        """x: (B, N, C, H, W), one batch per instance; or, with ``grouped=True``, the grouped input
        (N, B*C, H, W) itself, instance b's channels at b*C.. (what :func:`gather_grouped` writes
        straight from the dataset: no relayout here). Runs on the batched engine's executor
        (:mod:`netspace_fast.engine.executor`), weights from the stacked parameters."""
        B, (C, *rest) = self.B, self.spec.input_shape
        dims = ", ".join(map(str, rest))
        if grouped:
            if x.dim() != 2 + len(rest) or tuple(x.shape[1:]) != (B * C, *rest):
                raise ValueError(f"x: expected (N, B*C={B * C}, {dims}) with grouped=True, got {tuple(x.shape)}")
        elif x.dim() != 3 + len(rest) or x.shape[0] != B:
            raise ValueError(f"x: expected (B={B}, N, {C}, {dims}), got {tuple(x.shape)}")
        if not self.spec.fast:  # a user architecture outside the fused layer ops: the general engine
            return chunked_forward(self.spec, _GeneralStacked.of(self), x, B, shared=False, grouped_input=grouped)
        out, _ = run(compile_program(self.spec), x, B, _StackedWeights(self), grouped_input=grouped,
                     fused=gpu_program(x.device))
        return out

    def graphed(self, x: torch.Tensor, *, grouped: bool = False) -> torch.Tensor:
        """``self(x, grouped=grouped)``, on the GPU program replayed from CUDA graphs for shapes seen
        before (:mod:`netspace_fast.engine.graphs`: the stacked parameters are read and the
        BatchNorm statistics updated in place by the replays, the parameters' gradients handed to
        autograd as usual); elsewhere the plain call.

        The captured function holds the net by a weak reference: the net owns its graph cache, so a
        strong one would make a cycle (net -> cache -> capture -> function -> net) that keeps a
        finished job's net, and its graphs' memory pools, alive until the cycle collector runs."""
        if not graphs_enabled(x.device):  # the CPU program: a plain call
            return self(x, grouped=grouped)
        return self.graphs.call(("zoo", self.training, grouped), _WeakCall(self, grouped), (x,),
                                params=tuple(self.parameters()), buffers=tuple(self.buffers()))

    def _bias(self, layer) -> torch.Tensor | None:
        return self._t(f"{layer.name}.bias") if hasattr(self, _key(f"{layer.name}.bias")) else None

    def _bn(self, layer) -> str | None:
        """The layer's BatchNorm (None without); counts the step like nn.BatchNorm2d in training."""
        if not (self.batchnorm and layer.bn is not None):
            return None
        if self.training:
            self._t(f"{layer.bn}.num_batches_tracked").add_(1)
        return layer.bn

    def _conv(self, layer, h):
        """conv (+ per-instance BatchNorm) of all instances as ONE grouped call."""
        w, bias = self._t(f"{layer.name}.weight"), self._bias(layer)
        z = F.conv2d(h, w.reshape(-1, *w.shape[2:]), bias.reshape(-1) if bias is not None else None,
                     layer.stride, layer.padding, 1, self.B)
        bn = self._bn(layer)
        if bn is not None:
            z = F.batch_norm(z, self._t(f"{bn}.running_mean").view(-1), self._t(f"{bn}.running_var").view(-1),
                             self._t(f"{bn}.weight").reshape(-1), self._t(f"{bn}.bias").reshape(-1), self.training,
                             self.momentum[bn], self.eps[bn])
        return z

    def _instance_params(self, layer):
        """Per-instance views of a conv layer's weights, bias and BatchNorm tensors. unbind: ONE
        backward node stacks the B gradients (indexing would add B full-size buffers)."""
        w, bias, name = self._t(f"{layer.name}.weight"), self._bias(layer), self._bn(layer)
        bn = None if name is None else (self._t(f"{name}.running_mean"), self._t(f"{name}.running_var"),
                                        self._t(f"{name}.weight").unbind(0), self._t(f"{name}.bias").unbind(0), name)
        return w.unbind(0), (bias.unbind(0) if bias is not None else [None] * self.B), bn

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """One SpecNet state dict per instance (the BN form, as trained)."""
        names = [k.replace("__", ".") for k in self.state_dict()]
        full = self.state_dict()
        return [{n: full[_key(n)][b].detach().clone() for n in names} for b in range(self.B)]

    def preps(self, width: int = 10_000, height: int | None = None) -> torch.Tensor:
        """(B, H, W) PReps of the trained instances, BatchNorm folded by the fused pack kernel."""
        from ..prep import pack_preps

        with torch.no_grad():
            return pack_preps(self.instances(), width, height)

    def instances(self) -> list[SpecNet]:
        out = []
        for sd in self.state_dicts():
            m = archs.build(self.spec.name, self.spec.dataset, batchnorm=self.batchnorm)
            m.load_state_dict(sd)
            out.append(m.eval())
        return out


class _WeakCall:
    """``net(x, grouped=grouped)`` through a weak reference to ``net`` (see :meth:`BatchedZooNet.graphed`)."""

    __slots__ = ("net", "grouped")

    def __init__(self, net: BatchedZooNet, grouped: bool) -> None:
        self.net, self.grouped = weakref.ref(net), grouped

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net()
        if net is None:  # pragma: no cover - the net owns the cache that calls this
            raise RuntimeError("BatchedZooNet: called after the net was freed")
        return net(x, grouped=self.grouped)


class _StackedWeights(Weights):
    """The executor's weight source for a :class:`BatchedZooNet`: stacked parameters, per-instance
    BatchNorm (grouped: BatchNorm over the B*C network-major channels; split: per instance)."""

    def __init__(self, net: BatchedZooNet) -> None:
        self.net = net
        self.layers = net.spec.layers

    def conv(self, i, step, h, groups, with_bias=True):  # the bias comes before BatchNorm: applied here
        return self.net._conv(self.layers[i], h), None

    def conv_params(self, i, step):
        return self.net._instance_params(self.layers[i]), None

    def conv_one(self, i, step, params, b, h):
        layer = self.layers[i]
        ws, bs, bn = params
        z = F.conv2d(h, ws[b], bs[b], layer.stride, layer.padding)
        if bn is not None:  # running statistics updated in place through the per-instance views
            rm, rv, gs, be, name = bn
            net = self.net
            z = F.batch_norm(z, rm[b], rv[b], gs[b], be[b], net.training, net.momentum[name], net.eps[name])
        return z

    def linear(self, i, step, h, residual):
        layer = self.layers[i]
        z = StackedLinear.apply(h, self.net._t(f"{layer.name}.weight"), self.net._t(f"{layer.name}.bias"))
        if residual is not None:
            z = z + residual
        return apply_act(z, step[4], inplace=True), None


class _GeneralStacked(GeneralWeights):
    """The general engine's weight source for a :class:`BatchedZooNet`: stacked parameters and
    per-instance BatchNorm (over the B*C network-major channels, or B*F features); ``tensors`` maps
    state-dict names to the (chunk of) stacked tensors."""

    def __init__(self, net: BatchedZooNet, tensors: dict[str, torch.Tensor]) -> None:
        self.net, self.tensors = net, tensors

    @classmethod
    def of(cls, net: BatchedZooNet) -> "_GeneralStacked":
        for layer in net.spec.layers:
            net._bn(layer)  # counts this step once per BatchNorm, however many chunks run
        return cls(net, {k.replace("__", "."): v for k, v in
                         list(net.named_parameters(recurse=False)) + list(net.named_buffers(recurse=False))})

    def split(self, sizes):
        pieces = {k: v.split(sizes) for k, v in self.tensors.items()}
        return [_GeneralStacked(self.net, {k: p[i] for k, p in pieces.items()}) for i in range(len(sizes))]

    def params(self, layer):
        return self.tensors[f"{layer.name}.weight"], self.tensors.get(f"{layer.name}.bias")

    def norm(self, layer, z, grouped):
        net = self.net
        if not (net.batchnorm and layer.bn is not None):
            return z
        bn, t = layer.bn, self.tensors
        args = (t[f"{bn}.running_mean"].view(-1), t[f"{bn}.running_var"].view(-1), t[f"{bn}.weight"].reshape(-1),
                t[f"{bn}.bias"].reshape(-1), net.training, net.momentum[bn], net.eps[bn])
        if grouped:
            return F.batch_norm(z, *args)
        B, N, Fo = z.shape  # (B, N, F) -> (N, B*F): per-instance BatchNorm1d
        return F.batch_norm(z.transpose(0, 1).reshape(N, B * Fo), *args).view(N, B, Fo).transpose(0, 1)


class StackedLinear(torch.autograd.Function):
    """(B, N, in) @ (B, out, in)^T + (B, out): B linear layers, one GEMM each way.

    Autograd through ``baddbmm(bias, h, w.transpose(1, 2))`` computes the weight gradient as
    ``(h^T g)^T``, a transposed view that the gradient accumulation then copies into the
    parameter's layout; here it is computed as ``g^T h``, already (B, out, in)."""

    @staticmethod
    def forward(ctx, h, w, b):
        ctx.save_for_backward(h, w)
        return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))

    @staticmethod
    def backward(ctx, g):
        h, w = ctx.saved_tensors
        gh = torch.bmm(g, w) if ctx.needs_input_grad[0] else None
        gw = torch.bmm(g.transpose(1, 2), h) if ctx.needs_input_grad[1] else None
        gb = g.sum(1) if ctx.needs_input_grad[2] else None
        return gh, gw, gb

