"""The public zoos' networks (netspace_fast/zoo/public/nets.py) as architectures: their sources' state
dicts load strictly into ours and compute the same outputs; the traced specs have the sources' input
geometry, parameter counts and layer indices; names made on demand, refused when they name nothing;
and an ``input_shape`` a factory's module declares (netspace_fast/archs.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netspace_fast import archs
from netspace_fast.zoo.public import nets
from public_zoos import TheirCNN


def _fit(name: str, dataset: str, theirs: nn.Module) -> None:
    """``theirs``' state dict loads strictly into ``name`` and both compute the same logits."""
    archs.resolve(f"{nets.__name__}:{name}")
    ours = archs.build(name, dataset).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(3, *ours.spec.input_shape)
    with torch.no_grad():
        want, got = theirs.eval()(x), ours(x)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (got - want).abs().max()


@pytest.mark.parametrize("kind,nlin,channels,dropout,name,indices,params", [
    # their dataset_base.py's layer lists: small zoos (0, 3, 6, 9, 11), large zoos (0, 4, 8, 13, 16); the
    # paper's parameter counts: CNN-s 2,464 (grayscale) and 2,864 (colour), CNN-l 10,853
    ("CNN", "tanh", 1, 0.0, "modelzoo_cnn_tanh_1x28", (0, 3, 6, 9, 11), 2464),
    ("CNN", "gelu", 1, 0.5, "modelzoo_cnn_gelu_1x28_dropout", (0, 4, 8, 11, 14), 2464),
    ("CNN", "leakyrelu", 3, 0.0, "modelzoo_cnn_leakyrelu_3x28", (0, 3, 6, 9, 11), 2464 + 2 * 8 * 25),
    ("CNN3", "relu", 3, 0.0, "modelzoo_cnn3_relu_3x32", (0, 4, 8, 13, 16), 10853),
    ("CNN3", "sigmoid", 1, 0.5, "modelzoo_cnn3_sigmoid_1x32", (0, 4, 8, 13, 16), 10853 - 2 * 16 * 9),
])
def test_model_zoo_cnns_take_their_state_dicts(kind, nlin, channels, dropout, name, indices, params):
    assert nets.modelzoo_name(kind, nlin, channels, dropout > 0) == name
    torch.manual_seed(0)
    theirs = TheirCNN(kind, channels, nlin, dropout)
    _fit(name, "fashion-mnist", theirs)
    spec = archs.spec(name, "fashion-mnist")
    side = 28 if kind == "CNN" else 32
    assert spec.input_shape == (channels, side, side) and spec.num_outputs == 10 and spec.num_params == params
    assert [layer.name for layer in spec.pack_layers] == [f"module_list.{i}" for i in indices]
    # the pooling comes before the activation, as in their blocks
    kinds = [layer.kind for layer in spec.layers]
    assert kinds[:3] == ["conv", "maxpool", "act"]


def test_model_zoo_resnet18_is_their_torchvision_resnet():
    """Their Resnet18: torchvision's ResNet-18 with a 3x3 stride-1 stem conv without bias and no
    max-pool; a state dict of theirs (random BatchNorm statistics) loads into ours, same logits."""
    from torchvision.models.resnet import BasicBlock, ResNet

    torch.manual_seed(0)
    theirs = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=10)
    theirs.conv1 = nn.Conv2d(3, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)
    theirs.maxpool = nn.Identity()
    with torch.no_grad():
        for m in theirs.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
    name = nets.modelzoo_name("Resnet18", "relu", 3, classes=10)
    assert name == "modelzoo_resnet18_3x32_10"
    _fit(name, "cifar10", theirs)
    spec = archs.spec(name, "cifar10")
    assert spec.input_shape == (3, 32, 32) and spec.has_batchnorm
    assert spec.pack_order[:4] == ("conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1")
    assert "layer2.0.downsample.0" in spec.pack_order


def test_small_cnn_zoo_net():
    name = nets.smallcnnzoo_name("relu", 28)
    archs.resolve(f"{nets.__name__}:{name}")
    spec = archs.spec(name, "fashion-mnist")
    assert spec.input_shape == (1, 28, 28) and spec.num_params == 4970  # the README's 4,970 parameters
    assert spec.pack_order == ("conv2d", "conv2d_1", "conv2d_2", "dense")
    name = archs.resolve(f"{nets.__name__}:{nets.smallcnnzoo_name('tanh', 32)}")
    assert archs.spec(name, "cifar10").input_shape == (1, 32, 32)  # grayscale CIFAR-10


@pytest.mark.parametrize("name", ["modelzoo_cnn_swish_1x28", "modelzoo_cnn3_relu_3x32_dropout",
                                  "modelzoo_cnn_relu_1x32", "modelzoo_cnn_relu_2x28", "smallcnnzoo_selu_1x28",
                                  "smallcnnzoo_relu_1x8", "modelzoo_resnet18_3x32_0", "nothing"])
def test_names_that_name_no_network(name):
    with pytest.raises(AttributeError):
        getattr(nets, name)
    with pytest.raises(ValueError, match="arch: .* has no attribute"):
        archs.resolve(f"{nets.__name__}:{name}")


def test_factories_are_made_once():
    assert nets.modelzoo_cnn_tanh_1x28 is getattr(nets, "modelzoo_cnn_tanh_1x28")
    assert nets.modelzoo_cnn_tanh_1x28.__qualname__ == "modelzoo_cnn_tanh_1x28"


def test_declared_input_shape_is_checked():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.input_shape = (1, 0, 2)

        def forward(self, x):
            return self.fc(x.flatten(1))

    archs.register("odd_input", Odd)
    try:
        with pytest.raises(ValueError, match=r"arch: 'odd_input': the module's input_shape must be \(channels, "
                                             r"height, width\) of positive ints, got \(1, 0, 2\)"):
            archs.spec("odd_input", "digits")
    finally:
        archs._REGISTRY.pop("odd_input")
        archs._spec_cached.cache_clear()
