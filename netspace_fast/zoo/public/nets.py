"""The public zoos' networks, written here as ordinary modules under their sources' state-dict names,
and made architectures by name (traced to specs by :func:`netspace_fast.archs.spec_from_module`).

**HSG-AIML Model Zoos** (``code/model_definitions/def_net.py`` of ModelZoos/ModelZooDataset): a
network is an ``nn.ModuleList`` named ``module_list``, run in order; its state dict's keys are
``module_list.<index>.weight`` / ``.bias``, so the index of every layer counts the pooling,
activation and dropout modules before it. A conv block is conv, max-pool 2x2 (where the block has
one), the activation (it comes *after* the pooling), dropout; then flatten, a linear layer, the
activation, dropout, the output layer (10 classes):

- ``CNN`` (their small CNN, CNN-s; 28x28 inputs): conv 5x5 to 8, pool; conv 5x5 to 6, pool; conv 2x2
  to 4 (no pool); linear 36 -> 20 -> 10. Dropout modules only where the config's dropout is > 0
  (then the layers sit at 0, 4, 8, 11, 14; without them at 0, 3, 6, 9, 11, the indices of their
  ``dataset_base.py``'s small-zoo layer list);
- ``CNN2``: the same with 6, 9 and 6 channels (linear 54 -> 20 -> 10);
- ``CNN3`` (their large CNN, CNN-l; 32x32): conv 3x3 to 16, 32 and 15 channels, each pooled; linear
  60 -> 20 -> 10; dropout modules always (layers at 0, 4, 8, 13, 16, their large-zoo list);
- ``Resnet18``: torchvision's ResNet-18 (``BasicBlock``, [2, 2, 2, 2]) with a 3x3 stride-1 stem
  conv without bias and no max-pool (32x32 inputs), ``o_dim`` classes; torchvision's names
  (``conv1``, ``bn1``, ``layer1.0.conv1`` .. ``layer4.1.bn2``, ``layer2.0.downsample.0``/``.1``, ``fc``).

The activation is the config's ``model::nlin``: leakyrelu (slope 0.01), relu, tanh, sigmoid, silu,
gelu. Dropout is the identity in eval mode: it changes the names, not the network.

**Small CNN Zoo** (google-research ``dnn_predict_accuracy/train_network.py``, Keras): three 3x3
convolutions of 16 units with stride 2 and no padding ("valid"), each followed by the activation
(and dropout), global average pooling, a dense layer to 10 classes; 4,970 parameters on grayscale
inputs. Named here as Keras names the layers of a ``Sequential``: ``conv2d``, ``conv2d_1``,
``conv2d_2``, ``dense``.

Every architecture has a name saying what it is, its input geometry included (C x S):

- ``modelzoo_<cnn|cnn2|cnn3>_<nlin>_<C>x<S>`` and, for CNN / CNN2 built with dropout modules,
  ``..._dropout`` (e.g. ``modelzoo_cnn_tanh_1x28``);
- ``modelzoo_resnet18_<C>x32_<classes>`` (e.g. ``modelzoo_resnet18_3x32_10``);
- ``smallcnnzoo_<activation>_1x<S>`` (e.g. ``smallcnnzoo_relu_1x28``).

Each name is a factory of this module (``netspace_fast.zoo.public.nets:<name>``, made on first use),
returning the module with an ``input_shape`` attribute (C, S, S): the path a zoo's config records for
its architectures (``user_archs``), so the zoo reopens anywhere this package imports.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

__all__ = ["MODELZOO_ACTIVATIONS", "MODELZOO_KINDS", "SMALLCNNZOO_ACTIVATIONS", "ModelZooCNN", "ModelZooResNet18",
           "SmallCNNZooNet", "modelzoo_name", "smallcnnzoo_name"]

MODELZOO_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "leakyrelu": nn.LeakyReLU, "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "silu": nn.SiLU,
    "gelu": nn.GELU}
#: model::type -> (conv blocks (out channels, kernel, pooled), fc hidden, input side, dropout modules always)
MODELZOO_KINDS: dict[str, tuple[tuple[tuple[int, int, bool], ...], int, int, bool]] = {
    "CNN": (((8, 5, True), (6, 5, True), (4, 2, False)), 20, 28, False),
    "CNN2": (((6, 5, True), (9, 5, True), (6, 2, False)), 20, 28, False),
    "CNN3": (((16, 3, True), (32, 3, True), (15, 3, True)), 20, 32, True),
}
SMALLCNNZOO_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh,
                                                               "sigmoid": nn.Sigmoid}
_CLASSES = 10


def _side_after(side: int, blocks) -> int:
    for _, k, pooled in blocks:
        side = side - k + 1
        if pooled:
            side //= 2
    return side


class ModelZooCNN(nn.Module):
    """The Model Zoos' ``CNN`` / ``CNN2`` / ``CNN3`` (module doc) for ``channels`` input channels."""

    def __init__(self, kind: str, channels: int, nlin: str, dropout: bool) -> None:
        super().__init__()
        blocks, hidden, side, always = MODELZOO_KINDS[kind]
        act = MODELZOO_ACTIVATIONS[nlin]
        drop = dropout or always
        layers: list[nn.Module] = []
        cin = channels
        for cout, k, pooled in blocks:
            layers.append(nn.Conv2d(cin, cout, k))
            if pooled:
                layers.append(nn.MaxPool2d(2, 2))
            layers.append(act())
            if drop and (pooled or always):  # CNN / CNN2 have no dropout after their unpooled third conv
                layers.append(nn.Dropout())
            cin = cout
        flat = cin * _side_after(side, blocks) ** 2
        layers += [nn.Flatten(), nn.Linear(flat, hidden), act()]
        if drop:
            layers.append(nn.Dropout())
        layers.append(nn.Linear(hidden, _CLASSES))
        self.module_list = nn.ModuleList(layers)
        self.input_shape = (channels, side, side)

    def forward(self, x):
        for layer in self.module_list:
            x = layer(x)
        return x


class _BasicBlock(nn.Module):
    """torchvision's ``BasicBlock`` (names, registration order, forward), written here."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ModelZooResNet18(nn.Module):
    """The Model Zoos' ``Resnet18`` (module doc): ``channels`` inputs of 32x32, ``classes`` outputs."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.Identity()  # their stem keeps the 32x32 resolution
        cin = 64
        for i, (width, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), 1):
            self.add_module(f"layer{i}", nn.Sequential(_BasicBlock(cin, width, stride), _BasicBlock(width, width, 1)))
            cin = width
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, classes)
        self.input_shape = (channels, 32, 32)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


class SmallCNNZooNet(nn.Module):
    """The Small CNN Zoo's CNN (module doc) on grayscale ``side`` x ``side`` inputs."""

    def __init__(self, activation: str, side: int) -> None:
        super().__init__()
        self.conv2d = nn.Conv2d(1, 16, 3, stride=2)
        self.conv2d_1 = nn.Conv2d(16, 16, 3, stride=2)
        self.conv2d_2 = nn.Conv2d(16, 16, 3, stride=2)
        self.dense = nn.Linear(16, _CLASSES)
        self.act = SMALLCNNZOO_ACTIVATIONS[activation]()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.input_shape = (1, side, side)

    def forward(self, x):
        x = self.act(self.conv2d_2(self.act(self.conv2d_1(self.act(self.conv2d(x))))))
        return self.dense(self.pool(x).flatten(1))


# ---------------------------------------------------------------------------------------------
# names <-> networks


def modelzoo_name(kind: str, nlin: str, channels: int, dropout: bool = False, classes: int = _CLASSES) -> str:
    """The architecture name of a Model Zoos network (module doc); ``dropout`` counts for CNN / CNN2 only."""
    if kind == "Resnet18":
        return f"modelzoo_resnet18_{channels}x32_{classes}"
    side = MODELZOO_KINDS[kind][2]
    return f"modelzoo_{kind.lower()}_{nlin}_{channels}x{side}" + ("_dropout" if dropout and kind != "CNN3" else "")


def smallcnnzoo_name(activation: str, side: int) -> str:
    return f"smallcnnzoo_{activation}_1x{side}"


_NAME = re.compile(r"^(?:modelzoo_(?P<kind>cnn|cnn2|cnn3)_(?P<nlin>[a-z]+)_(?P<c>[13])x(?P<s>\d+)(?P<drop>_dropout)?"
                   r"|modelzoo_resnet18_(?P<rc>[13])x32_(?P<classes>\d+)"
                   r"|smallcnnzoo_(?P<act>[a-z]+)_1x(?P<side>\d+))$")


def _builder(name: str) -> Callable[[], nn.Module] | None:
    """How to make the network ``name`` names (module doc), or None when it names none."""
    m = _NAME.match(name)
    if m is None:
        return None
    if m["kind"]:
        kind, nlin, channels, dropout = m["kind"].upper(), m["nlin"], int(m["c"]), bool(m["drop"])
        if nlin not in MODELZOO_ACTIVATIONS or name != modelzoo_name(kind, nlin, channels, dropout):
            return None  # names only in their one spelling
        return lambda: ModelZooCNN(kind, channels, nlin, dropout)
    if m["rc"]:
        classes = int(m["classes"])
        return (lambda: ModelZooResNet18(int(m["rc"]), classes)) if classes >= 1 else None
    side = int(m["side"])
    if m["act"] not in SMALLCNNZOO_ACTIVATIONS or side < 15:  # three stride-2 3x3 convs need 15 pixels
        return None
    return lambda: SmallCNNZooNet(m["act"], side)


_FACTORIES: dict[str, Callable[[], nn.Module]] = {}


def __getattr__(name: str) -> Callable[[], nn.Module]:
    """``nets.<architecture name>``: the factory of that network (one object per name), so that
    ``netspace_fast.zoo.public.nets:<name>`` is an importable factory path (:func:`archs.resolve`)."""
    if name not in _FACTORIES:
        build = _builder(name)
        if build is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

        def factory() -> nn.Module:
            return build()

        factory.__name__ = factory.__qualname__ = name
        factory.__module__ = __name__
        _FACTORIES[name] = factory
    return _FACTORIES[name]
