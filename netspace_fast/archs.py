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
ACTIVATIONS = ("none", "leaky_relu", "sin")


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

    kind: 'conv', 'linear', 'avgpool' or 'flatten'. For conv/linear, ``name`` is the module path
    in the BN-free module (its parameters are ``name.weight`` and ``name.bias``) and ``bn`` the
    path of the BatchNorm that follows it in the trained (BN) form, or None.
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
            if layer.kind == "conv":
                k = layer.kernel
                params.append(ParamSpec(f"{layer.name}.weight", (layer.out_features, layer.in_features, k, k)))
                params.append(ParamSpec(f"{layer.name}.bias", (layer.out_features,)))
            elif layer.kind == "linear":
                params.append(ParamSpec(f"{layer.name}.weight", (layer.out_features, layer.in_features)))
                params.append(ParamSpec(f"{layer.name}.bias", (layer.out_features,)))
        object.__setattr__(self, "params", tuple(params))

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
                # the conv loses its bias, the BN brings gamma and beta
                extra += layer.out_features
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
              act="leaky_relu", bn="bn1")
    order = ["conv1"]  # packing order: torchvision's registration order (block: conv1, conv2, downsample)
    c = 16
    for stage, (width, stride) in enumerate([(16, 1), (32, 2), (64, 2)], 1):
        for b in range(n):
            s = stride if b == 0 else 1
            p = f"layer{stage}.{b}"
            h = g.add("conv", v, name=f"{p}.conv1", in_features=c, out_features=width, kernel=3, stride=s,
                      padding=1, act="leaky_relu", bn=f"{p}.bn1")
            order += [f"{p}.conv1", f"{p}.conv2"]
            # the downsample conv runs before conv2 (conv2's epilogue adds it) but is packed after it
            if s != 1 or c != width:
                short = g.add("conv", v, name=f"{p}.downsample.0", in_features=c, out_features=width, kernel=1,
                              stride=s, padding=0, bn=f"{p}.downsample.1")
                order.append(f"{p}.downsample.0")
            else:
                short = v
            v = g.add("conv", h, name=f"{p}.conv2", in_features=width, out_features=width, kernel=3, stride=1,
                      padding=1, act="leaky_relu", residual=short, bn=f"{p}.bn2")
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


def _check_name(name: object, dataset: object) -> tuple[str, str | None]:
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, one of {ARCH_NAMES}; got {type(name).__name__}")
    key = name.lower()
    if key not in ARCH_NAMES:
        raise ValueError(f"name: unknown architecture {name!r}; expected one of {', '.join(ARCH_NAMES)}")
    if key == "siren":
        return key, None
    if not isinstance(dataset, str):
        raise TypeError(f"dataset: expected a str, one of {tuple(DATASETS)}; got {type(dataset).__name__}")
    ds = dataset.lower()
    if ds not in DATASETS:
        raise ValueError(f"dataset: unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    return key, ds


@lru_cache(maxsize=None)
def _spec_cached(name: str, dataset: str | None) -> ArchSpec:
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


def _apply_act(x: torch.Tensor, act: str) -> torch.Tensor:
    if act == "leaky_relu":
        return F.leaky_relu(x, LEAKY_SLOPE)
    if act == "sin":
        return torch.sin(SIREN_W0 * x)
    return x


def spec_forward(spec_: ArchSpec, params: dict[str, torch.Tensor], x: torch.Tensor,
                 bn: dict[str, nn.Module] | None = None) -> torch.Tensor:
    """Run the network described by ``spec_`` with parameters ``params`` on ``x`` (pure PyTorch).

    ``bn`` maps BatchNorm paths to modules for the BN form; None runs the BN-free form. This is
    the reference semantics of an architecture: :class:`SpecNet` forwards through it.
    """
    values = {0: x}
    for layer in spec_.layers:
        h = values[layer.src]
        if layer.kind == "conv":
            y = F.conv2d(h, params[f"{layer.name}.weight"], params.get(f"{layer.name}.bias"), layer.stride,
                         layer.padding)
            if bn is not None and layer.bn is not None:
                y = bn[layer.bn](y)
        elif layer.kind == "linear":
            y = F.linear(h, params[f"{layer.name}.weight"], params.get(f"{layer.name}.bias"))
        elif layer.kind == "avgpool":
            y = F.avg_pool2d(h, layer.kernel, layer.stride)
        elif layer.kind == "flatten":
            y = h.flatten(1)
        else:  # pragma: no cover - specs are built here
            raise AssertionError(layer.kind)
        if layer.residual is not None:
            y = y + values[layer.residual]
        values[layer.dst] = _apply_act(y, layer.act)
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
            if layer.kind == "conv":
                made[layer.name] = (nn.Conv2d(layer.in_features, layer.out_features, layer.kernel, layer.stride,
                                              layer.padding, bias=not use_bn),
                                    nn.BatchNorm2d(layer.out_features) if use_bn else None)
            elif layer.kind == "linear":
                made[layer.name] = (nn.Linear(layer.in_features, layer.out_features), None)
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
    model = SpecNet(s, batchnorm=batchnorm)
    if s.name == "siren":
        _siren_init(model)
    return model
