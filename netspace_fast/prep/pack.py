"""PRep packing: B same-architecture networks -> a (B, H, W) PRep batch in one call of the fused
fold-and-pack op (netspace_fast.ops.pack_preps), BatchNorm folded on the fly (seed Sec. VI)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from ..archs import ArchSpec, SpecNet
from ..ops import backend as _backend
from ..ops.pack_preps import pack_preps as pack_preps_op
from ..ops.pack_preps_ref import COPY, FOLD_B, FOLD_W, check_pack_args
from . import user as _user
from .layout import PRepLayout, check_width

__all__ = ["EpsMismatch", "PRepPacker", "gather_pack_args", "models_list", "pack_preps"]




@dataclass(frozen=True)
class _PackPlan:
    plan: tuple[int, ...]
    num_values: int
    # per conv/linear layer: (module path, BN path or None, whether the module has a bias), in packing order
    layers: tuple[tuple[str, str | None, bool], ...]


@lru_cache(maxsize=None)
def _pack_plan(spec: ArchSpec, batchnorm: bool) -> _PackPlan:
    layers = []
    for layer in spec.pack_layers:  # packing order (spec.params), not execution order
        bn = layer.bn if batchnorm else None
        own_bias = layer.bias if bn is not None else layer.has_bias  # the module's bias (see SpecNet)
        layers.append((layer.name, bn, own_bias, layer.weight_shape))
    return _plan_of(tuple(layers))


@lru_cache(maxsize=256)
def _plan_of(layers: tuple[tuple[str, str | None, bool, tuple[int, ...]], ...]) -> _PackPlan:
    """The plan of conv/linear layers (path, BatchNorm path or None, own bias, weight shape) in
    packing order: a spec's (:func:`_pack_plan`) or a user module's (:func:`.user.user_plan`)."""
    plan: list[int] = []
    t = 0  # index of the next gathered tensor of one network
    num_values = 0
    for _, bn, own_bias, weight_shape in layers:
        w_numel = math.prod(weight_shape)
        c = weight_shape[0]
        if bn is None:  # tensors: weight[, bias]
            plan += [COPY, w_numel, t, 0, 0, 0, 0]
            if own_bias:
                plan += [COPY, c, t + 1, 0, 0, 0, 0]
            t += 1 + own_bias
        else:  # tensors: weight, gamma, beta, running_mean, running_var[, bias] (seed Sec. VI)
            bias = t + 5 if own_bias else -1
            plan += [FOLD_W, w_numel, t, t + 1, t + 4, c, 0, FOLD_B, c, bias, t + 1, t + 2, t + 3, t + 4]
            t += 5 + own_bias
        num_values += w_numel + (c if own_bias or bn is not None else 0)
    return _PackPlan(tuple(plan), num_values, tuple((name, bn, own_bias) for name, bn, own_bias, _ in layers))


def _gather(pp: _PackPlan, layer, norm, tensors: list, eps: list) -> None:
    """The plan's tensors and eps values in kernel order; ``layer`` / ``norm`` find a layer module and a
    BatchNorm module by name."""
    for name, bn_name, own_bias in pp.layers:
        p = layer(name)._parameters
        if bn_name is None:
            tensors.append(p["weight"])
            eps.append(0.0)
            if own_bias:
                tensors.append(p["bias"])
                eps.append(0.0)
        else:
            bn = norm(bn_name)
            bp, bb = bn._parameters, bn._buffers
            tensors += (p["weight"], bp["weight"], bp["bias"], bb["running_mean"], bb["running_var"])
            if own_bias:
                tensors.append(p["bias"])
            eps.append(bn.eps)
            eps.append(bn.eps)


def _gather_specnet(model: SpecNet, pp: _PackPlan, tensors: list, eps: list) -> None:
    # straight from the modules' _parameters/_buffers dicts: nn.Module.__getattr__ costs more than
    # the packing of a small layer, and this runs for every layer of every network
    bns = model._bn_modules  # None without BatchNorm (then no layer names one)
    _gather(pp, model._layer_modules.__getitem__, lambda name: bns[name], tensors, eps)


def _gather_paths(model: nn.Module, pp: _PackPlan, tensors: list, eps: list) -> None:
    """:func:`_gather_specnet` for a user's module: the layers and BatchNorms found by their paths."""
    _gather(pp, model.get_submodule, model.get_submodule, tensors, eps)


class EpsMismatch(ValueError):
    """Models of one architecture whose BatchNorm layers use different eps."""


def _arch_key(model: nn.Module, index: int, spec: ArchSpec | None = None, name: str = "models") -> tuple:
    """What must agree between the models of one packing call. ``("spec", spec, batchnorm)``: a
    SpecNet, or a user's module checked against ``spec=``; ``("user", layers)``: a user's module
    with normalization layers, folded by its traced plan (:func:`.user.user_plan`); ``("module",
    shapes)``: any other module, packed as its parameters."""
    if isinstance(model, SpecNet):
        if spec is not None and model.spec != spec:
            raise ValueError(f"{name}: element {index} is a SpecNet of {model.spec.name}/{model.spec.dataset}, "
                             f"not of spec {spec.name}/{spec.dataset}")
        return ("spec", model.spec, model.batchnorm)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name}: element {index} is a {type(model).__name__}, expected a torch.nn.Module")
    where = f"{name}: element {index}"
    if spec is not None:
        try:
            return ("spec", spec, _user.check_spec(model, spec))
        except _user.Refused as e:
            raise _user.refusal(where, model, str(e), spec_given=True) from None
    if _user.has_norm(model):
        try:
            return ("user", _user.user_plan(model).layers)
        except _user.Refused as e:
            raise _user.refusal(where, model, str(e)) from None
    return ("module", tuple((n, tuple(p.shape)) for n, p in model.named_parameters()))


def _describe(key: tuple) -> str:
    if key[0] == "spec":
        s = key[1]
        return f"{s.name}/{s.dataset}" + (" (with BatchNorm)" if key[2] else " (BN-free)")
    if key[0] == "user":
        folded = sum(bn is not None for _, bn, _, _ in key[1])
        return f"a module with {len(key[1])} conv/linear layers ({folded} with a BatchNorm folded)"
    return f"a module with {len(key[1])} parameters"


def _check_spec_arg(spec: object) -> ArchSpec | None:
    if spec is not None and not isinstance(spec, ArchSpec):
        raise TypeError(f"spec: expected an archs.ArchSpec or None, got {type(spec).__name__}")
    return spec


def models_list(models: object, name: str = "models") -> list[nn.Module]:
    if isinstance(models, nn.Module):
        return [models]
    if not isinstance(models, Sequence) or isinstance(models, (str, bytes)):
        raise TypeError(f"{name}: expected a torch.nn.Module or a list of them, got {type(models).__name__}")
    return list(models)


def gather_pack_args(models: list[nn.Module], spec: ArchSpec | None = None,
                     name: str = "models") -> tuple[tuple, list[torch.Tensor], list[int], list[float], int]:
    """Checks that all models share one architecture; returns (key, tensors, plan, eps, num_values).
    ``spec``: the spec user modules are packed by (see :func:`pack_preps`)."""
    key = _arch_key(models[0], 0, spec, name)
    for i, m in enumerate(models[1:], 1):
        k = _arch_key(m, i, spec, name)
        if k != key:
            raise ValueError(f"{name}: expected one architecture for all models, model 0 is {_describe(key)} "
                             f"but model {i} is {_describe(k)}")
    tensors: list[torch.Tensor] = []
    if key[0] in ("spec", "user"):
        pp = _pack_plan(key[1], key[2]) if key[0] == "spec" else _plan_of(key[1])
        eps: list[float] = []
        for m in models:
            if isinstance(m, SpecNet):
                _gather_specnet(m, pp, tensors, eps)
            else:
                _gather_paths(m, pp, tensors, eps)
        per_net = len(eps) // len(models)
        first = eps[:per_net]
        for i in range(1, len(models)):
            if eps[i * per_net:(i + 1) * per_net] != first:
                raise EpsMismatch(f"{name}: BatchNorm eps of model {i} differs from model 0's (one packing call "
                                  f"folds with one eps per layer)")
        return key, tensors, list(pp.plan), first, pp.num_values
    plan: list[int] = []
    for j, (_, shape) in enumerate(key[1]):
        plan += [COPY, math.prod(shape), j, 0, 0, 0, 0]
    for m in models:
        tensors += list(m.parameters())
    return key, tensors, plan, [0.0] * len(key[1]), sum(math.prod(s) for _, s in key[1])


def pack_preps(models: nn.Module | Sequence[nn.Module], width: int = 10_000, height: int | None = None, *,
               spec: ArchSpec | None = None, allow_nonfinite: bool = False,
               backend: str | None = None) -> torch.Tensor:
    """Pack B same-architecture networks into a (B, H, W) batch of PReps in one native call.

    A PRep holds the BN-free network: networks with BatchNorm are folded on the fly (seed Sec. VI)
    by the same kernel (it reads the conv weight and the BN statistics and writes the folded
    values), so the PRep of a network built by :func:`netspace_fast.archs.build` is that of its
    BN-free form (``archs.build(..., batchnorm=False)``), and the PReps of a user's own modules are
    what ``batched_forward(archs.spec_from_module(module, x), preps, x)`` computes the modules'
    eval-mode outputs with. Models of other kinds:

    - ``spec=`` (an :class:`~netspace_fast.archs.ArchSpec`): the models are that spec's network, in
      its BN form or its BN-free form (their parameters and buffers must be exactly those of
      ``archs.SpecNet(spec)``'s, by name and shape, else a ValueError); packed as the spec says, like
      the SpecNets they could be loaded into (the route for a module torch.fx cannot trace).
    - A user's module with BatchNorm (or another normalization layer), no ``spec``: its forward is
      traced with torch.fx (no example input needed; once per module structure, then cached) to
      find the conv/linear layer each BatchNorm follows, and folded by that plan, in registration
      (``module.parameters()``) order: the layout of ``spec_from_module``. A module that cannot be
      traced, or whose normalization layers cannot be folded (not a BatchNorm1d/2d right after a
      conv/linear layer whose output nothing else reads), or that has other parameters (LayerNorm,
      ...), is refused: a ValueError naming its type, the reason and what to do (pass ``spec=``).
    - A module without normalization layers: its parameters in ``named_parameters`` order.

    NaN or Inf in a packed value is refused unless ``allow_nonfinite=True``.

    The result is differentiable with respect to the models' parameters (and BN statistics that
    require grad), so it is not a leaf: ``preps.requires_grad_()`` leaves ``preps.grad`` None and
    sends gradients to the models instead. For gradients with respect to the PReps themselves, use
    ``preps = pack_preps(models).detach().requires_grad_()``.
    """
    models = models_list(models)
    if not models:
        raise ValueError("models: expected at least one module, got an empty list")
    width = check_width(width)
    key, tensors, plan, eps, num_values = gather_pack_args(models, _check_spec_arg(spec))
    rows = PRepLayout.from_shapes([("all", (num_values,))], width, height).height
    return pack_preps_op(tensors, plan, eps, len(models), rows, width, check_finite=not allow_nonfinite, backend=backend)




def _slot_of(model: nn.Module, tensor: torch.Tensor) -> tuple[dict, str] | None:
    """The (``_parameters`` or ``_buffers`` dict, key) of the module of ``model`` that holds ``tensor``."""
    for mod in model.modules():
        for table in (mod._parameters, mod._buffers):
            for key, value in table.items():
                if value is tensor:
                    return table, key
    return None


class PRepPacker:
    """A reusable plan that packs the same B networks again and again: ``packer()`` is
    :func:`pack_preps` without its per-call host work.

    ``PRepPacker(models, width, height, spec=..., backend=...)`` does once what every ``pack_preps``
    call does (``models`` and ``spec`` as there: a user's module with BatchNorm is folded by its
    traced plan or by ``spec=``): gathers the B x T source tensors, checks them (the checks of
    ``pack_preps``, with the messages of its Python backends), computes the plan, the BatchNorm
    eps and the height, and builds the kernel's metadata (the table of source addresses, the
    segment table, the program -> chunk map, eps) on the parameters' device. ``packer()`` /
    ``packer.pack(out=None, *, check_finite=False)`` then packs:

    - on CUDA tensors (and on CPU tensors under ``TRITON_INTERPRET=1`` with ``backend="triton"``,
      the GPU program rehearsed on the CPU) it is one launch of the Triton kernel on the prebuilt
      tables, nothing else; with ``out=`` (and no finite check) it allocates nothing and never
      synchronizes either, so a packing step can be captured in a CUDA graph (``torch.cuda.graph``;
      call it once before capturing: Triton compiles on the first launch) and replayed;
    - otherwise (CPU tensors: the C++ kernel; or an explicit ``backend="cuda"``/``"cpp"``/``"torch"``)
      it calls the op with the gathered arguments, saving the Python gathering of every call.

    ``backend``: None or "auto" picks the prebuilt-table Triton route on CUDA tensors (where Triton
    is available) and the op's automatic choice elsewhere (``NETSPACE_BACKEND`` is honoured there);
    "triton" demands the table route (a ValueError where it cannot run); "cuda", "cpp", "torch" run
    the op on that backend. :attr:`backend` tells what was chosen.

    ``out``: a contiguous float32 tensor of shape :attr:`shape` on the parameters' device, written
    in place and returned (checked: a ValueError for shape, device or contiguity, a TypeError for
    dtype). On the op route the op's result is copied into it (one more pass over the output: there
    ``out=`` is for a uniform API, not for speed).

    ``check_finite``: ``pack_preps`` refuses NaN/Inf by default (one call, one early error), the
    packer does not: the check reads a flag back from the device (``.item()``, a synchronization
    every call, and no CUDA-graph capture). Ask for it where wanted (``check_finite=True``: the
    same ValueError as ``pack_preps``), e.g. every N steps.

    Not differentiable: the plan reads the sources through detached aliases and packs under
    no_grad semantics, so the result never requires grad. :func:`pack_preps` is the differentiable
    path.

    Staleness contract. The plan holds the addresses of the storages it gathered, not the modules:

    - in-place updates of those storages are seen by the next call: optimizer steps, ``copy_``,
      ``load_state_dict`` (which copies into the existing tensors), ``with torch.no_grad(): p.mul_(2)``;
    - the packer keeps a detached alias of every tensor it read, so that memory stays allocated and
      is never read after being freed, whatever happens to the modules;
    - anything that gives a module's tensor new storage is NOT seen: a parameter or buffer replaced
      by a new object (``module.weight = nn.Parameter(...)``, ``load_state_dict(..., assign=True)``),
      ``p.data = ...``, ``p.set_(...)``, a module moved to another device or dtype (``.to()``,
      ``.cuda()``, ``.half()``: new ``.data`` for the same objects, or new objects). The packer
      would keep packing the old storage. Neither is a BatchNorm's ``eps`` changed (it is part of
      the plan). Call :meth:`refresh` after such a change (it re-gathers and rebuilds: the cost of
      building).

    Detection, as cheap as it can be: every call checks the first gathered tensor only (that its
    module still holds that object and that its ``data_ptr()`` is unchanged: a whole model moved,
    cast or reloaded with ``assign=True`` fails it) and raises a RuntimeError asking for
    :meth:`refresh`. A single replaced tensor other than the first is not detected per call;
    :meth:`is_stale` checks every tensor (identity and address; as costly as one ``pack_preps``
    gathering). A CUDA-graph replay runs no Python, so it checks nothing.

    Non-contiguous sources (e.g. ``channels_last`` convolution weights): on the table route they
    are refused when the plan is built (a ValueError): the kernel reads storage in place, and a
    contiguous copy made once would never see later updates; make them contiguous first
    (``model.to(memory_format=torch.contiguous_format)``) or use :func:`pack_preps`. On the op route
    the op reads them as they are at every call.

    The number of networks, their order and the architecture are fixed at construction (the
    models list is copied); :meth:`refresh` re-reads those same modules.
    """

    def __init__(self, models: nn.Module | Sequence[nn.Module], width: int = 10_000, height: int | None = None, *,
                 spec: ArchSpec | None = None, backend: str | None = None) -> None:
        models = models_list(models)
        if not models:
            raise ValueError("models: expected at least one module, got an empty list")
        self._models = models
        self._spec = _check_spec_arg(spec)
        self.width = check_width(width)
        self._height_arg = height
        self._backend_arg = backend
        self._build()

    # -- building ----------------------------------------------------------------------------

    def _build(self) -> None:
        """Gather, check and build; assigns nothing until everything succeeded (a failed
        :meth:`refresh` leaves the previous plan in place)."""
        models, width = self._models, self.width
        _, sources, plan, eps, num_values = gather_pack_args(models, self._spec)
        height = PRepLayout.from_shapes([("all", (num_values,))], width, self._height_arg).height
        num_nets = len(models)
        # the op's checks, in the op's order: one device, the backend (before dispatch), the kernels' checks
        devices = {t.device for t in sources}
        if len(devices) > 1:
            raise ValueError(f"tensors: expected every parameter on one device, got {sorted(map(str, devices))}")
        device = sources[0].device
        which = _backend.select("pack_preps", device, self._backend_arg)
        if self._backend_arg in (None, "auto") and device.type == "cuda" and _backend.triton_available():
            which = "triton"  # on CUDA the packer's own choice: the prebuilt tables
        eps = [float(e) for e in eps]
        T = check_pack_args(sources, plan, eps, num_nets, height, width)
        tensors = [t.detach() for t in sources]  # aliases: keep the storages alive, record no autograd
        tables = launch = None
        if which == "triton":
            for i, t in enumerate(tensors):
                if not t.is_contiguous():
                    raise ValueError(
                        f"tensors: tensor {i} (network {i // T}, index {i % T}, shape {tuple(t.shape)}, strides "
                        f"{t.stride()}) is not contiguous: the packer reads parameters in place, and a contiguous "
                        f"copy would not see later updates; make the model contiguous "
                        f"(model.to(memory_format=torch.contiguous_format)) or use pack_preps")
            from ..ops.pack_preps_triton import build_tables, launch  # imports triton: only on this route

            tables = build_tables(tensors, plan, eps, num_nets, height, width)
        self.height, self.num_nets, self.num_values = height, num_nets, num_values
        self.device, self.backend = device, which
        self._sources, self._tensors, self._tables, self._launch = sources, tensors, tables, launch
        self._ptrs = [t.data_ptr() for t in tensors]
        self._plan, self._eps = plan, eps
        self._first, self._first_ptr = sources[0], self._ptrs[0]
        self._first_slot = _slot_of(models[0], sources[0])
        self._first_where = (sources[0].device, sources[0].dtype)

    def refresh(self) -> "PRepPacker":
        """Re-gather the models' tensors and rebuild the plan (after a parameter was replaced, a
        module moved to another device, ...: see the class docstring). Returns the packer."""
        self._build()
        return self

    def is_stale(self) -> bool:
        """Whether any gathered tensor was replaced or got new storage, or a BatchNorm eps changed,
        since the plan was built (a full check: the gathering of one ``pack_preps`` call; for tests
        and debugging)."""
        try:
            _, sources, plan, eps, _ = gather_pack_args(self._models, self._spec)
        except (TypeError, ValueError):
            return True
        if plan != self._plan or [float(e) for e in eps] != self._eps or len(sources) != len(self._sources):
            return True
        return any(a is not b or a.data_ptr() != p for a, b, p in zip(sources, self._sources, self._ptrs))

    # -- packing -----------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int, int]:
        """(B, H, W) of the packed batch."""
        return (self.num_nets, self.height, self.width)

    def _check_out(self, out: object) -> torch.Tensor:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out: expected a torch.Tensor, got {type(out).__name__}")
        if tuple(out.shape) != self.shape:
            raise ValueError(f"out: expected shape {self.shape}, got {tuple(out.shape)}")
        if out.dtype != torch.float32:
            raise TypeError(f"out: expected float32, got {out.dtype}")
        if out.device != self.device:
            raise ValueError(f"out: expected a tensor on {self.device} (the parameters' device), got {out.device}")
        if not out.is_contiguous():
            raise ValueError(f"out: expected a contiguous tensor, got strides {out.stride()}")
        return out

    def pack(self, out: torch.Tensor | None = None, *, check_finite: bool = False) -> torch.Tensor:
        """The (B, H, W) float32 PRep batch of the models' current values (into ``out`` if given).
        Not differentiable; see the class docstring for ``out``, ``check_finite`` and staleness."""
        first, slot = self._first, self._first_slot
        if first.data_ptr() != self._first_ptr or (slot is not None and slot[0].get(slot[1]) is not first):
            now = slot[0].get(slot[1]) if slot is not None else first
            was, where = self._first_where, (getattr(now, "device", None), getattr(now, "dtype", None))
            raise RuntimeError(
                f"PRepPacker: the models' first tensor was replaced or has new storage since the plan was built "
                f"(was on {was[0]} as {was[1]}, now on {where[0]} as {where[1]}: module.to(), .half(), "
                f"p.data = ..., a new Parameter, ...); call packer.refresh() to re-gather")
        if out is not None:
            out = self._check_out(out)
        if self._tables is not None:
            if out is None:
                out = torch.empty(self.shape, dtype=torch.float32, device=self.device)
            else:  # written in place behind autograd's back: bump its version as an in-place op would
                torch.autograd.graph.increment_version(out)
            return self._launch(self._tables, out, check_finite)
        with torch.no_grad():
            if self.backend in ("cpp", "cuda"):  # the native op itself: its wrapper's device check was done once
                result = torch.ops.netspace_fast.pack_preps(self._tensors, self._plan, self._eps, self.num_nets,
                                                            self.height, self.width, check_finite)
            else:
                result = pack_preps_op(self._tensors, self._plan, self._eps, self.num_nets, self.height, self.width,
                                       check_finite=check_finite, backend=self.backend)
            if out is None:
                return result
            return out.copy_(result)

    def __call__(self, out: torch.Tensor | None = None, *, check_finite: bool = False) -> torch.Tensor:
        return self.pack(out, check_finite=check_finite)

    def __repr__(self) -> str:
        return (f"PRepPacker(num_nets={self.num_nets}, shape={self.shape}, device={self.device}, "
                f"backend={self.backend!r})")
