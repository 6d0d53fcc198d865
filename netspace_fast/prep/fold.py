"""BatchNorm folding (seed Sec. VI, Eq. 1-7): BN-trained networks -> BN-free networks computing the
same function as the BN network in eval mode.

A list of models is folded by one native `pack_preps` call per architecture (every BN layer of
every model in one kernel), into one flat (B, P) buffer; the BN-free modules are then instantiated
around views of that buffer by cloning a parameter-less template, so no parameter initialization
runs and module construction stays cheap. A user's own module (not a SpecNet) is folded by the plan
:mod:`.user` traces (or by ``spec=``), into a copy of itself or the spec's BN-free SpecNet.
"""

from __future__ import annotations

import copy
import gc
import math
from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from ..archs import ArchSpec, SpecNet
from ..ops.pack_preps import pack_preps as pack_preps_op
from .layout import PRepLayout, split_views
from .pack import EpsMismatch, _arch_key, _check_spec_arg, gather_pack_args, models_list
from .user import plan_shapes, refusal, user_plan

__all__ = ["fold_bn"]


@lru_cache(maxsize=None)
def _flat_layout(spec) -> PRepLayout:
    """The BN-free entries in one row of exactly P values: the fold buffer."""
    return PRepLayout(PRepLayout.for_spec(spec, 8).entries, 1, spec.num_params, spec)


@lru_cache(maxsize=None)
def _recipe(spec):
    """How to clone a parameter-less BN-free template of ``spec`` quickly (no init, no __setattr__).

    One entry per module in preorder: (class, template __dict__, keys of its own dict/set
    containers, children as (name, entry index), parameters as (name, full name)).
    """
    with torch.device("meta"):
        template = SpecNet(spec, batchnorm=False)
    mods = list(template.named_modules())
    index = {id(m): i for i, (_, m) in enumerate(mods)}
    entries = []
    for path, m in mods:
        d = m.__dict__
        containers = tuple(k for k, v in d.items()
                           if isinstance(v, (dict, set)) and k not in ("_parameters", "_modules"))
        children = tuple((name, index[id(c)]) for name, c in m._modules.items())
        prefix = f"{path}." if path else ""
        # (a parameter registered as None, a layer without bias, stays None)
        params = tuple((name, prefix + name if p is not None else None) for name, p in m._parameters.items())
        entries.append((type(m), d, containers, children, params))
    layers = tuple((name, index[id(mod)]) for name, mod in template._layer_modules.items())
    return tuple(entries), layers


def _instantiate(spec, params: dict[str, torch.Tensor], training: bool) -> SpecNet:
    entries, layers = _recipe(spec)
    news = [object.__new__(cls) for cls, *_ in entries]
    make = torch.Tensor._make_subclass  # what nn.Parameter(t) does, without its Python overhead
    for new, (_, d0, containers, children, names) in zip(news, entries):
        d = d0.copy()
        for k in containers:
            d[k] = d0[k].copy()
        d["_modules"] = {name: news[j] for name, j in children}
        d["_parameters"] = {name: make(nn.Parameter, params[full], True) if full is not None else None
                            for name, full in names}
        d["training"] = training
        new.__dict__ = d
    root = news[0]
    root._layer_modules = {name: news[j] for name, j in layers}
    root._bn_modules = None
    return root


def _eps_of(model: nn.Module) -> tuple:
    if isinstance(model, SpecNet):
        return tuple(b.eps for b in model._bn_modules.values())
    return tuple(float(m.eps) for m in model.modules() if isinstance(m, _NormBase))


def _fold_copy(model: nn.Module, layers, params: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of a user's ``model`` with every BatchNorm of ``layers`` replaced by ``nn.Identity``
    and the layers' weights and biases by the folded ``params`` (views, wrapped as Parameters)."""
    new = copy.deepcopy(model)
    make = torch.Tensor._make_subclass
    for name, bn, own_bias, _ in layers:
        slots = new.get_submodule(name)._parameters
        slots["weight"] = make(nn.Parameter, params[f"{name}.weight"], True)
        if own_bias or bn is not None:
            slots["bias"] = make(nn.Parameter, params[f"{name}.bias"], True)  # (a None slot keeps its place)
        if bn is not None:
            parent, _, leaf = bn.rpartition(".")
            (new.get_submodule(parent) if parent else new)._modules[leaf] = nn.Identity()
    return new


def fold_bn(model_or_list: nn.Module | Sequence[nn.Module], *, spec: ArchSpec | None = None,
            backend: str | None = None):
    """BN-free module(s) computing the same function as the given BN model(s) in eval mode.

    Accepts one model (returns one module) or a list (returns a list, in order). Models of one
    architecture are folded together by one native call. The returned modules' parameters are
    views into one buffer per architecture; their ``named_parameters`` are the PRep layout
    (``pack_preps`` of a folded module gives the PRep of the model it came from). By kind:

    - a network built by :func:`netspace_fast.archs.build` (a ``SpecNet``): the BN-free
      ``SpecNet`` of its spec (a BN-free one comes back as a copy);
    - ``spec=`` given (an :class:`~netspace_fast.archs.ArchSpec`): every model must be that spec's
      network, in its BN or its BN-free form (a SpecNet of it, or a user's module whose parameters
      and buffers are ``archs.SpecNet(spec)``'s by name and shape, else a ValueError); each comes
      back as the BN-free ``archs.SpecNet(spec, batchnorm=False)``;
    - a user's module with BatchNorm, no ``spec``: folded by the plan that :func:`pack_preps`
      traces (torch.fx, no example input; refusals as there), and returned as a copy of the module
      (``copy.deepcopy``: its own class and forward) in which each BatchNorm is an ``nn.Identity``
      and the layer before it has the folded weight and bias (a bias parameter is added where it
      had none). A layer that forward calls functionally without a bias cannot take the folded
      bias that way: refused (pass ``spec=``);
    - a module without normalization layers: a copy (``copy.deepcopy``), already BN-free.

    Refusals are one-line ValueErrors naming the module's type and what to do; a non-module is a
    TypeError.
    """
    single = isinstance(model_or_list, nn.Module)
    models = models_list(model_or_list, "model_or_list")
    spec = _check_spec_arg(spec)
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(models):
        groups.setdefault(_arch_key(m, i, spec, "model_or_list"), []).append(i)
    out: list[nn.Module | None] = [None] * len(models)
    pending = list(groups.items())
    while pending:
        key, idx = pending.pop()
        group = [models[i] for i in idx]
        if key[0] == "module":  # no normalization layers: already BN-free
            for i in idx:
                out[i] = copy.deepcopy(models[i])
            continue
        layers = key[1] if key[0] == "user" else None
        if layers is not None:
            for i in idx:
                slotless = user_plan(models[i]).no_bias_slot  # (cached: the key traced it)
                if slotless:
                    raise refusal(f"model_or_list: element {i}", models[i], f"{slotless[0]}: called functionally "
                                  f"without a bias, so a copy of the module cannot take the folded bias of the "
                                  f"BatchNorm after it", action="fold")
        try:
            _, tensors, plan_, eps, num_values = gather_pack_args(group, spec, "model_or_list")
        except EpsMismatch:  # rare: split the group by its BatchNorm eps values, one call each
            by_eps: dict[tuple, list[int]] = {}
            for i in idx:
                by_eps.setdefault(_eps_of(models[i]), []).append(i)
            pending += [(key, sub) for sub in by_eps.values()]
            continue
        with torch.no_grad():
            flat = pack_preps_op(tensors, plan_, eps, len(group), 1, num_values, check_finite=False, backend=backend)
        if layers is not None:
            layout = _user_layout(layers)
            for j, i in enumerate(idx):
                out[i] = _fold_copy(models[i], layers, split_views(flat[j].view(-1), layout))
            continue
        spec_ = key[1]
        layout = _flat_layout(spec_)
        # a burst of thousands of acyclic objects: without this, the cyclic collector walks the
        # whole heap (the input models included) several times during the loop
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for j, i in enumerate(idx):
                out[i] = _instantiate(spec_, split_views(flat[j].view(-1), layout), models[i].training)
        finally:
            if gc_was_enabled:
                gc.enable()
    return out[0] if single else out


@lru_cache(maxsize=64)
def _user_layout(layers) -> PRepLayout:
    """The BN-free entries of a user plan in one row of exactly P values: the fold buffer."""
    shapes = plan_shapes(layers)
    return PRepLayout(PRepLayout.from_shapes(shapes, 8).entries, 1, sum(math.prod(s) for _, s in shapes))
