"""NetSpace networks (netspace_fast/space/nets.py): the original code's state-dict keys and shapes at the
paper configuration (its checkpoints load strictly), parameter counts, the forward semantics against an
independent functional re-implementation, the scale layer's initialization, and bad configurations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from netspace_fast.space import Decoder, Encoder, SpaceConfig
from netspace_fast.space.nets import num_parameters

# the original code's keys and shapes, PReps of (8, 10000), 4 architectures
ENCODER_KEYS = {
    "conv1.0.weight": (128, 1, 1, 3), "conv1.0.bias": (128,),
    "conv2.0.weight": (256, 128, 1, 3), "conv2.0.bias": (256,),
    "conv3.0.weight": (512, 256, 3, 1), "conv3.0.bias": (512,),
    "conv4.0.weight": (4096, 512, 3, 1), "conv4.0.bias": (4096,),
}
DECODER_KEYS = {
    "conv1.0.weight": (2048, 1, 3, 3), "conv1.0.bias": (2048,),
    "conv2.0.weight": (1250, 128, 3, 3), "conv2.0.bias": (1250,),
    "conv3.0.weight": (256, 512, 3, 3), "conv3.0.bias": (256,),
    "conv4.0.weight": (32, 256, 3, 3), "conv4.0.bias": (32,),
    "scalelayer.scale": (8, 10000), "scalelayer.bias": (8, 10000),
}
HEAD_KEYS = {"arch_conv.0.weight": (10, 1, 3, 3), "arch_conv.0.bias": (10,), "arch_classifier.weight": (4, 10240),
             "arch_classifier.bias": (4,)}
SMALL = SpaceConfig(8, 64, embed=256, view=16, dec_a=8, dec_b=16, dec_c=8, num_archs=3)


def _shapes(module) -> dict:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_paper_configuration_has_the_original_keys_and_counts():
    with torch.device("meta"):
        enc = Encoder(SpaceConfig.paper())
        dec = Decoder(SpaceConfig.paper())
        dec4 = Decoder(SpaceConfig.paper(num_archs=4))
    assert _shapes(enc) == ENCODER_KEYS
    assert _shapes(dec) == DECODER_KEYS
    assert _shapes(dec4) == {**DECODER_KEYS, **HEAD_KEYS}
    assert num_parameters(enc) == 6_788_352
    assert num_parameters(dec) == 2_875_394


def test_original_state_dicts_load_strictly():
    """State dicts with exactly the original's keys and shapes (as its checkpoints hold) load with
    strict=True, and the loaded values are the given ones."""
    g = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        enc, dec = Encoder(SpaceConfig.paper()), Decoder(SpaceConfig.paper(num_archs=4))
    sd_e = {k: torch.randn(s, generator=g) for k, s in ENCODER_KEYS.items()}
    sd_d = {k: torch.randn(s, generator=g) for k, s in {**DECODER_KEYS, **HEAD_KEYS}.items()}
    enc.load_state_dict(sd_e, strict=True, assign=True)
    dec.load_state_dict(sd_d, strict=True, assign=True)
    assert torch.equal(enc.conv4[0].weight, sd_e["conv4.0.weight"])
    assert torch.equal(dec.scalelayer.bias, sd_d["scalelayer.bias"])
    with pytest.raises(RuntimeError, match="size mismatch"):  # another PRep size is refused, not loaded
        Decoder(SpaceConfig(8, 64, embed=4096)).load_state_dict(sd_d, strict=False)


def _encoder_ref(p: dict, x: torch.Tensor) -> torch.Tensor:
    """The encoder written out with F.conv2d (METHOD.md section 5)."""
    a = lambda t: F.leaky_relu(t, 0.01)  # noqa: E731
    h = a(F.conv2d(x.unsqueeze(1), p["conv1.0.weight"], p["conv1.0.bias"], (1, 2), (0, 1)))
    h = a(F.conv2d(h, p["conv2.0.weight"], p["conv2.0.bias"], (1, 2), (0, 1)))
    h = h.max(dim=3, keepdim=True).values
    h = a(F.conv2d(h, p["conv3.0.weight"], p["conv3.0.bias"], 1, (1, 0)))
    h = a(F.conv2d(h, p["conv4.0.weight"], p["conv4.0.bias"], 1, (1, 0)))
    return h.max(dim=2).values.reshape(x.shape[0], -1)


def _decoder_ref(p: dict, c: SpaceConfig, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a = lambda t: F.leaky_relu(t, 0.01)  # noqa: E731
    B, H, W = z.shape[0], c.height, c.width
    v = z.view(B, -1, c.view, c.view)
    h = a(F.conv2d(v, p["conv1.0.weight"], p["conv1.0.bias"], 2, 1)).view(B, c.dec_a, H, -1)
    h = a(F.conv2d(h, p["conv2.0.weight"], p["conv2.0.bias"], 2, 1)).view(B, c.dec_b, H // 2, -1)
    h = a(F.conv2d(h, p["conv3.0.weight"], p["conv3.0.bias"], 2, 1))
    h = F.conv2d(h, p["conv4.0.weight"], p["conv4.0.bias"], 1, 1).view(B, H, W)
    prep = h * p["scalelayer.scale"] + p["scalelayer.bias"]
    logits = F.linear(a(F.conv2d(v, p["arch_conv.0.weight"], p["arch_conv.0.bias"], 2, 1)).flatten(1),
                      p["arch_classifier.weight"], p["arch_classifier.bias"])
    return prep, logits


def test_forward_equals_functional_reference():
    torch.manual_seed(0)
    enc, dec = Encoder(SMALL), Decoder(SMALL)
    with torch.no_grad():
        dec.scalelayer.scale.normal_()  # O(1) so the comparison sees the convs, not just the bias
    preps = torch.randn(3, SMALL.height, SMALL.width)
    z = enc(preps)
    assert z.shape == (3, SMALL.embed)
    torch.testing.assert_close(z, _encoder_ref(enc.state_dict(), preps), rtol=1e-5, atol=1e-6)
    prep, logits = _decoder_ref(dec.state_dict(), SMALL, z)
    torch.testing.assert_close(dec(z), prep, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dec.class_logits(z), logits, rtol=1e-5, atol=1e-6)
    assert enc(preps.unsqueeze(1)).shape == z.shape  # (B, 1, H, W) too


def test_gradients_reach_every_parameter():
    torch.manual_seed(1)
    enc, dec = Encoder(SMALL), Decoder(SMALL)
    z = enc(torch.randn(2, SMALL.height, SMALL.width))
    (dec(z).square().sum() + dec.class_logits(z).sum()).backward()
    for name, p in list(enc.named_parameters()) + list(dec.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_scale_layer_initialization():
    torch.manual_seed(2)
    dec = Decoder(SpaceConfig(40, 1000, embed=256, view=16, dec_a=8, dec_b=16, dec_c=8))
    scale, bias = dec.scalelayer.scale, dec.scalelayer.bias
    assert 0.9e-3 < scale.std().item() < 1.1e-3 and abs(scale.mean().item()) < 1e-4  # N(0, 1) * 1e-3
    assert bias.min().item() >= 0 and bias.max().item() <= 1e-2  # U(0, 1) * 1e-2
    assert 0.45e-2 < bias.mean().item() < 0.55e-2
    centered = Decoder(SpaceConfig(40, 1000, embed=256, view=16, dec_a=8, dec_b=16, dec_c=8, bias_init="centered"))
    cb = centered.scalelayer.bias
    assert cb.min().item() >= -1e-2 and cb.max().item() <= 1e-2  # U(-1, 1) * 1e-2
    assert abs(cb.mean().item()) < 2e-4 and cb.min().item() < -0.9e-2 and cb.max().item() > 0.9e-2
    assert SpaceConfig.paper().bias_init == "uniform"


@pytest.mark.parametrize("kw,match", [
    (dict(height=6), "height: expected a multiple of 4"),
    (dict(width=12), "width: expected a multiple of 8"),
    (dict(embed=100), "embed: expected a multiple of 32"),
    (dict(view=15), "view: expected an even side"),
    (dict(embed=96, view=8), "view: expected an even side"),
    (dict(dec_a=3, dec_b=5, view=32, embed=1024), "dec_a, dec_b"),
    (dict(num_archs=-1), "num_archs"),
    (dict(height=0), "height: expected a positive int"),
    (dict(prep_scale=0.0), "prep_scale"),
    (dict(prep_scale=float("nan")), "prep_scale"),
    (dict(bias_init="zeros"), "bias_init: expected 'uniform'"),
])
def test_bad_configurations(kw, match):
    base = dict(height=8, width=64, embed=256, view=16, dec_a=8, dec_b=16, dec_c=8)
    with pytest.raises(ValueError, match=match):
        SpaceConfig(**{**base, **kw})
    with pytest.raises(TypeError, match="height: expected an int"):
        SpaceConfig(8.0, 64)


def test_bad_inputs():
    enc, dec = Encoder(SMALL), Decoder(SMALL)
    with pytest.raises(ValueError, match=r"preps: expected \(B, 8, 64\)"):
        enc(torch.randn(2, 8, 72))
    with pytest.raises(ValueError, match=r"z: expected embeddings \(B, 256\)"):
        dec(torch.randn(2, 128))
    with pytest.raises(ValueError, match="no ClassId head"):
        Decoder(SpaceConfig(8, 64, embed=256, view=16, dec_a=8, dec_b=16, dec_c=8)).class_logits(torch.randn(1, 256))


def test_prep_scale_scales_the_encoder_input():
    """prep_scale (the CPU presets' 30) is exactly the encoder of the scaled PReps; the paper's is 1."""
    assert SpaceConfig.paper().prep_scale == 1.0
    torch.manual_seed(4)
    plain = Encoder(SMALL)
    scaled = Encoder(SpaceConfig(**{**SMALL.__dict__, "prep_scale": 30.0}))
    scaled.load_state_dict(plain.state_dict())
    preps = torch.randn(2, SMALL.height, SMALL.width) * 0.03
    torch.testing.assert_close(scaled(preps), plain(preps * 30.0))
