"""PReps (seed Sec. II): every parameter of a network, in a fixed order, written row after row into
a (H, W) matrix, W a multiple of 8, H = ceil(P / W) rounded up to a multiple of 4, zero padded.

The layout (which parameter lives at which offset with which shape) is a property of the
architecture; packing many networks is one fused native call (folding BatchNorm on the fly),
unpacking is a reshape of views.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch import nn

from .archs import ArchSpec, SpecNet
from .ops import COPY, FOLD_B, FOLD_W, pack_op

__all__ = ["LayoutEntry", "PRepLayout", "load_prep", "pack_preps", "prep_shape", "unpack_prep"]


def _check_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    return value


def _check_width(width: object) -> int:
    width = _check_int(width, "width")
    if width <= 0 or width % 8:
        raise ValueError(f"width: expected a positive multiple of 8, got {width}")
    return width


def prep_shape(num_params: int, width: int) -> tuple[int, int]:
    """(H, W) of the PRep of a network with ``num_params`` parameters (seed Sec. II)."""
    num_params = _check_int(num_params, "num_params")
    if num_params < 1:
        raise ValueError(f"num_params: expected a positive number of parameters, got {num_params}")
    width = _check_width(width)
    rows = -(-num_params // width)
    return -(-rows // 4) * 4, width


@dataclass(frozen=True)
class LayoutEntry:
    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class PRepLayout:
    """Where each parameter lives in a PRep of shape (height, width)."""

    entries: tuple[LayoutEntry, ...]
    height: int
    width: int
    spec: ArchSpec | None = field(default=None, compare=False)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def num_params(self) -> int:
        return sum(e.numel for e in self.entries)

    @property
    def split_sizes(self) -> list[int]:
        """Sizes that cut a flattened PRep into the entries, in order, plus the padding."""
        sizes = self.__dict__.get("_split_sizes")
        if sizes is None:
            sizes = [e.numel for e in self.entries]
            sizes.append(self.height * self.width - sum(sizes))
            object.__setattr__(self, "_split_sizes", sizes)
        return list(sizes)

    @classmethod
    def from_shapes(cls, named_shapes: Sequence[tuple[str, tuple[int, ...]]], width: int, height: int | None = None,
                    spec: ArchSpec | None = None) -> "PRepLayout":
        entries, offset = [], 0
        for name, shape in named_shapes:
            entries.append(LayoutEntry(name, tuple(int(s) for s in shape), offset))
            offset += entries[-1].numel
        min_h, width = prep_shape(offset, width)
        if height is None:
            height = min_h
        else:
            height = _check_int(height, "height")
            if height < min_h or height % 4:
                raise ValueError(f"height: expected a multiple of 4 of at least {min_h} rows ({offset} parameters "
                                 f"at width {width}), got {height}")
        return cls(tuple(entries), height, width, spec)

    @classmethod
    def for_spec(cls, spec: ArchSpec, width: int, height: int | None = None) -> "PRepLayout":
        """The layout of ``spec``'s BN-free parameters; ``height`` may exceed the minimum (shared heights)."""
        if not isinstance(spec, ArchSpec):
            raise TypeError(f"spec: expected an ArchSpec (netspace_fast.archs.spec), got {type(spec).__name__}")
        width = _check_width(width)
        if height is not None:
            height = _check_int(height, "height")
        return _layout_for_spec(spec, width, height)

    @classmethod
    def for_module(cls, module: nn.Module, width: int, height: int | None = None) -> "PRepLayout":
        """The layout of ``module``'s BN-free parameters (its spec's, or its parameters in order)."""
        if isinstance(module, SpecNet):
            return cls.for_spec(module.spec, width, height)
        if not isinstance(module, nn.Module):
            raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
        return cls.from_shapes([(n, tuple(p.shape)) for n, p in module.named_parameters()], width, height)


@lru_cache(maxsize=256)
def _layout_for_spec(spec: ArchSpec, width: int, height: int | None) -> PRepLayout:
    return PRepLayout.from_shapes([(p.name, p.shape) for p in spec.params], width, height, spec)


# ---------------------------------------------------------------------------------------------
# packing


@dataclass(frozen=True)
class _PackPlan:
    plan: tuple[int, ...]
    num_values: int
    # per conv/linear layer: (module path, BN path or None), in packing order
    layers: tuple[tuple[str, str | None], ...]


@lru_cache(maxsize=None)
def _pack_plan(spec: ArchSpec, batchnorm: bool) -> _PackPlan:
    plan: list[int] = []
    layers = []
    t = 0  # index of the next gathered tensor of one network
    for layer in spec.pack_layers:  # packing order (spec.params), not execution order
        bn = layer.bn if batchnorm else None
        layers.append((layer.name, bn))
        w_numel = math.prod((layer.out_features, layer.in_features, layer.kernel, layer.kernel)
                            if layer.kind == "conv" else (layer.out_features, layer.in_features))
        c = layer.out_features
        if bn is None:  # tensors: weight, bias
            plan += [COPY, w_numel, t, 0, 0, 0, 0, COPY, c, t + 1, 0, 0, 0, 0]
            t += 2
        else:  # tensors: conv weight, gamma, beta, running_mean, running_var (seed Sec. VI)
            plan += [FOLD_W, w_numel, t, t + 1, t + 4, c, 0, FOLD_B, c, -1, t + 1, t + 2, t + 3, t + 4]
            t += 5
    return _PackPlan(tuple(plan), spec.num_params, tuple(layers))


def _gather_specnet(model: SpecNet, pp: _PackPlan, tensors: list, eps: list) -> None:
    # straight from the modules' _parameters/_buffers dicts: nn.Module.__getattr__ costs more than
    # the packing of a small layer, and this runs for every layer of every network
    mods, bns = model._layer_modules, model._bn_modules
    for name, bn_name in pp.layers:
        p = mods[name]._parameters
        if bn_name is None:
            tensors.append(p["weight"])
            tensors.append(p["bias"])
            eps.append(0.0)
            eps.append(0.0)
        else:
            bn = bns[bn_name]
            bp, bb = bn._parameters, bn._buffers
            tensors += (p["weight"], bp["weight"], bp["bias"], bb["running_mean"], bb["running_var"])
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


def _models_list(models: object, name: str = "models") -> list[nn.Module]:
    if isinstance(models, nn.Module):
        return [models]
    if not isinstance(models, Sequence) or isinstance(models, (str, bytes)):
        raise TypeError(f"{name}: expected a torch.nn.Module or a list of them, got {type(models).__name__}")
    return list(models)


def _gather(models: list[nn.Module]) -> tuple[tuple, list[torch.Tensor], list[int], list[float], int]:
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
    """
    models = _models_list(models)
    if not models:
        raise ValueError("models: expected at least one module, got an empty list")
    width = _check_width(width)
    key, tensors, plan, eps, num_values = _gather(models)
    rows = PRepLayout.from_shapes([("all", (num_values,))], width, height).height
    return pack_op(tensors, plan, eps, len(models), rows, width, check_finite=not allow_nonfinite, backend=backend)


# ---------------------------------------------------------------------------------------------
# unpacking


def unpack_prep(prep: torch.Tensor, layout: PRepLayout) -> "OrderedDict[str, torch.Tensor]":
    """name -> view of ``prep`` with the parameter's shape, in packing order (no copies).

    ``prep`` is (H, W) or a batch (B, H, W) (then each view is (B, *shape)). The views share memory
    with a contiguous ``prep`` and carry its gradients, so they can be passed straight to
    ``torch.func.functional_call`` on the BN-free module. A non-contiguous ``prep`` is read through
    one contiguous copy (gradients still flow).
    """
    if not isinstance(layout, PRepLayout):
        raise TypeError(f"layout: expected a PRepLayout, got {type(layout).__name__}")
    if not isinstance(prep, torch.Tensor):
        raise TypeError(f"prep: expected a Tensor, got {type(prep).__name__}")
    if prep.dim() not in (2, 3) or tuple(prep.shape[-2:]) != layout.shape:
        raise ValueError(f"prep: expected shape {layout.shape} or (B, {layout.height}, {layout.width}) for this "
                         f"layout, got {tuple(prep.shape)}")
    batch = tuple(prep.shape[:-2])
    flat = prep.reshape(*batch, layout.height * layout.width)
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for e in layout.entries:
        out[e.name] = flat[..., e.offset:e.offset + e.numel].view((*batch, *e.shape))
    return out


def _split_views(flat: torch.Tensor, layout: PRepLayout) -> dict[str, torch.Tensor]:
    """Like unpack_prep for a 1-D flattened PRep, in one `split` call. Internal: split's outputs are
    multi-output views, which autograd forbids to modify in place, so only for no-grad use."""
    pieces = torch.split(flat, layout.split_sizes)
    return {e.name: piece.view(e.shape) for e, piece in zip(layout.entries, pieces)}


def load_prep(module: nn.Module, prep: torch.Tensor) -> nn.Module:
    """Write the PRep ``prep`` (H, W) into the BN-free ``module``'s parameters; returns ``module``."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
    if isinstance(module, SpecNet) and module.batchnorm:
        raise ValueError(f"module: expected a BN-free module (archs.build(..., batchnorm=False) or fold_bn), got "
                         f"{module.spec.name} with BatchNorm")
    if not isinstance(prep, torch.Tensor):
        raise TypeError(f"prep: expected a Tensor, got {type(prep).__name__}")
    if prep.dim() != 2:
        raise ValueError(f"prep: expected one PRep of shape (H, W), got shape {tuple(prep.shape)}")
    H, W = prep.shape
    num = module.spec.num_params if isinstance(module, SpecNet) else sum(p.numel() for p in module.parameters())
    if W < 8 or W % 8 or H < prep_shape(num, W)[0] or H % 4:
        need = f"at least {prep_shape(num, W)[0]} rows (a multiple of 4)" if W >= 8 and W % 8 == 0 else \
            "a width that is a positive multiple of 8"
        raise ValueError(f"prep: expected a PRep of {num} parameters with {need}, got shape {tuple(prep.shape)}")
    layout = PRepLayout.for_module(module, W, H)
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, view in unpack_prep(prep, layout).items():
            params[name].copy_(view)
    return module
