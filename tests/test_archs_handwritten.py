"""Every architecture against a plain, hand-written ``nn.Module``.

``SpecNet.forward`` runs ``archs.spec_forward``, the same code as the per-network reference loop of
the engine, so comparing those two proves nothing about the architectures. The modules here are
written from the architecture descriptions (docs/METHOD.md section 2, the docstrings of
netspace_fast/archs.py), with ordinary layers and an ordinary ``forward``, without any of the spec
machinery: LeNetLike, VanillaCNN (an ``nn.ModuleList``), the CIFAR ResNets with torchvision-style
BasicBlock names, and the SIREN MLP. Their state dicts load into ``archs.build`` with
``strict=True`` (same keys, same shapes), and they must compute the same function:

- ``SpecNet`` (BN form in eval mode with random BN statistics, and BN-free form) in float64:
  relative error <= 1e-12;
- ``batched_forward`` of their PReps, packed in the PRep order of METHOD.md section 4 (checked
  against a flatten-and-pad written here), in float32: outputs <= 1e-4 relative to the hand-written
  module's (float64, same float32 weights), and the PRep gradient against the hand-written module's
  parameter gradients, per layer slice (``assert_prep_grad_close``), <= 1e-4.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netspace_fast as nf
from netspace_fast import archs
from conftest import assert_prep_grad_close, randomize_bn, rel_err

SLOPE = 0.01  # METHOD.md section 2: LeakyReLU(0.01) in every classifier
GEOMETRY = {"cifar10": (32, 10), "tinyimagenet": (64, 200), "digits": (32, 10)}  # input size, classes


def act(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, SLOPE)


class LeNetLike(nn.Module):
    """CIFAR-10: conv(3->6, k5, s2) . conv(6->16, k5, s2) . fc(400->120) . fc(120->84) . fc(84->10);
    Tiny-ImageNet: conv(3->4, k5, s2, p2) . conv(4->8, k5, s2) . conv(8->16, k5, s2) . the same fcs
    (84->200). LeakyReLU after every layer but the last."""

    def __init__(self, dataset: str) -> None:
        super().__init__()
        classes = GEOMETRY[dataset][1]
        self.tiny = dataset == "tinyimagenet"
        if self.tiny:
            self.conv1 = nn.Conv2d(3, 4, 5, stride=2, padding=2)
            self.conv2 = nn.Conv2d(4, 8, 5, stride=2)
            self.conv3 = nn.Conv2d(8, 16, 5, stride=2)
        else:
            self.conv1 = nn.Conv2d(3, 6, 5, stride=2)
            self.conv2 = nn.Conv2d(6, 16, 5, stride=2)
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = act(self.conv1(x))
        x = act(self.conv2(x))
        if self.tiny:
            x = act(self.conv3(x))
        x = torch.flatten(x, 1)  # (16, 5, 5) in (c, h, w) order
        x = act(self.fc1(x))
        x = act(self.fc2(x))
        return self.fc3(x)


class VanillaCNN(nn.Module):
    """Five conv k3 p1 + LeakyReLU, (out, stride) = (8,2) (8,1) (32,2) (64,1) (64,2) on CIFAR-10 and
    (8,2) (16,2) (32,2) (64,2) (64,2) on Tiny-ImageNet, then fc(4*4*64 -> 10) / fc(2*2*64 -> 200),
    no activation; an nn.ModuleList ``layers.0`` .. ``layers.5``."""

    def __init__(self, dataset: str) -> None:
        super().__init__()
        size, classes = GEOMETRY[dataset]
        if dataset == "tinyimagenet":
            config = [(8, 2), (16, 2), (32, 2), (64, 2), (64, 2)]
        else:
            config = [(8, 2), (8, 1), (32, 2), (64, 1), (64, 2)]
        self.layers = nn.ModuleList()
        cin = 3
        for out, stride in config:
            self.layers.append(nn.Conv2d(cin, out, 3, stride=stride, padding=1))
            cin = out
            size = (size - 1) // stride + 1  # k3 p1
        self.layers.append(nn.Linear(size * size * 64, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.layers[:5]:
            x = act(conv(x))
        return self.layers[5](torch.flatten(x, 1))


def conv_bn(cin: int, cout: int, k: int, stride: int, padding: int, batchnorm: bool):
    """A conv followed by a BatchNorm in the trained form (no conv bias); BN-free: a conv with bias."""
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=not batchnorm)
    return conv, (nn.BatchNorm2d(cout) if batchnorm else nn.Identity())


class BasicBlock(nn.Module):
    """torchvision's BasicBlock with LeakyReLU: conv3x3(stride)-BN-act-conv3x3-BN, + shortcut, act.
    Registered conv1, bn1, conv2, bn2, downsample (its PRep order: conv1, conv2, downsample.0).
    The shortcut is ``downsample`` = conv1x1(stride, no padding) + BN when stride or width change."""

    def __init__(self, cin: int, cout: int, stride: int, batchnorm: bool) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(cin, cout, 3, stride, 1, batchnorm)
        self.conv2, self.bn2 = conv_bn(cout, cout, 3, 1, 1, batchnorm)
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(*conv_bn(cin, cout, 1, stride, 0, batchnorm))
        else:
            self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return act(out + shortcut)


class ResNet(nn.Module):
    """ResNet-(6n+2): stem conv3x3(3->16)+BN+act; stages of n BasicBlocks, widths 16/32/64, strides
    1/2/2 (first block of a stage); avg-pool k8 s8, flatten, fc (64 -> 10; 2*2*64 -> 200)."""

    def __init__(self, depth: int, dataset: str, batchnorm: bool = True) -> None:
        super().__init__()
        n = (depth - 2) // 6
        size, classes = GEOMETRY[dataset]
        self.conv1, self.bn1 = conv_bn(3, 16, 3, 1, 1, batchnorm)
        cin = 16
        for stage, (width, stride) in enumerate([(16, 1), (32, 2), (64, 2)], 1):
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(cin, width, stride if b == 0 else 1, batchnorm))
                cin = width
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        final = size // 4 // 8  # two stride-2 stages, then the 8x8 average pool
        self.fc = nn.Linear(64 * final * final, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = act(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.avg_pool2d(x, kernel_size=8, stride=8)
        return self.fc(torch.flatten(x, 1))


class Siren(nn.Module):
    """fc1(3->256) sin(30x), fc2(256->256) sin(30x), fc3(256->1)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc3 = nn.Linear(256, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.sin(30 * self.fc1(x))
        x = torch.sin(30 * self.fc2(x))
        return self.fc3(x)


def handwritten(name: str, dataset: str = "cifar10", batchnorm: bool = True) -> nn.Module:
    if name == "lenetlike":
        return LeNetLike(dataset)
    if name == "vanillacnn":
        return VanillaCNN(dataset)
    if name.startswith("resnet"):
        return ResNet(int(name[len("resnet"):]), dataset, batchnorm)
    assert name == "siren"
    return Siren()


def input_shape(name: str, dataset: str) -> tuple[int, ...]:
    return (3,) if name == "siren" else (3, GEOMETRY[dataset][0], GEOMETRY[dataset][0])


def scale_weights(model: nn.Module) -> nn.Module:
    """Weights with a trained network's spread (1/sqrt(fan_in)); SIREN keeps its own init range (its
    30 z stays O(1)) but gets non-zero biases. Every parameter a distinct random value."""
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                fan_in = math.prod(mod.weight.shape[1:])
                s = 0.1 if isinstance(model, Siren) else 1.0
                mod.weight.copy_(torch.randn_like(mod.weight) * s / math.sqrt(fan_in))
                if mod.bias is not None:
                    mod.bias.copy_(torch.randn_like(mod.bias) * 0.1 * s)
    return model


# every architecture on both datasets; the ResNets in the BN form and the BN-free form
FORMS = [(n, d, True) for d in ("cifar10", "tinyimagenet") for n in ("lenetlike", "vanillacnn")]
FORMS += [(n, d, bn) for d in ("cifar10", "tinyimagenet") for n in ("resnet8", "resnet32", "resnet56")
          for bn in (True, False)]
FORMS += [("resnet8", "digits", True), ("siren", "cifar10", True)]


def _id(form) -> str:
    n, d, bn = form
    return "siren" if n == "siren" else f"{n}-{d}-{'bn' if bn else 'nobn'}"


@pytest.mark.parametrize("form", FORMS, ids=_id)
def test_specnet_equals_handwritten_module(form):
    """Same state dict (strict, both ways), same outputs in float64 (BN form in eval mode with random
    statistics, so folding is not needed for them to agree)."""
    name, dataset, batchnorm = form
    ref = randomize_bn(scale_weights(handwritten(name, dataset, batchnorm))).double().eval()
    ours = archs.build(name, dataset, batchnorm=batchnorm).double().eval()
    assert list(ours.state_dict()) == list(ref.state_dict())  # the same keys, in the same order
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, *input_shape(name, dataset), dtype=torch.float64)
    with torch.no_grad():
        want = ref(x)
        got = ours(x)
    assert got.shape == want.shape == (2, 1 if name == "siren" else GEOMETRY[dataset][1])
    assert rel_err(got, want) <= 1e-12


def manual_prep(model: nn.Module, width: int) -> torch.Tensor:
    """The PRep of a BN-free hand-written module, written here (METHOD.md section 4): weight then bias
    of each layer in the original code's order (the modules above register their layers in it),
    flattened row-major, concatenated, zero-padded to (H, W), H = ceil(P / W) rounded up to 4."""
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    H = 4 * math.ceil(math.ceil(flat.numel() / width) / 4)
    return F.pad(flat, (0, H * width - flat.numel())).view(H, width)


BATCHED = [("lenetlike", "cifar10"), ("lenetlike", "tinyimagenet"), ("vanillacnn", "cifar10"),
           ("vanillacnn", "tinyimagenet"), ("resnet8", "cifar10"), ("resnet8", "tinyimagenet"),
           ("resnet32", "cifar10"), ("resnet56", "cifar10"), ("siren", "cifar10")]


@pytest.mark.parametrize("name,dataset", BATCHED, ids=lambda v: str(v))
def test_batched_forward_equals_handwritten_modules(name, dataset):
    """B = 2 hand-written BN-free networks: their PReps (pack_preps = the flatten-and-pad above),
    batched_forward on a shared batch and on per-network batches, against each module's own forward
    in float64; the PRep gradient against each module's parameter gradients, slice by slice."""
    B, N, width = 2, 2, 1024
    spec = archs.spec(name, dataset)
    models = [scale_weights(handwritten(name, dataset, batchnorm=False)) for _ in range(B)]
    assert [(n, tuple(p.shape)) for n, p in models[0].named_parameters()] == [(p.name, p.shape)
                                                                             for p in spec.params]
    preps = nf.pack_preps(models, width).detach()
    assert torch.equal(preps, torch.stack([manual_prep(m, width) for m in models]))
    preps.requires_grad_()
    refs = [m.double() for m in models]
    for shared in (True, False):
        x = torch.randn((N, *input_shape(name, dataset)) if shared else (B, N, *input_shape(name, dataset)))
        y = nf.batched_forward(spec, preps, x)
        assert y.shape == (B, N, spec.num_outputs)
        g = torch.randn_like(y)
        (gp,) = torch.autograd.grad(y, preps, g)
        want_grad = torch.zeros(B, preps[0].numel(), dtype=torch.float64)
        for b, m in enumerate(refs):
            m.zero_grad()
            want = m((x if shared else x[b]).double())
            assert rel_err(y[b], want) <= 1e-4, (b, rel_err(y[b], want))
            want.backward(g[b].double())
            grads = torch.cat([p.grad.reshape(-1) for p in m.parameters()])
            want_grad[b, :grads.numel()] = grads
        assert_prep_grad_close(gp.reshape(B, -1), want_grad, spec, 1e-4)


@pytest.mark.parametrize("name,dataset", [("resnet8", "cifar10"), ("resnet32", "tinyimagenet")], ids=str)
def test_batched_forward_of_folded_bn_equals_handwritten_bn_modules(name, dataset):
    """The BN form: hand-written modules with random BN statistics (eval mode), loaded into archs.build
    and packed (BatchNorm folded by pack_preps); batched_forward equals the hand-written BN forward."""
    B, N = 2, 2
    spec = archs.spec(name, dataset)
    refs = [randomize_bn(scale_weights(handwritten(name, dataset, True))).eval() for _ in range(B)]
    ours = []
    for r in refs:
        m = archs.build(name, dataset)
        m.load_state_dict(r.state_dict(), strict=True)
        ours.append(m.eval())
    preps = nf.pack_preps(ours, 1024)
    x = torch.randn(N, *input_shape(name, dataset))
    with torch.no_grad():
        y = nf.batched_forward(spec, preps, x)
        for b, r in enumerate(refs):
            want = r.double()(x.double())
            assert rel_err(y[b], want) <= 1e-4, (b, rel_err(y[b], want))
