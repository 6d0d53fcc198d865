"""archs.spec_from_module (torch.fx tracing), archs.register / resolve and the layer-spec checks."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netspace_fast import archs
from netspace_fast.archs import LayerSpec


@pytest.mark.parametrize("name", archs.ARCH_NAMES)
@pytest.mark.parametrize("dataset", ["cifar10", "tinyimagenet"])
def test_built_in_modules_trace_to_the_hand_written_specs(name, dataset):
    """One truth: the six built-in modules, traced, give exactly today's specs (layers, order, names,
    packing order, BatchNorms)."""
    want = archs.spec(name, dataset)
    model = archs.build(name, dataset)
    got = archs.spec_from_module(model, torch.randn(2, *want.input_shape), name=want.name, dataset=want.dataset,
                                 class_id=want.class_id)
    assert got == want
    assert got.pack_order == want.pack_order
    assert [p.name for p in got.params] == [p.name for p in want.params]


def vgg():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.SiLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(8, 10))


def test_a_user_module_traces_with_its_names_order_and_fusions():
    m = vgg()
    spec = archs.spec_from_module(m, torch.randn(2, 3, 32, 32), name="vgg", dataset="digits")
    assert [(layer.kind, layer.name, layer.act) for layer in spec.layers] == [
        ("conv", "0", "gelu"), ("maxpool", "", "none"), ("conv", "3", "silu"), ("adaptive_avgpool", "", "none"),
        ("flatten", "", "none"), ("linear", "9", "none")]
    conv = spec.layers[2]
    assert conv.groups == 8 and conv.bn == "4" and conv.bias is False and conv.weight_shape == (8, 1, 3, 3)
    assert spec.input_shape == (3, 32, 32) and spec.num_outputs == 10 and spec.class_id is None
    # parameters in registration order; the BN-free form has the folded bias
    assert [p.name for p in spec.params] == ["0.weight", "0.bias", "3.weight", "3.bias", "9.weight", "9.bias"]
    net = archs.SpecNet(spec)
    net.load_state_dict(m.state_dict(), strict=True)  # the user's state dict loads strictly
    x = torch.randn(4, 3, 32, 32)
    m.eval(), net.eval()
    assert torch.equal(net(x), m(x))
    assert spec.num_params_bn == sum(p.numel() for p in m.parameters())


def test_torchvision_resnet18_traces_and_reproduces_itself():
    torchvision = pytest.importorskip("torchvision")
    m = torchvision.models.resnet18(num_classes=10).eval()
    spec = archs.spec_from_module(m, torch.randn(2, 3, 32, 32))
    assert spec.name == "resnet"
    names = [n for n, _ in m.named_parameters() if ".bn" not in n and "downsample.1" not in n and
             not n.startswith("bn1")]
    assert [p.name for p in spec.params if p.name.endswith("weight")] == [n for n in names if n.endswith("weight")]
    # the downsample add went into the later-computed conv's epilogue: torchvision runs conv2 first
    ds = next(layer for layer in spec.layers if layer.name == "layer2.0.downsample.0")
    assert ds.residual is not None and ds.act == "relu"
    net = archs.SpecNet(spec)
    net.load_state_dict(m.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    # the same calls on the same tensors in one process (a + b == b + a in floats): equal to the bit
    assert torch.equal(net.eval()(x), m(x))


class Functional(nn.Module):
    """Functional forms: F.relu, torch.flatten, x.view(x.size(0), -1), sin(w0 x), F.conv2d on own params."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(2, 3, (1, 3), stride=(1, 2), padding=(0, 1), dilation=(1, 2))
        self.l1 = nn.Linear(3 * 4 * 1, 5)
        self.l2 = nn.Linear(5, 2, bias=False)

    def forward(self, x):
        h = F.leaky_relu(F.conv2d(x, self.c.weight, self.c.bias, (1, 2), (0, 1), (1, 2)), 0.3)
        h = F.avg_pool2d(h, 2)
        h = h.view(h.size(0), -1)
        h = torch.sin(7.0 * self.l1(h))
        return torch.tanh(self.l2(h))


def test_functional_forms():
    m = Functional()
    x = torch.randn(3, 2, 8, 8)
    spec = archs.spec_from_module(m, x)
    kinds = [(layer.kind, layer.act, layer.act_arg) for layer in spec.layers]
    assert kinds == [("conv", "leaky_relu", 0.3), ("avgpool", "none", None), ("flatten", "none", None),
                     ("linear", "sin", 7.0), ("linear", "tanh", None)]
    c = spec.layers[0]
    assert (c.kernel, c.stride, c.padding, c.dilation) == ((1, 3), (1, 2), (0, 1), (1, 2))
    assert spec.layers[-1].bias is False
    assert torch.equal(archs.spec_forward(spec, dict(m.named_parameters()), x), m(x))  # the same calls


class Adds(nn.Module):
    """A residual of two activations (no conv to fuse into): a layer of kind 'act'."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return F.gelu(h + torch.tanh(self.b(h)))


def test_an_addition_without_a_layer_to_join_is_an_act_layer():
    m = Adds()
    spec = archs.spec_from_module(m, torch.randn(2, 4))
    assert [(layer.kind, layer.act, layer.residual is not None) for layer in spec.layers] == [
        ("linear", "relu", False), ("linear", "tanh", False), ("act", "gelu", True)]


class Norm(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.LayerNorm([4, 4, 4]))

    def forward(self, x):
        return self.features(x).flatten(1)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return self.fc(x)
        return -self.fc(x)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.att = nn.MultiheadAttention(4, 2, batch_first=True)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.att(x, x, x)[0].mean(1))


class BnAfterAct(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.bn(torch.relu(self.c(x))), 1).flatten(1))


class Product(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        return self.b(self.a(x) * x)


class SetItem(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 2)

    def forward(self, x):
        y = self.a(x)
        y[:, 0] = 0
        return y


@pytest.mark.parametrize("module,x,message", [
    (Norm(), torch.randn(2, 3, 8, 8), "features.3: nn.LayerNorm is not supported"),
    (Attention(), torch.randn(2, 3, 4), "att: nn.MultiheadAttention is not supported"),
    (BnAfterAct(), torch.randn(2, 3, 8, 8), "bn: nn.BatchNorm2d is supported only right after a conv or linear"),
    (Product(), torch.randn(2, 4), "operator.mul of two tensors is not supported"),
    (SetItem(), torch.randn(2, 4), "module: SetItem cannot be traced by torch.fx"),
    (Branchy(), torch.randn(2, 4), "cannot be traced by torch.fx"),
])
def test_unsupported_operations_are_refused_in_one_line(module, x, message):
    with pytest.raises(ValueError) as e:
        archs.spec_from_module(module, x)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="module: expected a torch.nn.Module"):
        archs.spec_from_module("net", torch.zeros(1, 3))
    with pytest.raises(TypeError, match="example_input: expected a Tensor"):
        archs.spec_from_module(vgg(), [1, 2])
    with pytest.raises(ValueError, match="example_input: expected a batch"):
        archs.spec_from_module(vgg(), torch.zeros(32))
    with pytest.raises(ValueError, match="example_input: the module fails on an input of shape"):
        archs.spec_from_module(vgg(), torch.zeros(2, 4, 32, 32))
    with pytest.raises(ValueError, match="act: expected one of"):
        LayerSpec("act", 0, 1, act="swish")
    with pytest.raises(ValueError, match="groups: expected a positive divisor"):
        LayerSpec("conv", 0, 1, name="c", in_features=4, out_features=6, groups=4)


@pytest.fixture
def user_module(monkeypatch):
    mod = types.ModuleType("user_nets_for_tests")

    def small(dataset="digits"):
        return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 15 * 15, 10))

    small.__module__ = mod.__name__
    mod.small = small
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    yield mod
    archs._REGISTRY.pop("small", None)
    archs._REGISTRY.pop("mine", None)
    archs._spec_cached.cache_clear()


def test_register_and_resolve(user_module):
    assert archs.resolve("user_nets_for_tests:small") == "small"
    reg = archs.registered("small")
    assert reg.path == "user_nets_for_tests:small"
    spec = archs.spec("small", "digits")
    assert spec.name == "small" and spec.dataset == "digits" and not spec.fast
    torch.manual_seed(3)
    a = archs.build("small", "digits")
    torch.manual_seed(3)
    b = user_module.small()
    for (n1, p1), (n2, p2) in zip(a.state_dict().items(), b.state_dict().items()):  # the factory's own init
        assert n1 == n2 and torch.equal(p1, p2)
    assert archs.register("mine", user_module.small, datasets=["digits"]) == "mine"
    with pytest.raises(ValueError, match="dataset: mine is registered for digits"):
        archs.spec("mine", "cifar10")
    with pytest.raises(ValueError, match="is a built-in architecture"):
        archs.register("LeNetLike", user_module.small)
    with pytest.raises(ValueError, match="cannot import 'no_such_pkg.mod'"):
        archs.resolve("no_such_pkg.mod:f")
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        archs.resolve("user_nets_for_tests:nope")
    with pytest.raises(ValueError, match="unknown architecture 'other'"):
        archs.spec("other", "digits")
