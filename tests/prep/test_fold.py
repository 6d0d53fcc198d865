"""fold_bn (seed Sec. VI): BN-free networks computing the BN network's eval-mode function.

Tolerance: rel_err = max|folded(x) - bn_eval(x)| / max|bn_eval(x)| <= 1e-5 (float32)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netspace_fast import archs, fold_bn, pack_preps
from conftest import (CLASSIFIERS, DATASETS, RESNETS, flat_params, make_model, manual_fold_flat, random_input,
                      rel_err)


def _no_bn(m: nn.Module) -> bool:
    return not any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.modules())


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_fold_equivalence(name, dataset):
    for seed in range(2):
        torch.manual_seed(seed)
        m = make_model(name, dataset).eval()
        f = fold_bn(m)
        assert isinstance(f, archs.SpecNet) and f.batchnorm is False and _no_bn(f)
        assert f.spec == archs.spec(name, dataset)
        assert [(n, p.shape) for n, p in f.named_parameters()] == [
            (n, p.shape) for n, p in archs.build(name, dataset, batchnorm=False).named_parameters()]
        x = random_input(m)
        with torch.no_grad():
            assert rel_err(f.eval()(x), m(x)) <= 1e-5


@pytest.mark.parametrize("name", RESNETS)
def test_fold_values_match_oracle(name):
    m = make_model(name)
    f = fold_bn(m)
    expected = manual_fold_flat(m)
    got = flat_params(f).double()
    assert got.shape == expected.shape
    assert ((got - expected).abs() <= 1e-6 * expected.abs() + 1e-6 * expected.abs().max()).all()


def test_fold_single_returns_module_list_returns_list():
    m = make_model("resnet8")
    f = fold_bn(m)
    assert isinstance(f, nn.Module)
    out = fold_bn([m])
    assert isinstance(out, list) and len(out) == 1 and isinstance(out[0], nn.Module)
    out = fold_bn((m, m))
    assert isinstance(out, list) and len(out) == 2
    assert fold_bn([]) == []


def test_fold_mixed_list_grouped_in_order():
    specs = [("resnet8", "cifar10"), ("lenetlike", "cifar10"), ("resnet32", "tinyimagenet"), ("resnet8", "cifar10"),
             ("vanillacnn", "tinyimagenet"), ("resnet8", "tinyimagenet"), ("resnet32", "tinyimagenet")]
    models = [make_model(n, d).eval() for n, d in specs]
    models.append(archs.build("resnet8", "cifar10", batchnorm=False).eval())  # already BN-free
    models.append(archs.build("siren"))
    folded = fold_bn(models)
    assert isinstance(folded, list) and len(folded) == len(models)
    for m, f in zip(models, folded):
        assert f is not m
        assert f.spec == m.spec and f.batchnorm is False and _no_bn(f)
        x = random_input(m) if m.spec.name != "siren" else torch.randn(4, 3)
        with torch.no_grad():
            assert rel_err(f.eval()(x), m(x)) <= 1e-5
        # same folded values as folding this model alone
        assert torch.equal(flat_params(f), flat_params(fold_bn(m)))


def test_fold_bn_free_model_is_a_copy():
    m = archs.build("resnet8", batchnorm=False)
    f = fold_bn(m)
    assert f is not m
    assert torch.equal(flat_params(f), flat_params(m))
    with torch.no_grad():
        m.fc.weight.add_(1.0)
    assert not torch.equal(flat_params(f), flat_params(m))


def test_fold_result_does_not_alias_input():
    m = make_model("resnet8")
    f = fold_bn(m)
    before = flat_params(f).clone()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
        m.bn1.running_var.add_(1.0)
    assert torch.equal(flat_params(f), before)


def test_folded_models_are_independent():
    models = [make_model("resnet8") for _ in range(3)]
    folded = fold_bn(models)
    before = [flat_params(f).clone() for f in folded]
    with torch.no_grad():
        for p in folded[1].parameters():
            p.fill_(0.0)
    assert torch.equal(flat_params(folded[0]), before[0])
    assert torch.equal(flat_params(folded[2]), before[2])
    # and each one's buffers/hooks containers are its own
    assert folded[0]._parameters is not folded[1]._parameters
    assert folded[0].fc._parameters is not folded[1].fc._parameters


def test_folded_model_is_a_normal_module():
    m = make_model("resnet8", "tinyimagenet")
    f = fold_bn(m)
    # state dict loads into a freshly built BN-free network
    fresh = archs.build("resnet8", "tinyimagenet", batchnorm=False)
    fresh.load_state_dict(f.state_dict())
    x = random_input(m)
    with torch.no_grad():
        assert torch.equal(fresh(x), f(x))
    # trainable: gradients reach its parameters
    params = list(f.parameters())
    assert all(p.requires_grad and p.is_leaf for p in params)
    f(x).sum().backward()
    assert all(p.grad is not None for p in params)
    # and it packs like the BN model it came from
    with torch.no_grad():
        assert torch.equal(pack_preps(f, width=64), pack_preps(m, width=64))


def test_fold_keeps_training_flag():
    m = make_model("resnet8").train()
    assert fold_bn(m).training is True
    assert fold_bn(m.eval()).training is False


def test_fold_uses_running_stats_even_in_train_mode():
    m = make_model("resnet8").train()
    f = fold_bn(m)
    x = random_input(m)
    with torch.no_grad():
        assert rel_err(f(x), m.eval()(x)) <= 1e-5


def test_fold_custom_eps():
    m = make_model("resnet8")
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.eps = 1e-2
    f = fold_bn(m)
    x = random_input(m)
    with torch.no_grad():
        assert rel_err(f(x), m.eval()(x)) <= 1e-5


def test_fold_list_with_different_eps():
    """fold_bn(list) must give what folding each model alone gives, even if their BN eps differ."""
    a, b = make_model("resnet8"), make_model("resnet8")
    for mod in b.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.eps = 1e-3
    fa, fb = fold_bn([a, b])
    assert torch.equal(flat_params(fa), flat_params(fold_bn(a)))
    assert torch.equal(flat_params(fb), flat_params(fold_bn(b)))


def test_fold_rejects_foreign_objects():
    # (a user's own module is folded by its traced plan: tests/prep/test_pack_user_modules.py)
    with pytest.raises(TypeError, match="model_or_list"):
        fold_bn([make_model("resnet8"), "resnet8"])
    with pytest.raises(TypeError, match="model_or_list"):
        fold_bn("resnet8")


def test_fold_refuses_nothing_nonfinite_silently():
    """fold_bn does not check finiteness (it is a model transformation): NaN statistics give NaN
    parameters rather than an error, in the right place only."""
    m = make_model("resnet8")
    with torch.no_grad():
        m.bn1.running_var[2] = float("nan")
    f = fold_bn(m)
    assert torch.isnan(f.conv1.weight[2]).all() and torch.isnan(f.conv1.bias[2])
    assert torch.isfinite(f.conv1.weight[[0, 1, 3]]).all()
