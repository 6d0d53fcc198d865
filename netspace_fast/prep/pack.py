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
from ..ops.pack_preps import pack_preps as pack_preps_op
from ..ops.pack_preps_ref import COPY, FOLD_B, FOLD_W
from .layout import PRepLayout, check_width

__all__ = ["EpsMismatch", "gather_pack_args", "models_list", "pack_preps"]




@dataclass(frozen=True)
class _PackPlan:
    plan: tuple[int, ...]
    num_values: int
    # per conv/linear layer: (module path, BN path or None, whether the module has a bias), in packing order
    layers: tuple[tuple[str, str | None, bool], ...]


@lru_cache(maxsize=None)
def _pack_plan(spec: ArchSpec, batchnorm: bool) -> _PackPlan:
    plan: list[int] = []
    layers = []
    t = 0  # index of the next gathered tensor of one network
    for layer in spec.pack_layers:  # packing order (spec.params), not execution order
        bn = layer.bn if batchnorm else None
        own_bias = layer.bias if bn is not None else layer.has_bias  # the module's bias (see SpecNet)
        layers.append((layer.name, bn, own_bias))
        w_numel = math.prod(layer.weight_shape)
        c = layer.out_features
        if bn is None:  # tensors: weight[, bias]
            plan += [COPY, w_numel, t, 0, 0, 0, 0]
            if own_bias:
                plan += [COPY, c, t + 1, 0, 0, 0, 0]
            t += 1 + own_bias
        else:  # tensors: weight, gamma, beta, running_mean, running_var[, bias] (seed Sec. VI)
            bias = t + 5 if own_bias else -1
            plan += [FOLD_W, w_numel, t, t + 1, t + 4, c, 0, FOLD_B, c, bias, t + 1, t + 2, t + 3, t + 4]
            t += 5 + own_bias
    return _PackPlan(tuple(plan), spec.num_params, tuple(layers))


def _gather_specnet(model: SpecNet, pp: _PackPlan, tensors: list, eps: list) -> None:
    # straight from the modules' _parameters/_buffers dicts: nn.Module.__getattr__ costs more than
    # the packing of a small layer, and this runs for every layer of every network
    mods, bns = model._layer_modules, model._bn_modules
    for name, bn_name, own_bias in pp.layers:
        p = mods[name]._parameters
        if bn_name is None:
            tensors.append(p["weight"])
            eps.append(0.0)
            if own_bias:
                tensors.append(p["bias"])
                eps.append(0.0)
        else:
            bn = bns[bn_name]
            bp, bb = bn._parameters, bn._buffers
            tensors += (p["weight"], bp["weight"], bp["bias"], bb["running_mean"], bb["running_var"])
            if own_bias:
                tensors.append(p["bias"])
            eps.append(bn.eps)
            eps.append(bn.eps)


class EpsMismatch(ValueError):
    """Models of one architecture whose BatchNorm layers use different eps."""


def _arch_key(model: nn.Module, index: int) -> tuple:
    if isinstance(model, SpecNet):
        return ("spec", model.spec, model.batchnorm)
    if not isinstance(model, nn.Module):
        raise TypeError(f"models: element {index} is a {type(model).__name__}, expected a torch.nn.Module")
    return ("module", tuple((n, tuple(p.shape)) for n, p in model.named_parameters()))


def _describe(key: tuple) -> str:
    if key[0] == "spec":
        s = key[1]
        return f"{s.name}/{s.dataset}" + (" (with BatchNorm)" if key[2] else " (BN-free)")
    return f"a module with {len(key[1])} parameters"


def models_list(models: object, name: str = "models") -> list[nn.Module]:
    if isinstance(models, nn.Module):
        return [models]
    if not isinstance(models, Sequence) or isinstance(models, (str, bytes)):
        raise TypeError(f"{name}: expected a torch.nn.Module or a list of them, got {type(models).__name__}")
    return list(models)


def gather_pack_args(models: list[nn.Module]) -> tuple[tuple, list[torch.Tensor], list[int], list[float], int]:
    """Checks that all models share one architecture; returns (key, tensors, plan, eps, num_values)."""
    key = _arch_key(models[0], 0)
    for i, m in enumerate(models[1:], 1):
        k = _arch_key(m, i)
        if k != key:
            raise ValueError(f"models: expected one architecture for all models, model 0 is {_describe(key)} "
                             f"but model {i} is {_describe(k)}")
    tensors: list[torch.Tensor] = []
    if key[0] == "spec":
        pp = _pack_plan(key[1], key[2])
        eps: list[float] = []
        for m in models:
            _gather_specnet(m, pp, tensors, eps)
        per_net = len(eps) // len(models)
        first = eps[:per_net]
        for i in range(1, len(models)):
            if eps[i * per_net:(i + 1) * per_net] != first:
                raise EpsMismatch(f"models: BatchNorm eps of model {i} differs from model 0's (one packing call "
                                  f"folds with one eps per layer)")
        return key, tensors, list(pp.plan), first, pp.num_values
    plan: list[int] = []
    for j, (_, shape) in enumerate(key[1]):
        plan += [COPY, math.prod(shape), j, 0, 0, 0, 0]
    for m in models:
        tensors += list(m.parameters())
    return key, tensors, plan, [0.0] * len(key[1]), sum(math.prod(s) for _, s in key[1])


def pack_preps(models: nn.Module | Sequence[nn.Module], width: int = 10_000, height: int | None = None, *,
               allow_nonfinite: bool = False, backend: str | None = None) -> torch.Tensor:
    """Pack B same-architecture networks into a (B, H, W) batch of PReps in one native call.

    Networks with BatchNorm are folded on the fly (seed Sec. VI) by the same kernel: it reads the
    conv weight and the BN statistics and writes the folded values, so the PRep is that of the
    BN-free network (``archs.build(..., batchnorm=False)``). Modules not built by
    :func:`netspace_fast.archs.build` are packed as their parameters in ``named_parameters`` order.
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
    key, tensors, plan, eps, num_values = gather_pack_args(models)
    rows = PRepLayout.from_shapes([("all", (num_values,))], width, height).height
    return pack_preps_op(tensors, plan, eps, len(models), rows, width, check_finite=not allow_nonfinite, backend=backend)


