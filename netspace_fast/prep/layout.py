"""PRep layouts (seed Sec. II): every parameter of a network, in a fixed order, written row after row
into a (H, W) matrix, W a multiple of 8, H = ceil(P / W) rounded up to a multiple of 4, zero padded.

The layout (which parameter lives at which offset with which shape) is a property of the
architecture; unpacking is a reshape of views (:func:`unpack_prep`, :func:`load_prep`). Packing is
in :mod:`netspace_fast.prep.pack`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch import nn

from ..archs import ArchSpec, SpecNet
from . import user

__all__ = ["LayoutEntry", "PRepLayout", "check_width", "load_prep", "prep_shape", "split_views", "unpack_prep"]


def _check_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    return value


def check_width(width: object) -> int:
    width = _check_int(width, "width")
    if width <= 0 or width % 8:
        raise ValueError(f"width: expected a positive multiple of 8, got {width}")
    return width


def prep_shape(num_params: int, width: int) -> tuple[int, int]:
    """(H, W) of the PRep of a network with ``num_params`` parameters (seed Sec. II)."""
    num_params = _check_int(num_params, "num_params")
    if num_params < 1:
        raise ValueError(f"num_params: expected a positive number of parameters, got {num_params}")
    width = check_width(width)
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
        width = check_width(width)
        if height is not None:
            height = _check_int(height, "height")
        return _layout_for_spec(spec, width, height)

    @classmethod
    def for_module(cls, module: nn.Module, width: int, height: int | None = None, *,
                   spec: ArchSpec | None = None) -> "PRepLayout":
        """The layout of ``module``'s BN-free parameters: what :func:`~netspace_fast.prep.pack_preps`
        packs it as. A SpecNet's (or, with ``spec=``, that spec's, the module checked against it as
        ``pack_preps`` does); a user's module with BatchNorm: its folded layers, found as
        ``pack_preps`` finds them (refused likewise); any other module: its parameters in order."""
        if spec is not None:
            if not isinstance(spec, ArchSpec):
                raise TypeError(f"spec: expected an archs.ArchSpec or None, got {type(spec).__name__}")
            if isinstance(module, SpecNet):
                if module.spec != spec:
                    raise ValueError(f"module: a SpecNet of {module.spec.name}/{module.spec.dataset}, not of spec "
                                     f"{spec.name}/{spec.dataset}")
            elif not isinstance(module, nn.Module):
                raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
            else:
                try:
                    user.check_spec(module, spec)
                except user.Refused as e:
                    raise user.refusal("module", module, str(e), spec_given=True) from None
            return cls.for_spec(spec, width, height)
        if isinstance(module, SpecNet):
            return cls.for_spec(module.spec, width, height)
        if not isinstance(module, nn.Module):
            raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
        if user.has_norm(module):
            try:
                shapes = user.plan_shapes(user.user_plan(module).layers)
            except user.Refused as e:
                raise user.refusal("module", module, str(e)) from None
            return cls.from_shapes(shapes, width, height)
        return cls.from_shapes([(n, tuple(p.shape)) for n, p in module.named_parameters()], width, height)


@lru_cache(maxsize=256)
def _layout_for_spec(spec: ArchSpec, width: int, height: int | None) -> PRepLayout:
    return PRepLayout.from_shapes([(p.name, p.shape) for p in spec.params], width, height, spec)


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


def split_views(flat: torch.Tensor, layout: PRepLayout) -> dict[str, torch.Tensor]:
    """Like unpack_prep for a 1-D flattened PRep, in one `split` call. Internal: split's outputs are
    multi-output views, which autograd forbids to modify in place, so only for no-grad use."""
    pieces = torch.split(flat, layout.split_sizes)
    return {e.name: piece.view(e.shape) for e, piece in zip(layout.entries, pieces)}


def load_prep(module: nn.Module, prep: torch.Tensor) -> nn.Module:
    """Write the PRep ``prep`` (H, W) into the BN-free ``module``'s parameters; returns ``module``.

    A PRep holds a BN-free network, so a module with BatchNorm (or another normalization layer) is
    refused: load into its BN-free form (``archs.build(..., batchnorm=False)``, or ``fold_bn(module)``
    for a user's module, whose parameters are in the PRep's order)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
    if isinstance(module, SpecNet) and module.batchnorm:
        raise ValueError(f"module: expected a BN-free module (archs.build(..., batchnorm=False) or fold_bn), got "
                         f"{module.spec.name} with BatchNorm")
    if not isinstance(module, SpecNet) and user.has_norm(module):
        raise ValueError(f"module: expected a BN-free module, got a {type(module).__name__} with normalization layers "
                         f"({', '.join(user.norm_paths(module))}); load the PRep into its folded copy "
                         f"(fold_bn(module)) instead")
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
