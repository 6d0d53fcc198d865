"""PRep shape rule and layout (seed Sec. II), unpacking into views, loading, and the round trip
pack -> unpack_prep / load_prep -> same network outputs."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

import netspace_fast as nf
from netspace_fast import PRepLayout, archs, load_prep, pack_preps, prep_shape, unpack_prep
from conftest import all_forms, expected_rows, flat_params, form_id, make_model, random_input, rel_err

# ---------------------------------------------------------------------------------------------
# prep_shape


@pytest.mark.parametrize("num_params,width,expected", [
    (16, 8, (4, 8)),           # P divisible by W, 2 rows -> 4
    (32, 8, (4, 8)),           # exactly 4 full rows
    (64, 8, (8, 8)),           # exactly 8 full rows
    (33, 8, (8, 8)),           # one value into the 5th row
    (8 * 4 + 1, 8, (8, 8)),    # P = 4W + 1
    (8 * 4 - 1, 8, (4, 8)),    # P = 4W - 1
    (5, 64, (4, 64)),          # P < W
    (1, 8, (4, 8)),            # P = 1
    (1, 10_000, (4, 10_000)),
    (10_000, 10_000, (4, 10_000)),
    (40_001, 10_000, (8, 10_000)),
    (62006, 10_000, (8, 10_000)),    # LeNetLike CIFAR-10: 7 rows -> 8
    (77706, 10_000, (8, 10_000)),    # ResNet8 BN-free
    (855770 - 6 * 16, 10_000, (88, 10_000)),
    (67073, 8, (8388, 8)),     # SIREN: ceil(67073/8) = 8385 rows -> 8388
    (67073, 16, (4196, 16)),   # 4193 rows -> 4196
])
def test_prep_shape_cases(num_params, width, expected):
    h, w = prep_shape(num_params, width)
    assert w == width
    assert h == expected_rows(num_params, width)
    assert h % 4 == 0 and h * w >= num_params and (h - 4) * w < num_params
    assert (h, w) == expected


@pytest.mark.parametrize("width", [0, -8, 4, 7, 12, 9, 1, 10_001])
def test_prep_shape_bad_width(width):
    with pytest.raises(ValueError, match="width"):
        prep_shape(100, width)


@pytest.mark.parametrize("width", [8.0, "8", True, None])
def test_prep_shape_width_type(width):
    with pytest.raises(TypeError, match="width"):
        prep_shape(100, width)


@pytest.mark.parametrize("num_params", [0, -1])
def test_prep_shape_bad_num_params(num_params):
    with pytest.raises(ValueError, match="num_params"):
        prep_shape(num_params, 8)


# ---------------------------------------------------------------------------------------------
# layouts


@pytest.mark.parametrize("form", all_forms(), ids=form_id)
def test_layout_for_spec(form):
    name, ds, _ = form
    s = archs.spec(name, ds)
    lay = PRepLayout.for_spec(s, 64)
    assert [(e.name, e.shape) for e in lay.entries] == [(p.name, p.shape) for p in s.params]
    offset = 0
    for e in lay.entries:
        assert e.offset == offset
        offset += e.numel
    assert lay.num_params == s.num_params == offset
    assert lay.shape == prep_shape(s.num_params, 64)
    # for_module of the BN and of the BN-free module agree (the PRep is that of the BN-free network)
    assert PRepLayout.for_module(archs.build(name, ds), 64) == lay
    assert PRepLayout.for_module(archs.build(name, ds, batchnorm=False), 64) == lay


def test_layout_explicit_height():
    s = archs.spec("lenetlike", "cifar10")
    min_h = prep_shape(s.num_params, 64)[0]
    assert PRepLayout.for_spec(s, 64, min_h + 8).shape == (min_h + 8, 64)
    with pytest.raises(ValueError, match="height"):
        PRepLayout.for_spec(s, 64, min_h - 4)
    with pytest.raises(ValueError, match="height"):
        PRepLayout.for_spec(s, 64, min_h + 1)
    with pytest.raises(ValueError, match="width"):
        PRepLayout.for_spec(s, 60)
    with pytest.raises(TypeError, match="spec"):
        PRepLayout.for_spec("lenetlike", 64)


def test_pack_explicit_height():
    m = archs.build("lenetlike")
    min_h = prep_shape(62006, 64)[0]
    prep = pack_preps(m, width=64, height=min_h + 4)
    assert prep.shape == (1, min_h + 4, 64)
    assert torch.equal(prep[0, :min_h], pack_preps(m, width=64)[0])
    assert not prep[0, min_h:].any()


# ---------------------------------------------------------------------------------------------
# unpack_prep


def test_unpack_returns_views():
    model = archs.build("resnet8", "cifar10", batchnorm=False)
    prep = pack_preps(model, width=64)[0]
    lay = PRepLayout.for_module(model, 64)
    views = unpack_prep(prep, lay)
    assert list(views) == [n for n, _ in model.named_parameters()]
    start = prep.data_ptr()
    end = start + prep.numel() * prep.element_size()
    for (name, v), (_, p) in zip(views.items(), model.named_parameters()):
        assert v.shape == p.shape
        assert start <= v.data_ptr() < end
        assert v.untyped_storage().data_ptr() == prep.untyped_storage().data_ptr()
        assert torch.equal(v, p)
    # writing into the PRep is seen through the views
    prep.view(-1)[0] = 1234.5
    first = next(iter(views.values()))
    assert first.reshape(-1)[0].item() == 1234.5
    last_name, last = list(views.items())[-1]
    e = [e for e in lay.entries if e.name == last_name][0]
    prep.view(-1)[e.offset + e.numel - 1] = -7.0
    assert last.reshape(-1)[-1].item() == -7.0


def test_unpack_batched_views():
    models = [archs.build("lenetlike") for _ in range(3)]
    batch = pack_preps(models, width=64)
    lay = PRepLayout.for_module(models[0], 64)
    views = unpack_prep(batch, lay)
    for e in lay.entries:
        v = views[e.name]
        assert v.shape == (3, *e.shape)
        assert v.untyped_storage().data_ptr() == batch.untyped_storage().data_ptr()
        for b in range(3):
            assert torch.equal(v[b], dict(models[b].named_parameters())[e.name])
    batch[1].view(-1)[0] = 99.0
    assert views["conv1.weight"][1].reshape(-1)[0].item() == 99.0


def test_unpack_noncontiguous_prep():
    model = archs.build("lenetlike")
    prep = pack_preps(model, width=64)[0]
    lay = PRepLayout.for_module(model, 64)
    nc = prep.t().contiguous().t()  # same values, column-major
    assert not nc.is_contiguous()
    for (name, v), (_, p) in zip(unpack_prep(nc, lay).items(), model.named_parameters()):
        assert torch.equal(v, p), name


def test_unpack_functional_call_and_gradients():
    model = archs.build("resnet8", "cifar10", batchnorm=False)
    lay = PRepLayout.for_module(model, 64)
    prep = pack_preps(model, width=64)[0].detach().clone().requires_grad_(True)
    x = random_input(model)
    out = functional_call(model, unpack_prep(prep, lay), (x,))
    with torch.no_grad():
        ref = model(x)
    assert torch.equal(out, ref)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    # the PRep's gradient is the module's parameter gradients, packed; zero on the padding
    (model(x) * weights).sum().backward()
    grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    g = prep.grad.reshape(-1)
    assert torch.allclose(g[:grads.numel()], grads, rtol=1e-6, atol=1e-7)
    assert not g[grads.numel():].any()
    assert g[:grads.numel()].abs().sum() > 0


def test_unpack_batched_functional_call_vmap():
    models = [archs.build("lenetlike") for _ in range(2)]
    lay = PRepLayout.for_module(models[0], 64)
    batch = pack_preps(models, width=64)
    x = torch.randn(2, 3, 32, 32)
    views = unpack_prep(batch, lay)
    out = torch.vmap(lambda p: functional_call(models[0], p, (x,)))(dict(views))
    with torch.no_grad():
        for b in range(2):
            assert rel_err(out[b], models[b](x)) <= 1e-6


def test_unpack_bad_arguments():
    model = archs.build("lenetlike")
    lay = PRepLayout.for_module(model, 64)
    prep = pack_preps(model, width=64)[0]
    H = lay.height
    for bad in (prep[:-4], prep[:-1], prep[:, :-8], torch.zeros(H + 4, 64), torch.zeros(64 * H),
                torch.zeros(1, 1, H, 64)):
        with pytest.raises(ValueError, match="prep"):
            unpack_prep(bad, lay)
    with pytest.raises(TypeError, match="layout"):
        unpack_prep(prep, "layout")
    with pytest.raises(TypeError, match="prep"):
        unpack_prep(prep.tolist(), lay)


# ---------------------------------------------------------------------------------------------
# load_prep


def test_load_prep_bad_shape_names_prep():
    model = archs.build("lenetlike", batchnorm=False)
    prep = pack_preps(model, width=64)[0]
    for bad in (prep[:-4], prep[:-1], prep[:, :-8], torch.zeros(5, 64)):
        with pytest.raises(ValueError, match="prep"):
            load_prep(model, bad)


def test_load_prep_bad_arguments():
    model = archs.build("lenetlike", batchnorm=False)
    prep = pack_preps(model, width=64)
    with pytest.raises(ValueError, match="prep"):
        load_prep(model, prep)  # (1, H, W): one PRep expected
    with pytest.raises(TypeError, match="prep"):
        load_prep(model, prep[0].detach().numpy())
    with pytest.raises(TypeError, match="module"):
        load_prep("model", prep[0])
    with pytest.raises(ValueError, match="module"):
        load_prep(archs.build("resnet8"), pack_preps(archs.build("resnet8"), width=64)[0])


def test_load_prep_taller_prep():
    """A PRep with extra zero rows (a shared height) loads the same parameters."""
    src = archs.build("resnet8", batchnorm=False)
    h = prep_shape(77706, 64)[0]
    prep = pack_preps(src, width=64, height=h + 8)[0]
    dst = load_prep(archs.build("resnet8", batchnorm=False), prep)
    assert torch.equal(flat_params(dst), flat_params(src))


def test_load_prep_does_not_alias():
    src = archs.build("lenetlike")
    prep = pack_preps(src, width=64)[0]
    dst = archs.build("lenetlike")
    out = load_prep(dst, prep)
    assert out is dst
    prep.zero_()
    assert torch.equal(flat_params(dst), flat_params(src))


# ---------------------------------------------------------------------------------------------
# round trip


# every form at widths 64 and 10000; at width 8 all but the two largest tinyimagenet ResNets
# (covered at the other widths; keeps the suite fast)
_ROUND_TRIP = [(f, w) for w in (8, 64, 10_000) for f in all_forms()
               if not (w == 8 and f[0] in ("resnet32", "resnet56") and f[1] == "tinyimagenet")]


@pytest.mark.parametrize("form,width", _ROUND_TRIP, ids=[f"{form_id(f)}-w{w}" for f, w in _ROUND_TRIP])
def test_round_trip(form, width):
    name, ds, bn = form
    src = make_model(name, ds, batchnorm=bn).eval()
    prep = pack_preps(src, width=width)
    assert prep.shape == (1, expected_rows(src.spec.num_params, width), width)
    dst = load_prep(archs.build(name, ds, batchnorm=False), prep[0]).eval()
    x = random_input(src) if name != "siren" else torch.randn(4, 3)
    with torch.no_grad():
        a, b = src(x), dst(x)
    if src.batchnorm:
        assert rel_err(b, a) <= 1e-5
    else:
        assert torch.equal(flat_params(dst), flat_params(src))
        assert torch.equal(a, b)
    # and unpacking the loaded module's PRep again gives back the same PRep
    assert torch.equal(pack_preps(dst, width=width), prep)


def test_public_api():
    for name in ("PRepLayout", "LayoutEntry", "archs", "backends", "fold_bn", "load_prep", "pack_preps",
                 "prep_shape", "unpack_prep"):
        assert hasattr(nf, name)


def test_scalar_parameter_round_trip():
    """0-dim parameters (e.g. a learned temperature) pack as one value and unpack to 0-dim views."""
    m = torch.nn.ParameterList([torch.nn.Parameter(torch.tensor(2.5)), torch.nn.Parameter(torch.randn(3))])
    prep = pack_preps(m, width=8)
    assert prep.shape == (1, 4, 8)
    assert prep.reshape(-1)[0].item() == 2.5
    lay = PRepLayout.for_module(m, 8)
    views = unpack_prep(prep[0], lay)
    assert views["0"].shape == () and views["0"].item() == 2.5
    assert torch.equal(views["1"], m[1])
    batched = unpack_prep(prep, lay)
    assert batched["0"].shape == (1,)
    target = torch.nn.ParameterList([torch.nn.Parameter(torch.tensor(0.0)), torch.nn.Parameter(torch.zeros(3))])
    load_prep(target, prep[0])
    assert target[0].item() == 2.5 and torch.equal(target[1], m[1])
