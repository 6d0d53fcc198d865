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
