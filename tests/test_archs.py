"""The zoo architectures (METHOD.md section 2): parameter counts of seed Table I, names and order,
ClassIds, output shapes, name checks, and the forward semantics against independent re-implementations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netspace_fast import archs
from conftest import CLASSIFIERS, DATASETS, RESNETS, TABLE_I, make_model, random_input, rel_err


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name,dataset", [k for k in TABLE_I if k[0] != "siren"], ids=lambda v: str(v))
def test_table_i_counts(name, dataset):
    expected = TABLE_I[(name, dataset)]
    model = archs.build(name, dataset)
    assert trainable(model) == expected
    assert archs.spec(name, dataset).num_params_bn == expected


def test_siren_count():
    model = archs.build("siren")
    assert trainable(model) == 67073
    assert archs.spec("siren").num_params == 67073
    assert archs.spec("siren").num_params_bn == 67073
    # the dataset is ignored for siren
    assert archs.spec("siren", "tinyimagenet") == archs.spec("siren")


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_digits_equals_cifar10(name):
    assert trainable(archs.build(name, "digits")) == TABLE_I[(name, "cifar10")]
    assert trainable(archs.build(name, "digits", batchnorm=False)) == trainable(
        archs.build(name, "cifar10", batchnorm=False))


def test_bn_free_resnet8_count():
    model = archs.build("resnet8", "cifar10", batchnorm=False)
    assert trainable(model) == 77706
    assert archs.spec("resnet8", "cifar10").num_params == 77706
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model.batchnorm is False


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("name", CLASSIFIERS + ("siren",))
def test_spec_params_match_bn_free_module(name, dataset):
    s = archs.spec(name, dataset)
    model = archs.build(name, dataset, batchnorm=False)
    got = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    assert got == [(p.name, p.shape) for p in s.params]
    assert s.num_params == sum(p.numel for p in s.params) == trainable(model)


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("name", RESNETS)
def test_bn_form_structure(name, dataset):
    s = archs.spec(name, dataset)
    model = archs.build(name, dataset)
    assert model.batchnorm is True and s.has_batchnorm
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns == [layer.bn for layer in s.pack_layers if layer.bn is not None]  # registration = packing order
    # every conv followed by a BN has no bias in the BN form (METHOD.md section 2)
    for layer in s.layers:
        if layer.bn is not None:
            assert model.get_submodule(layer.name).bias is None
    # BN form - BN-free form = one extra value per BN channel (gamma, beta instead of one bias)
    extra = sum(layer.out_features for layer in s.layers if layer.bn is not None)
    assert trainable(model) - trainable(archs.build(name, dataset, batchnorm=False)) == extra


@pytest.mark.parametrize("name", ("lenetlike", "vanillacnn", "siren"))
def test_no_bn_archs_have_one_form(name):
    a, b = archs.build(name), archs.build(name, batchnorm=False)
    assert a.batchnorm is False and b.batchnorm is False
    assert [(n, p.shape) for n, p in a.named_parameters()] == [(n, p.shape) for n, p in b.named_parameters()]


def test_class_ids():
    expected = {"lenetlike": 0, "vanillacnn": 1, "resnet8": 2, "resnet32": 3}
    assert archs.CLASS_IDS == expected
    for ds in DATASETS:
        for name, cid in expected.items():
            assert archs.spec(name, ds).class_id == cid
        assert archs.spec("resnet56", ds).class_id is None


@pytest.mark.parametrize("batchnorm", [True, False])
@pytest.mark.parametrize("dataset,size,classes", [("cifar10", 32, 10), ("tinyimagenet", 64, 200), ("digits", 32, 10)])
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_output_shapes(name, dataset, size, classes, batchnorm):
    model = archs.build(name, dataset, batchnorm=batchnorm).eval()
    assert model.spec.input_shape == (3, size, size)
    assert model.spec.num_outputs == classes
    with torch.no_grad():
        out = model(torch.randn(3, 3, size, size))
    assert out.shape == (3, classes)
    assert torch.isfinite(out).all()


def test_siren_output_shape():
    model = archs.build("siren")
    out = model(torch.randn(5, 3))
    assert out.shape == (5, 1)


@pytest.mark.parametrize("fn", [archs.build, archs.spec])
def test_unknown_architecture(fn):
    with pytest.raises(ValueError, match="name"):
        fn("resnet20", "cifar10")
    with pytest.raises(ValueError, match="name"):
        fn("", "cifar10")
    with pytest.raises(TypeError, match="name"):
        fn(None, "cifar10")


@pytest.mark.parametrize("fn", [archs.build, archs.spec])
def test_unknown_dataset(fn):
    with pytest.raises(ValueError, match="dataset"):
        fn("resnet8", "imagenet")
    with pytest.raises(ValueError, match="dataset"):
        fn("lenetlike", "svhn")
    with pytest.raises(TypeError, match="dataset"):
        fn("lenetlike", None)


def test_names_case_insensitive():
    assert archs.spec("ResNet8", "CIFAR10") == archs.spec("resnet8", "cifar10")


def test_build_batchnorm_must_be_bool():
    with pytest.raises(TypeError, match="batchnorm"):
        archs.build("resnet8", "cifar10", batchnorm=1)


def test_siren_init_ranges():
    model = archs.build("siren")
    assert model.fc1.weight.abs().max() <= 1.0 / 3
    bound = (6.0 / 256) ** 0.5 / 30
    assert model.fc2.weight.abs().max() <= bound
    assert model.fc3.weight.abs().max() <= bound


# ---------------------------------------------------------------------------------------------
# forward semantics vs. independent re-implementations of METHOD.md section 2

def _act(x):
    return F.leaky_relu(x, 0.01)


def _ref_lenetlike(p, x, dataset):
    if dataset == "tinyimagenet":
        x = _act(F.conv2d(x, p["conv1.weight"], p["conv1.bias"], 2, 2))
        x = _act(F.conv2d(x, p["conv2.weight"], p["conv2.bias"], 2))
        x = _act(F.conv2d(x, p["conv3.weight"], p["conv3.bias"], 2))
    else:
        x = _act(F.conv2d(x, p["conv1.weight"], p["conv1.bias"], 2))
        x = _act(F.conv2d(x, p["conv2.weight"], p["conv2.bias"], 2))
    x = x.flatten(1)
    assert x.shape[1] == 400
    x = _act(F.linear(x, p["fc1.weight"], p["fc1.bias"]))
    x = _act(F.linear(x, p["fc2.weight"], p["fc2.bias"]))
    return F.linear(x, p["fc3.weight"], p["fc3.bias"])


def _ref_vanillacnn(p, x, dataset):
    strides = (2, 2, 2, 2, 2) if dataset == "tinyimagenet" else (2, 1, 2, 1, 2)
    for i, s in enumerate(strides):  # the original's names: layers.0 .. layers.4 convs, layers.5 the fc
        x = _act(F.conv2d(x, p[f"layers.{i}.weight"], p[f"layers.{i}.bias"], s, 1))
    x = x.flatten(1)
    assert x.shape[1] == (256 if dataset == "tinyimagenet" else 1024)
    return F.linear(x, p["layers.5.weight"], p["layers.5.bias"])


def _ref_resnet(model, x, n):
    def bn(name, y):
        m = model.get_submodule(name)
        return F.batch_norm(y, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    def conv(name, y, stride, pad):
        m = model.get_submodule(name)
        return F.conv2d(y, m.weight, m.bias, stride, pad)

    x = _act(bn("bn1", conv("conv1", x, 1, 1)))
    c = 16
    for stage, (width, stride) in enumerate([(16, 1), (32, 2), (64, 2)], 1):
        for b in range(n):
            s = stride if b == 0 else 1
            pre = f"layer{stage}.{b}"
            h = _act(bn(f"{pre}.bn1", conv(f"{pre}.conv1", x, s, 1)))
            h = bn(f"{pre}.bn2", conv(f"{pre}.conv2", h, 1, 1))
            if s != 1 or c != width:
                short = bn(f"{pre}.downsample.1", conv(f"{pre}.downsample.0", x, s, 0))
            else:
                short = x
            x = _act(h + short)
            c = width
    x = F.avg_pool2d(x, 8).flatten(1)
    return F.linear(x, model.fc.weight, model.fc.bias)


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("name", ("lenetlike", "vanillacnn"))
def test_forward_matches_reference_plain(name, dataset):
    model = archs.build(name, dataset)
    x = random_input(model)
    p = dict(model.named_parameters())
    ref = (_ref_lenetlike if name == "lenetlike" else _ref_vanillacnn)(p, x, dataset)
    with torch.no_grad():
        assert rel_err(model(x), ref) <= 1e-6


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("name,n", [("resnet8", 1), ("resnet32", 5)])
def test_forward_matches_reference_resnet(name, n, dataset):
    model = make_model(name, dataset).eval()
    x = random_input(model)
    with torch.no_grad():
        ref = _ref_resnet(model, x, n)
        assert rel_err(model(x), ref) <= 1e-6


def test_forward_siren_matches_reference():
    model = archs.build("siren")
    x = torch.randn(7, 3)
    h = torch.sin(30 * F.linear(x, model.fc1.weight, model.fc1.bias))
    h = torch.sin(30 * F.linear(h, model.fc2.weight, model.fc2.bias))
    ref = F.linear(h, model.fc3.weight, model.fc3.bias)
    with torch.no_grad():
        assert rel_err(model(x), ref) <= 1e-6
