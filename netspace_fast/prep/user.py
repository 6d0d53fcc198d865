"""Modules not built by :func:`netspace_fast.archs.build` (a user's own ``nn.Module``) in PReps.

A PRep holds the parameters of the BN-free network: every BatchNorm folded into the conv/linear
layer it follows (seed Sec. VI). For a :class:`~netspace_fast.archs.SpecNet` the spec says which
BatchNorm follows which layer; for a user's module this module finds out, in one of two ways:

- ``spec=`` given: the module is taken to compute that spec's network, in its trained (BN) or its
  BN-free form; its parameters and buffers must be exactly those of ``archs.SpecNet(spec)`` in that
  form (names and shapes), else it is refused (:func:`check_spec`);
- otherwise, for a module with normalization layers (any ``nn.BatchNorm*``/``nn.InstanceNorm*``):
  its forward is traced with ``torch.fx`` (symbolically: no example input is needed) and the fold
  plan is read off the graph with the rules of :func:`netspace_fast.archs.spec_from_module`
  (:func:`user_plan`). Every BatchNorm must be a BatchNorm1d/2d with affine parameters and running
  statistics, called once, right after a conv2d/linear layer (``nn.Conv2d``/``nn.Linear``, or
  ``F.conv2d``/``F.linear`` of a module's own ``weight``/``bias``) whose output nothing else reads
  (dropout and ``nn.Identity`` in between are identities); every parameter must be a weight or bias
  of such a layer or of such a BatchNorm, and no layer may be used twice. The packing order is the
  layers' registration order (``module.parameters()`` order), as in ``spec_from_module``. Anything
  else is refused (:class:`Refused`), never packed in another form.

The plan is traced once per module structure (:func:`signature`: the module class and every
submodule's path and class, the parameters' and buffers' names and shapes, and the plain public
attributes of the user's own classes, e.g. a flag its forward reads) and cached, so packing the
same networks again costs no tracing (modules whose classes hold per-instance values, a seed or a
name, are traced once each; modules of one structure share one trace). Modules without normalization layers need no plan: their
PRep is their parameters in ``named_parameters`` order, which is the folded form.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase

from ..archs import ArchSpec, SpecNet

__all__ = ["Refused", "UserPlan", "check_spec", "has_norm", "norm_paths", "plan_shapes", "refusal", "signature",
           "user_plan"]

_CACHE_SIZE = 4096  # structures, so that a call's modules with per-instance attributes all stay cached
_LAYER_FUNCS = {F.conv2d: "conv", torch.conv2d: "conv", F.linear: "linear"}
_SIMPLE = (bool, int, float, str, type(None))


class Refused(ValueError):
    """A module whose PRep cannot be made (the reason, without the caller's prefix)."""


@dataclass(frozen=True)
class UserPlan:
    """What packing a user's module needs. ``layers``: per conv/linear layer in packing order,
    (module path, BatchNorm path or None, whether the layer has its own bias, weight shape).
    ``no_bias_slot``: the layers followed by a BatchNorm, without a bias of their own, that are
    called functionally (``F.conv2d(x, self.c.weight)``): a copy of the module cannot take their
    folded bias (:func:`netspace_fast.prep.fold_bn` refuses those without ``spec=``)."""

    layers: tuple[tuple[str, str | None, bool, tuple[int, ...]], ...]
    no_bias_slot: tuple[str, ...] = ()


def has_norm(module: nn.Module) -> bool:
    """Whether ``module`` has a normalization layer with statistics (BatchNorm, InstanceNorm)."""
    return any(isinstance(m, _NormBase) for m in module.modules())


def norm_paths(module: nn.Module) -> list[str]:
    return [p or "(the module itself)" for p, m in module.named_modules() if isinstance(m, _NormBase)]


def refusal(where: str, module: nn.Module, reason: str, *, spec_given: bool = False,
            action: str = "make the PRep of") -> ValueError:
    """The one-line ValueError for a module that cannot be packed or folded: its type, why, and what
    to do."""
    todo = ("pass the spec of the network it computes" if spec_given else
            "pass spec= (the archs.ArchSpec of the network it computes, from archs.spec_from_module or archs.spec)")
    return ValueError(f"{where}: cannot {action} the {type(module).__name__} module: {reason}; {todo}, or load its "
                      f"state dict into archs.SpecNet(spec) first")


# ---------------------------------------------------------------------------------------------
# the structure a cached plan is valid for


def _attrs(m: nn.Module) -> tuple:
    """The plain public attributes of a user's own module class (a forward may branch on them)."""
    out = []
    for k, v in vars(m).items():
        if k.startswith("_") or k == "training":
            continue
        if isinstance(v, _SIMPLE) or (isinstance(v, tuple) and all(isinstance(e, _SIMPLE) for e in v)):
            out.append((k, v))
    return tuple(sorted(out))


def signature(module: nn.Module) -> tuple:
    """What a traced plan depends on (hashable): see the module docstring."""
    mods = tuple((path, type(m), () if type(m).__module__.startswith("torch.") else _attrs(m))
                 for path, m in module.named_modules())
    try:
        params = tuple((n, tuple(p.shape)) for n, p in module.named_parameters())
        bufs = tuple((n, tuple(b.shape)) for n, b in module.named_buffers())
    except (RuntimeError, ValueError) as e:  # lazy modules' uninitialized parameters have no shape
        raise Refused(f"a parameter or buffer without a shape ({type(e).__name__}); run the module once "
                      f"(lazy modules) first") from None
    return mods, params, bufs


# ---------------------------------------------------------------------------------------------
# tracing


_PLANS: dict[tuple, UserPlan | str] = {}  # signature -> plan, or the reason of a refusal (least recent first)


def user_plan(module: nn.Module, sig: tuple | None = None) -> UserPlan:
    """The fold plan of a user's module with normalization layers (cached per :func:`signature`);
    raises :class:`Refused` where there is none."""
    sig = signature(module) if sig is None else sig
    got = _PLANS.pop(sig, None)
    if got is None:
        try:
            got = _trace_plan(module)
        except Refused as e:
            got = str(e)
        while len(_PLANS) >= _CACHE_SIZE:
            del _PLANS[next(iter(_PLANS))]
    _PLANS[sig] = got  # (re)inserted last: the most recently used
    if isinstance(got, str):
        raise Refused(got)
    return got


def _owner(node, suffix: str) -> str | None:
    """The module path of a ``get_attr`` node reading ``<path>.<suffix>``."""
    if not isinstance(node, fx.Node) or node.op != "get_attr" or not node.target.endswith("." + suffix):
        return None
    return node.target[: -len(suffix) - 1]


def _kind_name(m: nn.Module) -> str:
    return f"nn.{type(m).__name__}" if type(m).__module__.startswith("torch.nn") else type(m).__qualname__


def _trace_plan(module: nn.Module) -> UserPlan:
    from .._trace import _IDENTITY_FUNCS, _IDENTITY_MODULES

    try:
        gm = fx.symbolic_trace(module)
    except Exception as e:  # TraceError, data-dependent control flow, unsupported Python
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise Refused(f"it has normalization layers ({', '.join(norm_paths(module))}) to fold and torch.fx "
                      f"cannot trace it ({type(e).__name__}{': ' + first if first else ''})") from None
    graph = gm.graph
    modules = dict(gm.named_modules())
    # identities (dropout in eval, nn.Identity, .contiguous()) are dropped, as spec_from_module does
    for node in list(graph.nodes):
        if ((node.op == "call_module" and isinstance(modules[node.target], _IDENTITY_MODULES))
                or (node.op == "call_function" and node.target in _IDENTITY_FUNCS)
                or (node.op == "call_method" and node.target == "contiguous")):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)

    layers: dict[str, tuple[str, bool, bool]] = {}  # path -> (kind, own bias, called as the module)
    layer_node: dict[fx.Node, str] = {}

    def add(path: str, node: fx.Node, kind: str, own_bias: bool, module_call: bool) -> None:
        if path in layers:
            raise Refused(f"{path}: a layer used twice (weight sharing) cannot be packed")
        layers[path] = (kind, own_bias, module_call)
        layer_node[node] = path

    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], (nn.Conv2d, nn.Linear)):
            m = modules[node.target]
            add(node.target, node, "conv" if isinstance(m, nn.Conv2d) else "linear", m.bias is not None, True)
        elif node.op == "call_function" and node.target in _LAYER_FUNCS:
            vals = dict(zip(("input", "weight", "bias"), node.args))
            vals.update({k: v for k, v in node.kwargs.items() if k in ("input", "weight", "bias")})
            path, bias = _owner(vals.get("weight"), "weight"), vals.get("bias")
            if path is None or (bias is not None and _owner(bias, "bias") != path):
                continue  # not a layer of the module's own parameters (its parameters are refused below)
            add(path, node, _LAYER_FUNCS[node.target], bias is not None, False)

    bn_of: dict[str, str] = {}  # layer path -> BatchNorm path
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], _NormBase):
            continue
        path, m = node.target, modules[node.target]
        what = f"{path}: {_kind_name(m)}"
        if not isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            raise Refused(f"{what} cannot be folded (only BatchNorm1d/2d right after a conv or linear layer)")
        if path in bn_of.values():
            raise Refused(f"{what} is called twice; a BatchNorm folds into one layer")
        if not (m.affine and m.track_running_stats):
            raise Refused(f"{what} without affine parameters or running statistics cannot be folded")
        src = node.args[0] if node.args else None
        layer = layer_node.get(src)
        if layer is None or len(src.users) != 1 or layer in bn_of:
            raise Refused(f"{what} is not right after a conv or linear layer whose output nothing else reads, so "
                          f"it cannot be folded")
        kind = layers[layer][0]
        want = nn.BatchNorm2d if kind == "conv" else nn.BatchNorm1d
        if not isinstance(m, want):
            raise Refused(f"{what} after a {kind} layer cannot be folded (expected nn.{want.__name__})")
        bn_of[layer] = path
    called = set(bn_of.values())
    for path, m in module.named_modules():
        if isinstance(m, _NormBase) and path not in called:
            raise Refused(f"{path or '(the module itself)'}: {_kind_name(m)} is not called by forward after a conv "
                          f"or linear layer, so it cannot be folded")

    params = dict(module.named_parameters())
    used = set()
    for path, (_, own_bias, _) in layers.items():
        used.update([f"{path}.weight"] + ([f"{path}.bias"] if own_bias else []))
    for path in bn_of.values():
        used.update([f"{path}.weight", f"{path}.bias"])
    for name in params:
        if name not in used:
            owner_path = name.rpartition(".")[0]
            owner = module.get_submodule(owner_path)
            raise Refused(f"{name}: a parameter of {_kind_name(owner)} that forward does not use as a conv/linear "
                          f"weight or bias or a folded BatchNorm's (a PRep holds only those)")
    for name in sorted(used):
        if name not in params:
            raise Refused(f"{name}: read as a layer's weight or bias but not a parameter of the module of its own "
                          f"(a buffer, or shared with another layer)")
    if not layers:
        raise Refused("it has no conv or linear layer")

    order = {path: i for i, (path, _) in enumerate(module.named_modules())}
    packed = sorted(layers, key=lambda p: order.get(p, len(order)))
    plan = tuple((p, bn_of.get(p), layers[p][1], tuple(params[f"{p}.weight"].shape)) for p in packed)
    no_slot = tuple(p for p in packed if p in bn_of and not layers[p][1] and not layers[p][2])
    return UserPlan(plan, no_slot)


# ---------------------------------------------------------------------------------------------
# spec=


@lru_cache(maxsize=None)
def _spec_state(spec: ArchSpec, batchnorm: bool) -> tuple[dict, dict]:
    with torch.device("meta"):
        net = SpecNet(spec, batchnorm=batchnorm)
    return ({n: tuple(p.shape) for n, p in net.named_parameters()},
            {n: tuple(b.shape) for n, b in net.named_buffers()})


def _first_difference(got: dict, want: dict, what: str) -> str | None:
    for n in want:
        if n not in got:
            return f"{what} {n} {want[n]} missing"
        if got[n] != want[n]:
            return f"{what} {n} has shape {got[n]}, the spec's {want[n]}"
    for n in got:
        if n not in want:
            return f"{what} {n} is not in the spec"
    return None


def check_spec(module: nn.Module, spec: ArchSpec) -> bool:
    """Whether ``module`` is ``spec``'s network in its BN form (True) or its BN-free form (False),
    checked by the names and shapes of its parameters and buffers; raises :class:`Refused` if it is
    neither."""
    try:
        params = {n: tuple(p.shape) for n, p in module.named_parameters()}
        bufs = {n: tuple(b.shape) for n, b in module.named_buffers()}
    except (RuntimeError, ValueError) as e:
        raise Refused(f"a parameter or buffer without a shape ({type(e).__name__})") from None
    forms = (True, False) if spec.has_batchnorm else (False,)
    why = None
    for bn in forms:
        want_p, want_b = _spec_state(spec, bn)
        diff = _first_difference(params, want_p, "parameter") or _first_difference(bufs, want_b, "buffer")
        if diff is None:
            if bn:
                for layer in spec.layers:
                    if layer.bn is not None and not isinstance(module.get_submodule(layer.bn), _BatchNorm):
                        raise Refused(f"{layer.bn}: a {type(module.get_submodule(layer.bn)).__name__}, where "
                                      f"spec {spec.name} has a BatchNorm")
            return bn
        why = why or diff
    form = "its BN or its BN-free form" if len(forms) == 2 else "its (BN-free) form"
    raise Refused(f"it is not spec {spec.name}'s network in {form}: {why}")



def plan_shapes(layers) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of the BN-free parameters of a :class:`UserPlan`'s layers, in packing order."""
    shapes = []
    for name, bn, own_bias, w in layers:
        shapes.append((f"{name}.weight", w))
        if own_bias or bn is not None:
            shapes.append((f"{name}.bias", (w[0],)))
    return shapes
