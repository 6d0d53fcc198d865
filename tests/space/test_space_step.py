"""NetSpace training steps (netspace_fast/space/step.py) against the original code's way of computing
them: decode, then a Python loop of per-network functional forwards and per-network losses (the
reference, written here independently). In float64 (which batched_forward accepts for exactly
this), loss values and every encoder/decoder gradient agree to a relative 1e-9; every
architecture's networks go through one batched call."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from netspace_fast import archs, pack_preps, unpack_prep
from netspace_fast.prep import PRepLayout
from netspace_fast.space import Decoder, Encoder, SpaceConfig
from netspace_fast.space import step as step_mod
from netspace_fast.space.step import multi_step, single_step

ARCHS = ("lenetlike", "vanillacnn", "resnet8", "resnet32")
T = 4.0


def _kd(s, t):
    return F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean") * T * T


def _forward(name, prep, x):
    spec = archs.spec(name, "digits")
    params = unpack_prep(prep, PRepLayout.for_spec(spec, prep.shape[-1], prep.shape[-2]))
    return functional_call(archs.build(name, "digits", batchnorm=False), dict(params), (x,))


def _config(height, width, num_archs=0):
    return SpaceConfig(height, width, embed=256, view=16, dec_a=8, dec_b=16, dec_c=8, num_archs=num_archs)


def _grads(loss, *modules):
    params = [p for m in modules for p in m.parameters()]
    return torch.autograd.grad(loss, params, allow_unused=True)


def _close(a, b, tol=1e-9):
    assert (a - b).abs().max().item() <= tol * max(b.abs().max().item(), 1e-6), ((a - b).abs().max(), b.abs().max())


def test_single_step_equals_the_per_network_loop(monkeypatch):
    torch.manual_seed(0)
    models = [archs.build("lenetlike", "digits", batchnorm=False) for _ in range(3)]
    preps = pack_preps(models, 1024).detach().double()
    images = torch.randn(6, 3, 32, 32, dtype=torch.float64)
    enc, dec = Encoder(_config(*preps.shape[1:])).double(), Decoder(_config(*preps.shape[1:])).double()
    with torch.no_grad():
        dec.scalelayer.scale.mul_(30)  # decoded weights of a useful scale, so the KD is not flat

    calls = []
    real = step_mod.batched_forward
    monkeypatch.setattr(step_mod, "batched_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = single_step(enc, dec, archs.spec("lenetlike", "digits"), preps, images)
    assert len(calls) == 2  # input networks once, decoded networks once

    decoded = dec(enc(preps))
    ref = torch.stack([_kd(_forward("lenetlike", decoded[b], images),
                           _forward("lenetlike", preps[b], images).detach()) for b in range(3)])
    _close(out.per_network.detach(), ref.detach())
    for a, b in zip(_grads(out.loss, enc, dec), _grads(ref.mean(), enc, dec)):
        _close(a, b)


def test_multi_step_equals_the_per_network_loop(monkeypatch):
    torch.manual_seed(1)
    specs = [archs.spec(n, "digits") for n in ARCHS]
    height = max(PRepLayout.for_spec(s, 2048).height for s in specs)
    nets = [archs.build("lenetlike", "digits", batchnorm=False), archs.build("resnet32", "digits", batchnorm=False),
            archs.build("resnet8", "digits", batchnorm=False)]
    preps = torch.cat([pack_preps(m, 2048, height).detach() for m in nets]).double()
    class_ids = torch.tensor([0, 3, 2])
    images, labels = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (4,))
    teacher = torch.randn(4, 10, dtype=torch.float64)
    cfg = _config(height, 2048, num_archs=4)
    enc, dec = Encoder(cfg).double(), Decoder(cfg).double()
    with torch.no_grad():
        dec.scalelayer.scale.mul_(30)

    calls = []
    real = step_mod.batched_forward
    monkeypatch.setattr(step_mod, "batched_forward", lambda *a, **k: calls.append(a[0].name) or real(*a, **k))
    out = multi_step(enc, dec, specs, preps, class_ids, images, labels, teacher)
    # pairs 3 apart: (0, 3) only -> two interpolations; one decoder call for all 5 embeddings
    assert out.decoded.shape == (5, height, 2048) and out.predicted.shape == (5,)
    assert sorted(calls) == sorted({ARCHS[c] for c in out.predicted.tolist()})  # one call per predicted arch

    z = enc(preps)
    z_all = torch.cat([z, torch.lerp(z[0], z[1], 1 / 3)[None], torch.lerp(z[0], z[1], 2 / 3)[None]])
    decoded, logits = dec(z_all), dec.class_logits(z_all)
    pred = logits.argmax(-1).tolist()
    assert pred == out.predicted.tolist()
    mix = [0.9 * _kd(s := _forward(ARCHS[c], decoded[k], images), teacher) + 0.1 * F.cross_entropy(s, labels)
           for k, c in enumerate(pred)]
    # the original's reductions: compute_losses SUMS over the meta-batch's networks (arch_loss, kl_loss and
    # ce_loss `+=` per network), interpolation_loss sums over the interpolations (reduction="sum", `+=`)
    ref = (sum(F.cross_entropy(logits[k:k + 1], class_ids[k:k + 1]) for k in range(3)) + sum(mix[:3])
           + F.cross_entropy(logits[3:5], torch.tensor([1, 2]), reduction="sum") + mix[3] + mix[4])
    _close(out.loss.detach(), ref.detach())
    for a, b in zip(_grads(out.loss, enc, dec), _grads(ref, enc, dec)):
        if b is None:
            assert a is None or not a.any()
        else:
            _close(a, b)


def test_multi_step_without_gamma_pairs():
    torch.manual_seed(2)
    specs = [archs.spec(n, "digits") for n in ARCHS]
    height = max(PRepLayout.for_spec(s, 2048).height for s in specs)
    preps = torch.cat([pack_preps(archs.build(n, "digits", batchnorm=False), 2048, height).detach()
                       for n in ("lenetlike", "vanillacnn")])
    cfg = _config(height, 2048, num_archs=4)
    out = multi_step(Encoder(cfg), Decoder(cfg), specs, preps, torch.tensor([0, 1]), torch.randn(2, 3, 32, 32),
                     torch.tensor([1, 2]), torch.randn(2, 10))
    assert out.gamma_kd.shape == (0,) and out.gamma_class_loss.item() == 0.0
    assert out.decoded.shape[0] == 2 and torch.isfinite(out.loss)


def test_bad_step_inputs():
    specs = [archs.spec(n, "digits") for n in ARCHS]
    cfg = _config(8, 1024, num_archs=3)
    with pytest.raises(ValueError, match="specs: the decoder's ClassId head has 3"):
        multi_step(Encoder(cfg), Decoder(cfg), specs, torch.zeros(1, 8, 1024), torch.tensor([0]),
                   torch.zeros(1, 3, 32, 32), torch.tensor([0]), torch.zeros(1, 10))
    with pytest.raises(ValueError, match="class_ids"):
        multi_step(Encoder(cfg), Decoder(cfg), specs[:3], torch.zeros(2, 8, 1024), torch.tensor([0]),
                   torch.zeros(1, 3, 32, 32), torch.tensor([0]), torch.zeros(1, 10))
    with pytest.raises(ValueError, match="preps: expected a meta-batch"):
        single_step(Encoder(cfg), Decoder(cfg), specs[0], torch.zeros(8, 1024), torch.zeros(1, 3, 32, 32))


def test_step_temperature():
    """The steps distill at the temperature they are given (the paper's T = 4 by default)."""
    from netspace_fast.space.losses import kd_loss

    torch.manual_seed(3)
    spec = archs.spec("lenetlike", "digits")
    height = PRepLayout.for_spec(spec, 1024).height
    preps = torch.cat([pack_preps(archs.build("lenetlike", "digits", batchnorm=False), 1024, height).detach()
                       for _ in range(2)])
    cfg = _config(height, 1024)
    enc, dec, x = Encoder(cfg), Decoder(cfg), torch.randn(3, 3, 32, 32)
    for T in (1.0, 4.0):
        out = single_step(enc, dec, spec, preps, x, T)
        teacher = _forward("lenetlike", preps[0], x)
        student = _forward("lenetlike", out.decoded[0], x)
        torch.testing.assert_close(out.per_network[0], kd_loss(student, teacher, T), rtol=1e-4, atol=1e-6)
    assert not torch.equal(single_step(enc, dec, spec, preps, x, 1.0).loss, single_step(enc, dec, spec, preps, x).loss)
