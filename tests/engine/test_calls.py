"""The CPU cap on images x networks per evaluation call, and that results do not depend on it."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from netspace_fast import archs
from netspace_fast.engine import calls
from netspace_fast.engine.calls import CPU_IMAGES_PER_CALL, images_per_call
from netspace_fast.zoo.loop import evaluate
from netspace_fast.zoo.model import BatchedZooNet


@settings(max_examples=200, deadline=None)
@given(networks=st.integers(0, 5000), batch=st.integers(1, 5000))
def test_the_cap_holds_and_never_drops_below_one_image(networks, batch):
    n = images_per_call(networks, batch)
    assert 1 <= n <= batch
    assert n * max(networks, 1) <= CPU_IMAGES_PER_CALL or n == 1
    # the largest such batch: one more image would pass the cap (or the caller's batch)
    assert n == batch or (n + 1) * max(networks, 1) > CPU_IMAGES_PER_CALL


def test_a_gpu_keeps_the_callers_batch():
    assert images_per_call(64, 512, "cuda") == 512
    assert images_per_call(64, 512, torch.device("cpu")) == CPU_IMAGES_PER_CALL // 64


@pytest.mark.parametrize("networks,batch,word", [(2, 0, "batch"), (2, 1.5, "batch"), (2, True, "batch"),
                                                 (-1, 8, "networks"), ("2", 8, "networks")])
def test_bad_arguments_are_named(networks, batch, word):
    with pytest.raises(ValueError, match=word):
        images_per_call(networks, batch)


def test_zoo_evaluate_is_the_same_with_any_cap(monkeypatch):
    """Capping splits the images into more calls; every image is still counted once."""
    torch.manual_seed(0)
    # float64: chunking changes the sums' order, and no argmax may flip by rounding
    net = BatchedZooNet([archs.build("lenetlike", "digits") for _ in range(3)]).double()
    x, y = torch.randn(50, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (50,))
    full = evaluate(net, x, y, batch_size=512)
    for cap in (1, 7, 30, 10_000):
        monkeypatch.setattr(calls, "CPU_IMAGES_PER_CALL", cap)
        assert torch.equal(evaluate(net, x, y, batch_size=512), full), cap


def test_module_logits_equal_one_call_of_the_module(monkeypatch):
    """Small calls and channels_last change only the order of the sums: float64, where the difference
    (~1e-16 relative, a few hundred terms a sum) is far below the 1e-10 allowed."""
    torch.manual_seed(0)
    model = archs.build("resnet8", "digits").double().eval()
    x = torch.randn(150, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
    for cap in (1, 7, 64, 10_000):
        monkeypatch.setattr(calls, "CPU_MODULE_IMAGES_PER_CALL", cap)
        out = calls.module_logits(model, x)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    assert next(p for p in model.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)


def test_module_logits_calls_are_capped_on_the_cpu(monkeypatch):
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(x.shape[0])
            return x.flatten(1)[:, :2]

    out = calls.module_logits(Spy(), torch.randn(150, 4), batch=512)
    assert out.shape == (150, 2) and sum(seen) == 150
    assert max(seen) == calls.CPU_MODULE_IMAGES_PER_CALL
    seen.clear()
    calls.module_logits(Spy(), torch.randn(150, 4), batch=50)
    assert seen == [50, 50, 50]


@pytest.mark.parametrize("model,images,word", [(lambda x: x, torch.randn(3, 2), "model"),
                                               (torch.nn.Identity(), torch.randn(0, 2), "images"),
                                               (torch.nn.Identity(), [1, 2], "images")])
def test_module_logits_bad_arguments_are_named(model, images, word):
    with pytest.raises((TypeError, ValueError), match=word):
        calls.module_logits(model, images)
