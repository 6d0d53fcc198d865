"""PReps of a user's own modules (not built by archs.build) with BatchNorm: pack_preps, PRepPacker,
fold_bn and PRepLayout.for_module fold them by the plan traced from their forward (or by ``spec=``),
so ``batched_forward(archs.spec_from_module(m, x), pack_preps(ms), x)`` is each module's eval-mode
output; a module that cannot be traced or folded is refused in one line; the built-in architectures
keep their path and results.

Tolerances as in conftest.py: folded vs BN networks in eval mode rel_err <= 1e-5 (float32); the
same kernel on the same values is bit-exact (the user route against the SpecNet route, the built-ins
against the op called with the plan written out from the spec here); folded values against the
float64 oracle |a - e| <= 1e-6 |e| + 1e-6 max|e| (test_fold.py's oracle test).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from netspace_fast import PRepLayout, PRepPacker, archs, fold_bn, load_prep, pack_preps
from netspace_fast.engine import batched_forward
from netspace_fast.ops.pack_preps import pack_preps as pack_op
from netspace_fast.ops.pack_preps_ref import COPY, FOLD_B, FOLD_W
from netspace_fast.prep import fold as fold_mod, user as user_mod
from conftest import all_forms, expected_rows, flat_params, form_id, make_model, manual_fold_flat, rel_err

ROOT = Path(__file__).resolve().parents[2]
WIDTH = 64


def _load(name: str, path: Path):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


random_nets = _load("random_nets", ROOT / "tests" / "engine" / "random_nets.py")


def randomize(m: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters (BatchNorm1d and 2d); eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, _BatchNorm):
                c = mod.num_features
                mod.running_mean.copy_(torch.randn(c, generator=g))
                mod.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                sign = torch.where(torch.rand(c, generator=g) < 0.5, -1.0, 1.0)
                mod.weight.copy_((torch.rand(c, generator=g) + 0.5) * sign)
                mod.bias.copy_(torch.randn(c, generator=g))
    return m.eval()


class UserNet(nn.Module):
    """A user's CNN: conv (no bias) + BatchNorm2d + ReLU, a conv with its own bias called
    functionally + BatchNorm2d, linear (no bias) + BatchNorm1d + tanh; the head registered first
    but run last (packing order = registration order, not execution order)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(16, 5)
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.proj = nn.Conv2d(8, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 2 * 2, 16, bias=False)
        self.bn1d = nn.BatchNorm1d(16)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        x = F.relu(self.bn2(F.conv2d(x, self.proj.weight, self.proj.bias)))
        x = F.adaptive_avg_pool2d(x, 2).flatten(1)
        return self.head(torch.tanh(self.bn1d(self.fc(x))))


def user_net(seed: int) -> UserNet:
    torch.manual_seed(seed)
    return randomize(UserNet(), seed)


X_SHAPE = (3, 8, 8)


def loaded_specnets(mods, spec):
    """What a user had to write before: each state dict loaded into archs.SpecNet(spec)."""
    nets = []
    for m in mods:
        net = archs.SpecNet(spec)
        net.load_state_dict(m.state_dict(), strict=True)
        nets.append(net.eval())
    return nets


def one_line_refusal(fn, *fragments) -> str:
    with pytest.raises(ValueError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, (f, msg)
    return msg


# ---------------------------------------------------------------------------------------------
# the user's modules through batched_forward


@pytest.mark.parametrize("with_spec", [False, True], ids=["traced", "spec"])
def test_pack_user_bn_modules_matches_their_outputs(with_spec):
    mods = [user_net(s) for s in range(3)]
    x = torch.randn(4, *X_SHAPE)
    spec = archs.spec_from_module(mods[0], x)
    assert spec.has_batchnorm
    preps = pack_preps(mods, width=WIDTH, spec=spec if with_spec else None)
    assert preps.shape == (3, expected_rows(spec.num_params, WIDTH), WIDTH)
    with torch.no_grad():
        y = batched_forward(spec, preps.detach(), x)
        for b, m in enumerate(mods):
            assert rel_err(y[b], m(x)) <= 1e-5
    # what loading each state dict into archs.SpecNet(spec) gives, bit for bit (same kernel, same values)
    assert torch.equal(preps, pack_preps(loaded_specnets(mods, spec), width=WIDTH))
    # differentiable w.r.t. the modules' parameters, as for SpecNets
    preps.sum().backward()
    assert mods[0].bn.weight.grad is not None and mods[0].conv.weight.grad is not None


@pytest.mark.parametrize("with_spec", [False, True], ids=["traced", "spec"])
def test_packer_and_layout_of_user_modules(with_spec):
    mods = [user_net(s) for s in range(2)]
    spec = archs.spec_from_module(mods[0], torch.randn(2, *X_SHAPE))
    kw = {"spec": spec} if with_spec else {}
    packer = PRepPacker(mods, width=WIDTH, **kw)
    ref = pack_preps(mods, width=WIDTH, **kw).detach()
    assert torch.equal(packer(), ref)
    with torch.no_grad():
        mods[1].bn.running_var.mul_(2)  # in-place updates are seen
    assert torch.equal(packer(), pack_preps(mods, width=WIDTH).detach())
    assert not packer.is_stale()
    lay = PRepLayout.for_module(mods[0], WIDTH, **kw)
    assert lay.entries == PRepLayout.for_spec(spec, WIDTH).entries


def _example(module: str, factory: str) -> nn.Module:
    mod = _load(f"_example_{module}", ROOT / "examples" / f"{module}.py")
    return getattr(mod, factory)()


@pytest.mark.parametrize("module,factory", [("dsconv", "depthwise_separable"), ("my_vgg", "vgg_gelu")])
def test_pack_the_examples(module, factory):
    mods = []
    for s in range(2):
        torch.manual_seed(s)
        mods.append(randomize(_example(module, factory), s))
    x = torch.randn(3, 3, 32, 32)
    spec = archs.spec_from_module(mods[0], x)
    preps = pack_preps(mods, width=1024).detach()
    assert torch.equal(preps, pack_preps(loaded_specnets(mods, spec), width=1024))
    with torch.no_grad():
        y = batched_forward(spec, preps, x)
        for b, m in enumerate(mods):
            assert rel_err(y[b], m(x)) <= 1e-5


@settings(max_examples=15)
@given(random_nets.recipes())
def test_random_user_nets_pack_as_their_specnets(recipe):
    mods = [random_nets.build(recipe, s)[0] for s in range(2)]
    in_shape = random_nets.build(recipe, 0)[1]
    spec = archs.spec_from_module(mods[0], torch.randn(2, *in_shape))
    want = pack_preps(loaded_specnets(mods, spec), width=WIDTH)
    assert torch.equal(pack_preps(mods, width=WIDTH), want)
    assert torch.equal(pack_preps(mods, width=WIDTH, spec=spec), want)
    assert PRepLayout.for_module(mods[0], WIDTH).entries == PRepLayout.for_spec(spec, WIDTH).entries


# ---------------------------------------------------------------------------------------------
# fold_bn


def test_fold_user_module_is_a_folded_copy():
    m = user_net(0)
    x = torch.randn(4, *X_SHAPE)
    spec = archs.spec_from_module(m, x)
    f = fold_bn(m)
    assert type(f) is UserNet and f is not m
    assert not any(isinstance(mod, _BatchNorm) for mod in f.modules())
    assert isinstance(m.bn, nn.BatchNorm2d)  # the model itself is untouched
    assert [n for n, _ in f.named_parameters()] == [p.name for p in spec.params]
    with torch.no_grad():
        assert rel_err(f.eval()(x), m(x)) <= 1e-5
    # the folded parameters: the float64 oracle's values, and the PRep of the model
    expected = manual_fold_flat(loaded_specnets([m], spec)[0])
    got = flat_params(f).double()
    assert got.shape == expected.shape
    assert ((got - expected).abs() <= 1e-6 * expected.abs() + 1e-6 * expected.abs().max()).all()
    assert torch.equal(pack_preps(f, width=WIDTH), pack_preps(m, width=WIDTH))
    # a list: one call, each folded as alone, in order
    mods = [user_net(s) for s in range(3)]
    folded = fold_bn(mods)
    assert len(folded) == 3
    for a, b in zip(folded, mods):
        assert torch.equal(flat_params(a), flat_params(fold_bn(b)))


def test_fold_user_module_with_spec_gives_the_specnet():
    m = user_net(1)
    x = torch.randn(4, *X_SHAPE)
    spec = archs.spec_from_module(m, x)
    g = fold_bn(m, spec=spec)
    assert isinstance(g, archs.SpecNet) and g.spec == spec and g.batchnorm is False
    with torch.no_grad():
        assert rel_err(g.eval()(x), m(x)) <= 1e-5
    assert torch.equal(flat_params(g), flat_params(fold_bn(m)))


def test_fold_and_pack_with_different_eps():
    a, b = user_net(0), user_net(1)
    b.bn2.eps = 1e-2
    x = torch.randn(4, *X_SHAPE)
    fa, fb = fold_bn([a, b])
    with torch.no_grad():
        assert rel_err(fb.eval()(x), b(x)) <= 1e-5
        assert rel_err(fa.eval()(x), a(x)) <= 1e-5
    with pytest.raises(ValueError, match="eps"):
        pack_preps([a, b], width=WIDTH)


class FunctionalNoBias(nn.Module):
    """F.conv2d of a bias-free conv's weight, then BatchNorm: packable, but a copy of the module
    cannot take the folded bias."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(F.relu(self.bn(F.conv2d(x, self.conv.weight))).flatten(1))


def test_functional_conv_without_bias():
    m = randomize(FunctionalNoBias())
    x = torch.randn(2, *X_SHAPE)
    spec = archs.spec_from_module(m, x)
    with torch.no_grad():
        assert rel_err(batched_forward(spec, pack_preps(m, width=WIDTH), x)[0], m(x)) <= 1e-5
    one_line_refusal(lambda: fold_bn(m), "FunctionalNoBias", "conv", "spec=")
    g = fold_bn(m, spec=spec)
    with torch.no_grad():
        assert rel_err(g.eval()(x), m(x)) <= 1e-5


# ---------------------------------------------------------------------------------------------
# the traced plan: cached per structure, and the structure includes the user's attributes


class Toggle(nn.Module):
    """The BatchNorm follows conv_a or conv_b, by a plain attribute."""

    def __init__(self, on_a: bool) -> None:
        super().__init__()
        self.on_a = on_a
        self.conv_a = nn.Conv2d(3, 4, 3)
        self.conv_b = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 2)

    def forward(self, x):
        a, b = self.conv_a(x), self.conv_b(x)
        if self.on_a:
            a = self.bn(a)
        else:
            b = self.bn(b)
        return self.fc((a + b).flatten(1))


class Tagged(UserNet):
    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = seed  # an attribute forward does not read


def test_plan_follows_the_modules_attributes():
    x = torch.randn(2, *X_SHAPE)
    toggles = [randomize(Toggle(on_a)) for on_a in (True, False)]
    for m in toggles:  # the second packs after the first: no stale plan of the first
        spec = archs.spec_from_module(m, x)
        with torch.no_grad():
            assert rel_err(batched_forward(spec, pack_preps(m, width=WIDTH), x)[0], m(x)) <= 1e-5
    # same parameters, different folds: not one architecture
    one_line_refusal(lambda: pack_preps(toggles, width=WIDTH), "one architecture")
    # attributes that change nothing: one architecture
    tagged = []
    for s in range(2):
        torch.manual_seed(s)
        tagged.append(randomize(Tagged(s), s))
    spec = archs.spec_from_module(tagged[0], x)
    with torch.no_grad():
        y = batched_forward(spec, pack_preps(tagged, width=WIDTH), x)
        for b, m in enumerate(tagged):
            assert rel_err(y[b], m(x)) <= 1e-5


def test_plan_is_traced_once_per_structure(monkeypatch):
    monkeypatch.setattr(user_mod, "_PLANS", dict(user_mod._PLANS))  # (what this test caches is dropped after it)
    mods = [user_net(s) for s in range(2)]
    first = pack_preps(mods, width=WIDTH).detach()

    def no_trace(*a, **k):
        raise AssertionError("traced again")

    monkeypatch.setattr(torch.fx, "symbolic_trace", no_trace)
    assert torch.equal(pack_preps(mods, width=WIDTH), first)
    assert torch.equal(pack_preps([user_net(5)], width=WIDTH), pack_preps([user_net(5)], width=WIDTH))
    # a changed structure is traced again (here: refused, as tracing is off)
    mods[0].bn2 = nn.Identity()
    with pytest.raises(ValueError, match="traced again"):
        pack_preps(mods[0], width=WIDTH)


# ---------------------------------------------------------------------------------------------
# refusals


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it (here the branch is always taken)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        if x.numel() > 0:
            x = F.relu(self.bn(self.conv(x)))
        return self.fc(x.flatten(1))


class Twin(Branchy):
    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))


class ReadTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        y = self.conv(x)
        return self.fc((self.bn(y) + y).flatten(1))


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 8 * 8, 2)

    def forward(self, x):
        return self.fc(self.conv(self.bn(self.conv(x))).flatten(1))


class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


def _seq(*mid):
    return nn.Sequential(nn.Conv2d(3, 4, 3), *mid, nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


REFUSED = {
    "untraceable": (Branchy, ("Branchy", "torch.fx cannot trace")),
    "bn-on-the-input": (lambda: nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.Flatten(),
                                              nn.Linear(4 * 6 * 6, 3)), ("Sequential", "0: nn.BatchNorm2d")),
    "conv-output-read-twice": (ReadTwice, ("ReadTwice", "bn: nn.BatchNorm2d")),
    "layernorm": (lambda: nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.Flatten(),
                                        nn.Linear(180, 7), nn.LayerNorm(7), nn.Linear(7, 2, bias=False)),
                  ("Sequential", "5.weight", "nn.LayerNorm")),
    "instancenorm": (lambda: _seq(nn.InstanceNorm2d(4, affine=True)), ("1: nn.InstanceNorm2d",)),
    "bn-without-running-stats": (lambda: _seq(nn.BatchNorm2d(4, track_running_stats=False)),
                                 ("1: nn.BatchNorm2d", "running statistics")),
    "bn2d-after-linear": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4), nn.BatchNorm2d(4)),
                          ("expected nn.BatchNorm1d",)),
    "bn-never-called": (Unused, ("Unused", "bn: nn.BatchNorm2d is not called")),
    "weight-sharing": (Shared, ("Shared", "used twice")),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unsupported_modules_are_refused_in_one_line(case):
    make, fragments = REFUSED[case]
    m = make()
    fragments = (*fragments, "spec=")
    one_line_refusal(lambda: pack_preps([m, m], width=WIDTH), "models: element 0", *fragments)
    one_line_refusal(lambda: PRepPacker(m, width=WIDTH), *fragments)
    one_line_refusal(lambda: fold_bn(m), "model_or_list", *fragments)
    one_line_refusal(lambda: PRepLayout.for_module(m, WIDTH), *fragments)


def test_load_prep_refuses_a_module_with_batchnorm():
    m = user_net(0)
    prep = pack_preps(m, width=WIDTH)[0].detach()
    one_line_refusal(lambda: load_prep(m, prep), "UserNet", "fold_bn")
    f = load_prep(fold_bn(m), torch.zeros_like(prep))  # the folded copy takes it
    assert torch.equal(load_prep(f, prep).state_dict()["conv.bias"], fold_bn(m).state_dict()["conv.bias"])


def test_spec_route_for_an_untraceable_module():
    torch.manual_seed(0)
    m = randomize(Branchy())
    x = torch.randn(3, *X_SHAPE)
    spec = archs.spec_from_module(Twin(), x)  # the same network, written traceably
    preps = pack_preps(m, width=WIDTH, spec=spec)
    with torch.no_grad():
        assert rel_err(batched_forward(spec, preps.detach(), x)[0], m(x)) <= 1e-5
        assert rel_err(fold_bn(m, spec=spec).eval()(x), m(x)) <= 1e-5
    assert torch.equal(PRepPacker(m, width=WIDTH, spec=spec)(), preps.detach())


def test_spec_that_does_not_match_is_refused():
    m = user_net(0)
    other = archs.spec("lenetlike", "cifar10")
    one_line_refusal(lambda: pack_preps(m, width=WIDTH, spec=other), "UserNet", "spec lenetlike", "conv1.weight")
    one_line_refusal(lambda: fold_bn(m, spec=other), "UserNet", "spec lenetlike")
    one_line_refusal(lambda: PRepLayout.for_module(m, WIDTH, spec=other), "UserNet")
    one_line_refusal(lambda: pack_preps(archs.build("resnet8"), width=WIDTH, spec=other), "SpecNet", "lenetlike")
    with pytest.raises(TypeError, match="spec"):
        pack_preps(m, width=WIDTH, spec="lenetlike")


def test_bn_free_user_modules_keep_their_parameters():
    """Without normalization layers a module's PRep is its parameters in order, as before (LayerNorm
    included: nothing to fold)."""
    m = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(180, 7), nn.LayerNorm(7))
    flat = pack_preps(m, width=WIDTH).reshape(-1)
    P = sum(p.numel() for p in m.parameters())
    assert torch.equal(flat[:P], flat_params(m))
    f = fold_bn(m)
    assert f is not m and torch.equal(flat_params(f), flat_params(m))


# ---------------------------------------------------------------------------------------------
# the built-in architectures: their path and their results


def _spec_plan_call(models):
    """The op called with the plan written out here from the spec (packing order; BatchNorm
    folded into the conv before it)."""
    tensors, plan, eps = [], [], []
    spec, bn_form = models[0].spec, models[0].batchnorm
    for model in models:
        t = 0
        for layer in spec.pack_layers:
            mod = model.get_submodule(layer.name)
            w = mod.weight
            c, n = w.shape[0], w.numel()
            if bn_form and layer.bn is not None:
                bn = model.get_submodule(layer.bn)
                tensors += [w, bn.weight, bn.bias, bn.running_mean, bn.running_var]
                own = mod.bias is not None
                if own:
                    tensors.append(mod.bias)
                if model is models[0]:
                    plan += [FOLD_W, n, t, t + 1, t + 4, c, 0, FOLD_B, c, t + 5 if own else -1, t + 1, t + 2, t + 3,
                             t + 4]
                    eps += [bn.eps, bn.eps]
                t += 5 + own
            else:
                tensors.append(w)
                if model is models[0]:
                    plan += [COPY, n, t, 0, 0, 0, 0]
                    eps.append(0.0)
                t += 1
                if mod.bias is not None:
                    tensors.append(mod.bias)
                    if model is models[0]:
                        plan += [COPY, c, t, 0, 0, 0, 0]
                        eps.append(0.0)
                    t += 1
    rows = expected_rows(spec.num_params, WIDTH)
    return pack_op(tensors, plan, eps, len(models), rows, WIDTH, check_finite=True)


@pytest.mark.parametrize("form", all_forms(), ids=form_id)
def test_built_ins_unchanged(form, monkeypatch):
    name, ds, bn = form
    models = [make_model(name, ds, batchnorm=bn) for _ in range(2)]
    want = _spec_plan_call(models)

    def untouched(*a, **k):  # the user-module machinery is not on the built-ins' path
        raise AssertionError("user-module path taken for a SpecNet")

    for fn in ("has_norm", "signature", "user_plan", "check_spec"):
        monkeypatch.setattr(user_mod, fn, untouched)
    monkeypatch.setattr(fold_mod, "user_plan", untouched)
    monkeypatch.setattr(torch.fx, "symbolic_trace", untouched)
    got = pack_preps(models, width=WIDTH)
    assert torch.equal(got, want)
    assert torch.equal(PRepPacker(models, width=WIDTH)(), want)
    assert PRepLayout.for_module(models[0], WIDTH) == PRepLayout.for_spec(archs.spec(name, ds), WIDTH)
    folded = fold_bn(models)
    assert all(isinstance(f, archs.SpecNet) and not f.batchnorm for f in folded)
    flat = want.reshape(2, -1)[:, :archs.spec(name, ds).num_params]
    for b, f in enumerate(folded):
        assert torch.equal(flat_params(f), flat[b])
    # spec= naming the models' own spec: the same
    assert torch.equal(pack_preps(models, width=WIDTH, spec=models[0].spec), want)
