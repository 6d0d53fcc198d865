"""BatchNorm folding (seed Sec. VI, Eq. 1-7): BN-trained networks -> BN-free networks computing the
same function as the BN network in eval mode.

A list of models is folded by one native `pack_preps` call per architecture (every BN layer of
every model in one kernel), into one flat (B, P) buffer; the BN-free modules are then instantiated
around views of that buffer by cloning a parameter-less template, so no parameter initialization
runs and module construction stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import nn

from .archs import SpecNet
from .ops import pack_op
from .prep import _gather, _models_list, unpack_prep, PRepLayout

__all__ = ["fold_bn"]


@lru_cache(maxsize=None)
def _template(spec) -> SpecNet:
    with torch.device("meta"):
        return SpecNet(spec, batchnorm=False)


@lru_cache(maxsize=None)
def _flat_layout(spec) -> PRepLayout:
    """The BN-free entries in one row of exactly P values: the fold buffer."""
    entries = PRepLayout.for_spec(spec, 8).entries
    return PRepLayout(entries, 1, spec.num_params, spec)


def _clone_module(m: nn.Module, params: dict[str, torch.Tensor], prefix: str) -> nn.Module:
    new = object.__new__(type(m))
    d = m.__dict__.copy()
    for k, v in d.items():  # the module's own containers (parameters, hooks, ...) must not be shared
        if isinstance(v, (dict, set)):
            d[k] = v.copy()
    new.__dict__ = d
    for name in m._parameters:
        d["_parameters"][name] = nn.Parameter(params[prefix + name])
    for name, child in m._modules.items():
        d["_modules"][name] = _clone_module(child, params, f"{prefix}{name}.")
    return new


def _instantiate(spec, params: dict[str, torch.Tensor], training: bool) -> SpecNet:
    model = _clone_module(_template(spec), params, "")
    model._layer_modules = {name: model.get_submodule(name) for name in model._layer_modules}
    model._bn_modules = None
    model.train(training)
    return model


def fold_bn(model_or_list: nn.Module | Sequence[nn.Module], *, backend: str | None = None):
    """BN-free module(s) computing the same function as the given BN model(s) in eval mode.

    Accepts one model (returns one module) or a list (returns a list, in order). Models of one
    architecture are folded together by one native call. Models without BatchNorm come back as
    BN-free copies. The returned modules' parameters are views into one buffer per architecture.
    """
    single = isinstance(model_or_list, nn.Module)
    models = _models_list(model_or_list, "model_or_list")
    for i, m in enumerate(models):
        if not isinstance(m, SpecNet):
            raise TypeError(f"model_or_list: element {i} is a {type(m).__name__}; expected a network built by "
                            f"netspace_fast.archs.build")
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(models):
        groups.setdefault((m.spec, m.batchnorm), []).append(i)
    out: list[nn.Module | None] = [None] * len(models)
    for (spec, _), idx in groups.items():
        group = [models[i] for i in idx]
        _, tensors, plan, eps, num_values = _gather(group)
        with torch.no_grad():
            flat = pack_op(tensors, plan, eps, len(group), 1, num_values, check_finite=False, backend=backend)
        views = unpack_prep(flat, _flat_layout(spec))
        for j, i in enumerate(idx):
            params = {name: v[j] for name, v in views.items()}
            out[i] = _instantiate(spec, params, models[i].training)
    return out[0] if single else out
