"""BatchNorm folding (seed Sec. VI, Eq. 1-7): BN-trained networks -> BN-free networks computing the
same function as the BN network in eval mode.

A list of models is folded by one native `pack_preps` call per architecture (every BN layer of
every model in one kernel), into one flat (B, P) buffer; the BN-free modules are then instantiated
around views of that buffer by cloning a parameter-less template, so no parameter initialization
runs and module construction stays cheap.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import nn

from ..archs import SpecNet
from ..ops.pack_preps import pack_preps as pack_preps_op
from .layout import PRepLayout, split_views
from .pack import EpsMismatch, gather_pack_args, models_list

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


def fold_bn(model_or_list: nn.Module | Sequence[nn.Module], *, backend: str | None = None):
    """BN-free module(s) computing the same function as the given BN model(s) in eval mode.

    Accepts one model (returns one module) or a list (returns a list, in order). Models of one
    architecture are folded together by one native call. Models without BatchNorm come back as
    BN-free copies. The returned modules' parameters are views into one buffer per architecture.
    """
    single = isinstance(model_or_list, nn.Module)
    models = models_list(model_or_list, "model_or_list")
    for i, m in enumerate(models):
        if not isinstance(m, SpecNet):
            raise TypeError(f"model_or_list: element {i} is a {type(m).__name__}; expected a network built by "
                            f"netspace_fast.archs.build")
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(models):
        groups.setdefault((m.spec, m.batchnorm), []).append(i)
    out: list[nn.Module | None] = [None] * len(models)
    pending = list(groups.items())
    while pending:
        (spec, *_), idx = pending.pop()
        group = [models[i] for i in idx]
        try:
            _, tensors, plan, eps, num_values = gather_pack_args(group)
        except EpsMismatch:  # rare: split the group by its BatchNorm eps values, one call each
            by_eps: dict[tuple, list[int]] = {}
            for i in idx:
                by_eps.setdefault(tuple(b.eps for b in models[i]._bn_modules.values()), []).append(i)
            pending += [((spec, "eps", e), sub) for e, sub in by_eps.items()]
            continue
        with torch.no_grad():
            flat = pack_preps_op(tensors, plan, eps, len(group), 1, num_values, check_finite=False, backend=backend)
        layout = _flat_layout(spec)
        # a burst of thousands of acyclic objects: without this, the cyclic collector walks the
        # whole heap (the input models included) several times during the loop
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for j, i in enumerate(idx):
                out[i] = _instantiate(spec, split_views(flat[j].view(-1), layout), models[i].training)
        finally:
            if gc_was_enabled:
                gc.enable()
    return out[0] if single else out
