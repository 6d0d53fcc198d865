"""The zoo architectures (METHOD.md section 2, seed Sec. III) as static specs and modules.

An :class:`ArchSpec` is the single source of truth for an architecture: the layer graph of the
BN-free network, its parameter names, shapes and packing order, and, for every conv that is
followed by a BatchNorm in the trained form, the name of that BatchNorm. Modules are built from
the spec (:class:`SpecNet`), so names and shapes cannot drift from what PRep layouts and the
batched evaluation derive from the same spec.

Layers form a small SSA graph: value 0 is the network input, each layer reads ``src`` (and
optionally adds ``residual``) and writes a new value ``dst``; the last layer's value is the output.
A conv or linear layer computes ``act(W x + b [+ residual])``: the fused epilogue order of the
batched layer ops.

Names and packing order are those of the original NetSpace code (the one the paper's zoos and
checkpoints were made with), so its state dicts load strictly and its PReps are ours:

- ResNets use torchvision's names: stem ``conv1``/``bn1``; blocks ``layer{s}.{i}.conv1``, ``.bn1``,
  ``.conv2``, ``.bn2`` and, where stride or width changes, ``.downsample.0`` (1x1 conv) and
  ``.downsample.1`` (BatchNorm); head ``fc``. A block's parameters are packed conv1, conv2,
  downsample (torchvision's BasicBlock registration order), although the downsample conv *runs*
  before conv2 (conv2's epilogue adds it): ``ArchSpec.layers`` is the execution order,
  ``ArchSpec.pack_order`` the packing (= module registration) order.
- VanillaCNN's five convs and its fc are ``layers.0`` .. ``layers.5`` (an ``nn.ModuleList``).
- LeNetLike: ``conv1`` .. ``conv{2,3}``, ``fc1`` .. ``fc3``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ARCH_NAMES",
    "DATASETS",
    "CLASS_IDS",
    "ArchSpec",
    "LayerSpec",
    "ParamSpec",
    "SpecNet",
    "build",
    "spec",
    "spec_forward",
    "spec_from_module",
    "spec_hash",
    "register",
    "registered",
    "resolve",
    "apply_activation",
    "layer_op",
]

LEAKY_SLOPE = 0.01  # METHOD.md section 2: LeakyReLU slope everywhere in the classifiers
SIREN_W0 = 30.0  # sin(30 x) activations of the SDF MLP

# dataset -> (input channels, input size, classes)
DATASETS: dict[str, tuple[int, int, int]] = {
    "cifar10": (3, 32, 10),
    "tinyimagenet": (3, 64, 200),
    "digits": (3, 32, 10),  # the embedded default: cifar10 geometry
    "fashion-mnist": (3, 32, 10),  # 28x28 grayscale padded to 32 and replicated: cifar10 geometry
    "mnist": (3, 32, 10),
}
ARCH_NAMES = ("lenetlike", "vanillacnn", "resnet8", "resnet32", "resnet56", "siren")
CLASS_IDS = {"lenetlike": 0, "vanillacnn": 1, "resnet8": 2, "resnet32": 3}
ACTIVATIONS = ("none", "relu", "leaky_relu", "gelu", "gelu_tanh", "silu", "tanh", "sigmoid", "sin")
# the layer kinds; conv/linear carry parameters, "act" is a standalone activation (and/or addition)
KINDS = ("conv", "linear", "avgpool", "maxpool", "adaptive_avgpool", "flatten", "act")
# activations of the fast engine (batched layer ops: C++, Triton, CUDA), at their default argument
FAST_ACTIVATIONS = ("none", "leaky_relu", "sin")


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _norm_pair(v):
    """An int, or an (h, w) pair; a pair of equal entries is normalized to the int."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2 or not all(isinstance(e, int) for e in v):
            raise ValueError(f"expected an int or a pair of ints, got {v!r}")
        return v[0] if v[0] == v[1] else (int(v[0]), int(v[1]))
    return v


@dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class LayerSpec:
    """One node of the BN-free network graph.

    kind: one of :data:`KINDS`. For conv/linear, ``name`` is the module path (its parameters are
    ``name.weight`` and, where there is one, ``name.bias``) and ``bn`` the path of the BatchNorm
    that follows it in the trained (BN) form, or None. A layer computes
    ``act(op(src) [+ residual])``; BatchNorm (trained form) applies right after the op. ``act``
    is one of :data:`ACTIVATIONS`; ``act_arg`` its argument where it has one (LeakyReLU's slope,
    default 0.01; sin's w0 in sin(w0 x), default 30), None for the default.

    ``kernel``, ``stride``, ``padding``, ``dilation``: an int, or an (h, w) pair for a rectangular
    one (a pair of equal entries is stored as the int). ``groups``: conv groups (depthwise: groups
    = in_features). ``bias``: whether the trained form's conv/linear has its own bias (the BN-free
    form has one if this or ``bn``). Pools: ``kernel``/``stride``/``padding`` (max: also
    ``dilation``; avg: ``count_include_pad``); adaptive average pooling: ``output_size`` (h, w).
    Kind ``act``: an activation (and/or, with ``residual``, an addition) of its own.
    """

    kind: str
    src: int
    dst: int
    name: str = ""
    in_features: int = 0
    out_features: int = 0
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    act: str = "none"
    residual: int | None = None
    bn: str | None = None
    groups: int = 1
    dilation: int | tuple[int, int] = 1
    bias: bool = True
    act_arg: float | None = None
    output_size: tuple[int, int] | None = None
    count_include_pad: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {self.kind!r}")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"act: expected one of {ACTIVATIONS}, got {self.act!r}")
        for f in ("kernel", "stride", "padding", "dilation"):
            object.__setattr__(self, f, _norm_pair(getattr(self, f)))
        arg = self.act_arg
        if arg is not None:
            arg = float(arg)
            if (self.act == "leaky_relu" and arg == LEAKY_SLOPE) or (self.act == "sin" and arg == SIREN_W0):
                arg = None  # the default, stored as None: one spelling per network
            elif self.act not in ("leaky_relu", "sin"):
                raise ValueError(f"act_arg: {self.act!r} takes no argument, got {arg}")
        object.__setattr__(self, "act_arg", arg)
        if self.output_size is not None:
            object.__setattr__(self, "output_size", _pair(self.output_size))
        if self.kind == "conv" and (self.groups < 1 or self.in_features % self.groups
                                    or self.out_features % self.groups):
            raise ValueError(f"groups: expected a positive divisor of in_features={self.in_features} and "
                             f"out_features={self.out_features}, got {self.groups}")

    @property
    def has_bias(self) -> bool:
        """Whether the BN-free form of this conv/linear has a bias (its own, or a folded BatchNorm)."""
        return self.bias or self.bn is not None

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.kind == "conv":
            return (self.out_features, self.in_features // self.groups, *_pair(self.kernel))
        return (self.out_features, self.in_features)

    @property
    def fast(self) -> bool:
        """Whether the fast engine (fused batched layer ops, native kernels) runs this layer."""
        if self.act not in FAST_ACTIVATIONS or self.act_arg is not None:
            return False
        if self.kind in ("conv", "linear"):
            if not self.has_bias:
                return False
            if self.kind == "conv":
                return (self.groups == 1 and self.dilation == 1 and all(
                    isinstance(getattr(self, f), int) for f in ("kernel", "stride", "padding")))
            return self.bn is None
        if self.kind == "avgpool":
            return isinstance(self.kernel, int) and isinstance(self.stride, int) and self.padding == 0
        return self.kind == "flatten"


@dataclass(frozen=True)
class ArchSpec:
    """``layers``: the graph in execution order. ``pack_order``: the names of the conv/linear layers
    in packing order (the order of ``params``, of PRep layouts and of module registration); empty
    means execution order, and is normalized to the explicit tuple."""

    name: str
    dataset: str | None
    input_shape: tuple[int, ...]
    num_outputs: int
    layers: tuple[LayerSpec, ...]
    class_id: int | None = None
    pack_order: tuple[str, ...] = ()
    params: tuple[ParamSpec, ...] = field(default=(), compare=False)
    pack_layers: tuple[LayerSpec, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        by_name = {layer.name: layer for layer in self.layers if layer.kind in ("conv", "linear")}
        order = tuple(self.pack_order) if self.pack_order else tuple(by_name)
        if sorted(order) != sorted(by_name) or len(set(order)) != len(order):
            raise ValueError(f"pack_order: expected a permutation of the conv/linear layers {sorted(by_name)}, "
                             f"got {list(order)}")
        pack_layers = tuple(by_name[n] for n in order)
        object.__setattr__(self, "pack_order", order)
        object.__setattr__(self, "pack_layers", pack_layers)
        params = []
        for layer in pack_layers:
            params.append(ParamSpec(f"{layer.name}.weight", layer.weight_shape))
            if layer.has_bias:
                params.append(ParamSpec(f"{layer.name}.bias", (layer.out_features,)))
        object.__setattr__(self, "params", tuple(params))

    @property
    def fast(self) -> bool:
        """Whether every layer runs on the fast engine (the built-in architectures do); other specs
        run on the general batched engine (:mod:`netspace_fast.engine.general`). The fast engine
        reads the network input only with conv/linear layers (no pooling or flatten of the input
        itself, no addition of it)."""
        return (all(layer.fast for layer in self.layers)
                and all(layer.kind in ("conv", "linear") for layer in self.layers if layer.src == 0)
                and all(layer.residual != 0 for layer in self.layers))

    @property
    def num_params(self) -> int:
        """Parameters of the BN-free network (what a PRep holds)."""
        return sum(p.numel for p in self.params)

    @property
    def num_params_bn(self) -> int:
        """Trainable parameters of the BN form (seed Table I counts these)."""
        extra = 0
        for layer in self.layers:
            if layer.bn is not None:
                # BN brings gamma and beta; the BN-free form's bias is the layer's own or the folded one
                extra += layer.out_features * (2 if layer.bias else 1)
        return self.num_params + extra

    @property
    def has_batchnorm(self) -> bool:
        return any(layer.bn is not None for layer in self.layers)

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.name, self.dataset)


class _GraphBuilder:
    def __init__(self) -> None:
        self.layers: list[LayerSpec] = []
        self.next_value = 1

    def add(self, kind: str, src: int, **kw) -> int:
        dst = self.next_value
        self.next_value += 1
        self.layers.append(LayerSpec(kind=kind, src=src, dst=dst, **kw))
        return dst


def _conv_out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


def _lenetlike(dataset: str) -> ArchSpec:
    cin, size, classes = DATASETS[dataset]
    g = _GraphBuilder()
    if dataset == "tinyimagenet":
        convs = [(4, 5, 2, 2), (8, 5, 2, 0), (16, 5, 2, 0)]
    else:
        convs = [(6, 5, 2, 0), (16, 5, 2, 0)]
    v, c = 0, cin
    for i, (out, k, s, p) in enumerate(convs, 1):
        v = g.add("conv", v, name=f"conv{i}", in_features=c, out_features=out, kernel=k, stride=s, padding=p,
                  act="leaky_relu")
        c, size = out, _conv_out(size, k, s, p)
    v = g.add("flatten", v)
    feats = c * size * size
    for i, (fin, fout) in enumerate([(feats, 120), (120, 84), (84, classes)], 1):
        v = g.add("linear", v, name=f"fc{i}", in_features=fin, out_features=fout,
                  act="leaky_relu" if i < 3 else "none")
    return ArchSpec("lenetlike", dataset, (cin, DATASETS[dataset][1], DATASETS[dataset][1]), classes,
                    tuple(g.layers), CLASS_IDS["lenetlike"])


def _vanillacnn(dataset: str) -> ArchSpec:
    cin, size, classes = DATASETS[dataset]
    if dataset == "tinyimagenet":
        convs = [(8, 2), (16, 2), (32, 2), (64, 2), (64, 2)]
    else:
        convs = [(8, 2), (8, 1), (32, 2), (64, 1), (64, 2)]
    g = _GraphBuilder()
    v, c = 0, cin
    for i, (out, s) in enumerate(convs):  # the original's nn.ModuleList: layers.0 .. layers.4, layers.5 the fc
        v = g.add("conv", v, name=f"layers.{i}", in_features=c, out_features=out, kernel=3, stride=s, padding=1,
                  act="leaky_relu")
        c, size = out, _conv_out(size, 3, s, 1)
    v = g.add("flatten", v)
    g.add("linear", v, name=f"layers.{len(convs)}", in_features=c * size * size, out_features=classes)
    return ArchSpec("vanillacnn", dataset, (cin, DATASETS[dataset][1], DATASETS[dataset][1]), classes,
                    tuple(g.layers), CLASS_IDS["vanillacnn"])


def _resnet(depth: int, dataset: str) -> ArchSpec:
    n = (depth - 2) // 6
    cin, size, classes = DATASETS[dataset]
    g = _GraphBuilder()
    v = g.add("conv", 0, name="conv1", in_features=cin, out_features=16, kernel=3, stride=1, padding=1,
              act="leaky_relu", bn="bn1", bias=False)
    order = ["conv1"]  # packing order: torchvision's registration order (block: conv1, conv2, downsample)
    c = 16
    for stage, (width, stride) in enumerate([(16, 1), (32, 2), (64, 2)], 1):
        for b in range(n):
            s = stride if b == 0 else 1
            p = f"layer{stage}.{b}"
            h = g.add("conv", v, name=f"{p}.conv1", in_features=c, out_features=width, kernel=3, stride=s,
                      padding=1, act="leaky_relu", bn=f"{p}.bn1", bias=False)
            order += [f"{p}.conv1", f"{p}.conv2"]
            # the downsample conv runs before conv2 (conv2's epilogue adds it) but is packed after it
            if s != 1 or c != width:
                short = g.add("conv", v, name=f"{p}.downsample.0", in_features=c, out_features=width, kernel=1,
                              stride=s, padding=0, bn=f"{p}.downsample.1", bias=False)
                order.append(f"{p}.downsample.0")
            else:
                short = v
            v = g.add("conv", h, name=f"{p}.conv2", in_features=width, out_features=width, kernel=3, stride=1,
                      padding=1, act="leaky_relu", residual=short, bn=f"{p}.bn2", bias=False)
            c = width
            size = _conv_out(size, 3, s, 1)
    v = g.add("avgpool", v, kernel=8, stride=8)
    size //= 8
    v = g.add("flatten", v)
    g.add("linear", v, name="fc", in_features=c * size * size, out_features=classes)
    order.append("fc")
    name = f"resnet{depth}"
    return ArchSpec(name, dataset, (cin, DATASETS[dataset][1], DATASETS[dataset][1]), classes, tuple(g.layers),
                    CLASS_IDS.get(name), tuple(order))


def _siren() -> ArchSpec:
    g = _GraphBuilder()
    v = g.add("linear", 0, name="fc1", in_features=3, out_features=256, act="sin")
    v = g.add("linear", v, name="fc2", in_features=256, out_features=256, act="sin")
    g.add("linear", v, name="fc3", in_features=256, out_features=1)
    return ArchSpec("siren", None, (3,), 1, tuple(g.layers), None)


@dataclass(frozen=True)
class Registered:
    """A user architecture made available by name (:func:`register`)."""

    name: str
    factory: object
    datasets: tuple[str, ...] | None  #: the datasets it is made for (None: any of DATASETS)
    path: str | None  #: ``package.module:factory`` when the factory is importable by that path

    def make(self, dataset: str | None) -> nn.Module:
        """A fresh module from the factory: ``factory(dataset=...)`` if it has a parameter named
        ``dataset``, else ``factory()``. A factory that raises or returns something other than an
        ``nn.Module`` is a ValueError of one line (``arch: ...``)."""
        return _call_factory(self.factory, self.path or self.name, dataset=dataset)


# what ``--arch`` / :func:`resolve` takes for a user architecture (its error messages say so)
_FACTORY_EXPECTED = ("package.module:factory, a callable taking no argument or only dataset= and returning an "
                    "nn.Module")


def _one_line(e: BaseException) -> str:
    """``Type: message`` of an exception, on one line."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _factory_error(label: str, what: str) -> ValueError:
    return ValueError(f"arch: {label!r}: expected {_FACTORY_EXPECTED}; {what}")


def _takes_dataset(factory) -> bool:
    import inspect

    try:
        return "dataset" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def _check_signature(factory, label: str) -> None:
    """ValueError if ``factory`` cannot be called the way :meth:`Registered.make` calls it."""
    import inspect

    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return  # no signature to read (some builtins): the call itself will tell
    kwargs = {"dataset": "cifar10"} if "dataset" in sig.parameters else {}
    try:
        sig.bind(**kwargs)
    except TypeError as e:
        call = "factory(dataset=...)" if kwargs else "factory()"
        raise _factory_error(label, f"it cannot be called as {call}: {' '.join(str(e).split())}") from None


def _call_factory(factory, label: str, *, dataset: str | None = None, omit_dataset: bool = False) -> nn.Module:
    """``factory(dataset=dataset)`` or ``factory()`` (see :meth:`Registered.make`), checked: a
    ValueError of one line if it raises or returns something other than an ``nn.Module``.
    ``omit_dataset``: call ``factory()`` even if it takes ``dataset`` (its default applies)."""
    takes = _takes_dataset(factory) and not omit_dataset
    try:
        module = factory(dataset=dataset) if takes else factory()
    except Exception as e:  # the user's code: any failure is theirs, said in one line
        raise _factory_error(label, f"the factory raised {_one_line(e)}") from e
    if not isinstance(module, nn.Module):
        raise _factory_error(label, f"the factory returned a {type(module).__name__}")
    return module


_REGISTRY: dict[str, Registered] = {}


def _factory_path(factory) -> str | None:
    mod, qual = getattr(factory, "__module__", None), getattr(factory, "__qualname__", None)
    if not mod or not qual or "<" in qual or mod == "__main__":
        return None
    return f"{mod}:{qual}"


def register(name: str, factory, *, datasets=None) -> str:
    """Make a user architecture available by ``name`` wherever an architecture name is taken.

    ``factory`` returns the network (an ``nn.Module`` in its trained form, BatchNorm included),
    called as ``factory(dataset=name)`` if it has a parameter ``dataset``, else ``factory()``. ``datasets``: the
    dataset names it is made for (default: every one of :data:`DATASETS`). Its spec is traced
    (:func:`spec_from_module`) on an input of the dataset's geometry, or of the geometry the module
    declares in an ``input_shape`` attribute, (C, H, W) (a network made for its own images, e.g. a public
    zoo's 1x28x28 CNN: :mod:`netspace_fast.zoo.public`); the first trace refuses an unsupported network.
    Registering a name again replaces it; built-in names cannot be taken.
    Returns the name (lower case).
    """
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "_-" for c in name):
        raise ValueError(f"name: expected a non-empty name of letters, digits, '_' or '-', got {name!r}")
    key = name.lower()
    if key in ARCH_NAMES:
        raise ValueError(f"name: {name!r} is a built-in architecture; choose another name")
    if not callable(factory):
        raise TypeError(f"factory: expected a callable returning an nn.Module, got {type(factory).__name__}")
    if datasets is not None:
        if isinstance(datasets, str):
            datasets = (datasets,)
        datasets = tuple(str(d).lower() for d in datasets)
        bad = [d for d in datasets if d not in DATASETS]
        if bad or not datasets:
            raise ValueError(f"datasets: expected names among {', '.join(DATASETS)}, got {list(datasets)}")
    _REGISTRY[key] = Registered(key, factory, datasets, _factory_path(factory))
    _spec_cached.cache_clear()
    return key


def resolve(arch: str) -> str:
    """An architecture name, or ``package.module:factory`` (imported and registered under the
    factory's name); returns the name to use with :func:`spec` / :func:`build`.

    A factory is checked here, before any work: its module imports, it is a callable that can be
    called with no argument (or only ``dataset=``), and, unless it needs a ``dataset`` to be called,
    one call returns an ``nn.Module`` (the global random state is left as it was). Anything else is
    a ValueError of one line starting with ``arch:`` that names ``arch``."""
    if not isinstance(arch, str):
        raise TypeError(f"arch: expected a str, got {type(arch).__name__}")
    if ":" not in arch:
        return arch.lower()
    import importlib
    import inspect

    mod_name, _, attr = arch.partition(":")
    if not mod_name.strip():
        raise _factory_error(arch, "the module name is empty")
    if not all(p.isidentifier() for p in mod_name.split(".")):
        raise _factory_error(arch, f"{mod_name!r} is not an absolute module name")
    if not attr.strip():
        raise _factory_error(arch, "the factory name after ':' is empty")
    if not all(p.isidentifier() for p in attr.split(".")):
        raise _factory_error(arch, f"{attr!r} is not a name of an attribute of the module")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"arch: cannot import {mod_name!r} for {arch!r} ({' '.join(str(e).split())}); is it on "
                         f"PYTHONPATH?") from None
    except Exception as e:  # the module was found, but importing it failed
        raise ValueError(f"arch: cannot import {mod_name!r} for {arch!r} (importing it raised {_one_line(e)})") from e
    missing = object()
    obj = mod
    for part in attr.split("."):
        obj = getattr(obj, part, missing)
        if obj is missing:
            raise _factory_error(arch, f"{mod_name!r} has no attribute {attr!r}")
    if not callable(obj):
        raise _factory_error(arch, f"{attr!r} is not callable: its type is {type(obj).__name__}")
    for key, reg in _REGISTRY.items():
        if reg.factory is obj:
            return key
    _check_signature(obj, arch)
    try:
        needs_dataset = inspect.signature(obj).parameters["dataset"].default is inspect.Parameter.empty
    except (TypeError, ValueError, KeyError):
        needs_dataset = False
    if not needs_dataset:  # one trial call: a factory that fails is refused now, not halfway through a command
        with torch.random.fork_rng(devices=[]):
            _call_factory(obj, arch, omit_dataset=True)
    name = attr.split(".")[-1].lower()
    if name in ARCH_NAMES:
        raise _factory_error(arch, f"the factory's name {name!r} is a built-in architecture's; rename the factory")
    key = register(name, obj)
    object.__setattr__(_REGISTRY[key], "path", arch)
    return key


def registered(name: str) -> Registered | None:
    """The registration of a user architecture (None for a built-in or unknown name)."""
    return _REGISTRY.get(name.lower()) if isinstance(name, str) else None


def _check_name(name: object, dataset: object) -> tuple[str, str | None]:
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, one of {ARCH_NAMES}; got {type(name).__name__}")
    key = name.lower()
    if key not in ARCH_NAMES and key not in _REGISTRY:
        extra = f" or a registered one ({', '.join(_REGISTRY)})" if _REGISTRY else ""
        raise ValueError(f"name: unknown architecture {name!r}; expected one of {', '.join(ARCH_NAMES)}{extra} "
                         f"(user architectures: archs.register, or --arch package.module:factory)")
    if key == "siren":
        return key, None
    if not isinstance(dataset, str):
        raise TypeError(f"dataset: expected a str, one of {tuple(DATASETS)}; got {type(dataset).__name__}")
    ds = dataset.lower()
    if ds not in DATASETS:
        raise ValueError(f"dataset: unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    reg = _REGISTRY.get(key)
    if reg is not None and reg.datasets is not None and ds not in reg.datasets:
        raise ValueError(f"dataset: {key} is registered for {', '.join(reg.datasets)}, got {dataset!r}")
    return key, ds


def _declared_input_shape(module: nn.Module, name: str) -> tuple[int, ...] | None:
    """The input shape (C, H, W) a factory's module declares in its ``input_shape`` attribute (a network
    made for one image geometry, such as a public zoo's 1x28x28 CNN), or None: the dataset's geometry."""
    shape = getattr(module, "input_shape", None)
    if shape is None:
        return None
    if (not isinstance(shape, (tuple, list)) or len(shape) != 3
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise ValueError(f"arch: {name!r}: the module's input_shape must be (channels, height, width) of positive "
                         f"ints, got {shape!r}")
    return tuple(shape)


@lru_cache(maxsize=None)
def _spec_cached(name: str, dataset: str | None) -> ArchSpec:
    if name in _REGISTRY:
        with torch.random.fork_rng(devices=[]):
            module = _REGISTRY[name].make(dataset)
        shape = _declared_input_shape(module, name)
        if shape is None:
            cin, size, _ = DATASETS[dataset]
            shape = (cin, size, size)
        x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))  # the global RNG untouched
        return spec_from_module(module, x, name=name, dataset=dataset)
    if name == "siren":
        return _siren()
    if name == "lenetlike":
        return _lenetlike(dataset)
    if name == "vanillacnn":
        return _vanillacnn(dataset)
    return _resnet(int(name[len("resnet"):]), dataset)


def spec(name: str, dataset: str = "cifar10") -> ArchSpec:
    """The static description of the BN-free network ``name`` for ``dataset`` (ignored for siren)."""
    return _spec_cached(*_check_name(name, dataset))


def spec_hash(spec_: ArchSpec) -> str:
    """A short digest of everything a spec fixes (layers, packing order, input and output shapes):
    what a zoo manifest records, so a reopened zoo knows its architecture has not changed."""
    import hashlib

    text = repr((spec_.input_shape, spec_.num_outputs, spec_.layers, spec_.pack_order))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def spec_from_module(module: nn.Module, example_input: torch.Tensor, *, name: str | None = None,
                     dataset: str | None = None, class_id: int | None = None) -> ArchSpec:
    """The :class:`ArchSpec` of a user's ``nn.Module``, traced with torch.fx on ``example_input``
    (details and the supported operations: :mod:`netspace_fast._trace`)."""
    import sys

    from ._trace import spec_from_module as trace

    return trace(module, example_input, archs=sys.modules[__name__], name=name, dataset=dataset, class_id=class_id)


def apply_activation(x: torch.Tensor, act: str, act_arg: float | None = None) -> torch.Tensor:
    """The activation ``act`` (one of :data:`ACTIVATIONS`) of ``x``: the reference semantics."""
    if act == "none":
        return x
    if act == "leaky_relu":
        return F.leaky_relu(x, LEAKY_SLOPE if act_arg is None else act_arg)
    if act == "sin":
        return torch.sin((SIREN_W0 if act_arg is None else act_arg) * x)
    if act == "relu":
        return F.relu(x)
    if act == "gelu":
        return F.gelu(x)
    if act == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if act == "silu":
        return F.silu(x)
    if act == "tanh":
        return torch.tanh(x)
    if act == "sigmoid":
        return torch.sigmoid(x)
    raise AssertionError(act)  # pragma: no cover - LayerSpec checks act


def layer_op(layer: LayerSpec, h: torch.Tensor, weight: torch.Tensor | None = None,
             bias: torch.Tensor | None = None) -> torch.Tensor:
    """The layer's operation on one network's ``h`` (before BatchNorm, residual and activation)."""
    kind = layer.kind
    if kind == "conv":
        return F.conv2d(h, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    if kind == "linear":
        return F.linear(h, weight, bias)
    if kind == "avgpool":
        return F.avg_pool2d(h, layer.kernel, layer.stride, layer.padding, False, layer.count_include_pad)
    if kind == "maxpool":
        return F.max_pool2d(h, layer.kernel, layer.stride, layer.padding, layer.dilation)
    if kind == "adaptive_avgpool":
        return F.adaptive_avg_pool2d(h, layer.output_size)
    if kind == "flatten":
        return h.flatten(1)
    return h  # "act"


def spec_forward(spec_: ArchSpec, params: dict[str, torch.Tensor], x: torch.Tensor,
                 bn: dict[str, nn.Module] | None = None) -> torch.Tensor:
    """Run the network described by ``spec_`` with parameters ``params`` on ``x`` (pure PyTorch).

    ``bn`` maps BatchNorm paths to modules for the BN form; None runs the BN-free form. This is
    the reference semantics of an architecture: :class:`SpecNet` forwards through it.
    """
    values = {0: x}
    for layer in spec_.layers:
        h = values[layer.src]
        if layer.kind in ("conv", "linear"):
            y = layer_op(layer, h, params[f"{layer.name}.weight"], params.get(f"{layer.name}.bias"))
            if bn is not None and layer.bn is not None:
                y = bn[layer.bn](y)
        else:
            y = layer_op(layer, h)
        if layer.residual is not None:
            y = y + values[layer.residual]
        values[layer.dst] = apply_activation(y, layer.act, layer.act_arg)
    return values[spec_.layers[-1].dst]


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    *parents, leaf = path.split(".")
    node = root
    for part in parents:
        if part not in node._modules:
            node.add_module(part, nn.Module())
        node = node._modules[part]
    node.add_module(leaf, module)


class SpecNet(nn.Module):
    """A network built from an :class:`ArchSpec`; ``batchnorm=False`` gives the folded (BN-free) form.

    Submodules are registered in the spec's packing order, each conv followed by its BatchNorm, so
    ``named_parameters()`` of the BN-free form is ``spec.params`` and ``state_dict()`` of the BN form
    has the original code's keys in its order (torchvision's for the ResNets)."""

    def __init__(self, spec_: ArchSpec, batchnorm: bool = True) -> None:
        super().__init__()
        self.spec = spec_
        self.batchnorm = bool(batchnorm and spec_.has_batchnorm)
        # modules are constructed in execution order (so a seed draws the same initial weights as it
        # always did) and registered in packing order
        made: dict[str, tuple[nn.Module, nn.Module | None]] = {}
        for layer in spec_.layers:
            use_bn = self.batchnorm and layer.bn is not None
            # the trained form: the layer's own bias; the BN-free form: a bias wherever it has a BN
            bias = layer.bias if use_bn else layer.has_bias
            if layer.kind == "conv":
                made[layer.name] = (nn.Conv2d(layer.in_features, layer.out_features, layer.kernel, layer.stride,
                                              layer.padding, layer.dilation, layer.groups, bias=bias),
                                    nn.BatchNorm2d(layer.out_features) if use_bn else None)
            elif layer.kind == "linear":
                made[layer.name] = (nn.Linear(layer.in_features, layer.out_features, bias=bias),
                                    nn.BatchNorm1d(layer.out_features) if use_bn else None)
        for layer in spec_.pack_layers:
            module, bn = made[layer.name]
            _set_submodule(self, layer.name, module)
            if bn is not None:
                _set_submodule(self, layer.bn, bn)
        # (path -> module) tables so forward does no attribute walking
        self._layer_modules = {
            layer.name: self.get_submodule(layer.name) for layer in spec_.layers if layer.kind in ("conv", "linear")
        }
        self._bn_modules = (
            {layer.bn: self.get_submodule(layer.bn) for layer in spec_.layers if layer.bn is not None}
            if self.batchnorm else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = {}
        for name, mod in self._layer_modules.items():
            params[f"{name}.weight"] = mod.weight
            if mod.bias is not None:
                params[f"{name}.bias"] = mod.bias
        return spec_forward(self.spec, params, x, self._bn_modules)

    def extra_repr(self) -> str:
        return f"arch={self.spec.name}, dataset={self.spec.dataset}, batchnorm={self.batchnorm}"


def _siren_init(model: SpecNet) -> None:
    # METHOD.md section 2: first layer U(-1/fan_in, 1/fan_in), the others U(+-sqrt(6/fan_in)/30)
    with torch.no_grad():
        for i, layer in enumerate(model.spec.layers):
            lin = model.get_submodule(layer.name)
            fan_in = lin.weight.shape[1]
            bound = 1.0 / fan_in if i == 0 else math.sqrt(6.0 / fan_in) / SIREN_W0
            lin.weight.uniform_(-bound, bound)


def build(name: str, dataset: str = "cifar10", *, batchnorm: bool = True) -> SpecNet:
    """Build architecture ``name`` for ``dataset``.

    ``batchnorm=False`` gives the BN-free (folded) form: convs that the trained form follows with a
    BatchNorm get a bias instead. LeNetLike, VanillaCNN and the SIREN MLP have no BatchNorm, so both
    forms are the same network.
    """
    if not isinstance(batchnorm, bool):
        raise TypeError(f"batchnorm: expected a bool, got {type(batchnorm).__name__}")
    s = spec(name, dataset)
    reg = _REGISTRY.get(s.name)
    if reg is not None and batchnorm:  # the factory's own initialization, in the spec's module form
        module = reg.make(s.dataset)
        with torch.device("meta"):
            model = SpecNet(s, batchnorm=True)
        model.load_state_dict(module.state_dict(), strict=True, assign=True)
        return model
    model = SpecNet(s, batchnorm=batchnorm)
    if s.name == "siren":
        _siren_init(model)
    return model
