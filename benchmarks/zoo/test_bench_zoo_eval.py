"""Validation of a zoo job on the CPU: capped evaluation calls vs one call per 512-image batch.

Scenario: the validation a `fmnist-multi` zoo job runs after every epoch, 9 ResNet32 instances on 512
images (Fashion-MNIST-sized, 32x32x3). Ours: `zoo.loop.evaluate` as the zoo trainer calls it (batch
512, capped on the CPU to `engine.calls.CPU_IMAGES_PER_CALL` images x instances per call: 113 images
a call here). Peers, same run: the same `BatchedZooNet` with the cap lifted (one call of 9 x 512
images), and each instance alone, a plain `nn.Module` in eval mode at batch 512 (the original code's
way). Goal: none; the figures are in BENCHMARKS.md (zoo training, evaluation calls).
"""

from __future__ import annotations

import pytest
import torch

from netspace_fast import archs
from netspace_fast.engine import calls
from netspace_fast.zoo import BatchedZooNet
from netspace_fast.zoo.loop import evaluate

ROUNDS = 3
GROUP = "zoo (c) 9 resnet32 validation"
_cache: dict = {}


def setup():
    if not _cache:
        models = []
        for s in range(9):
            torch.manual_seed(s)
            models.append(archs.build("resnet32", "fashion-mnist"))
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(512, 3, 32, 32, generator=g), torch.randint(0, 10, (512,), generator=g)
        _cache.update(net=BatchedZooNet(models), models=models, x=x, y=y)
    return _cache


def one_at_a_time(models, x, y, batch: int = 512):
    accs = []
    for m in models:
        m.eval()
        correct = sum(int((m(x[s:s + batch]).argmax(-1) == y[s:s + batch]).sum()) for s in range(0, x.shape[0], batch))
        accs.append(correct / x.shape[0])
    return accs


@pytest.mark.parametrize("provider", ["ours", "one call per batch (no cap)", "one instance at a time"])
def test_zoo_validation(benchmark, measure, monkeypatch, provider):
    benchmark.group = GROUP
    c = setup()
    if provider == "ours":
        fn = lambda: evaluate(c["net"], c["x"], c["y"], batch_size=512)  # noqa: E731
    elif provider == "one call per batch (no cap)":
        monkeypatch.setattr(calls, "CPU_IMAGES_PER_CALL", 1 << 30)
        fn = lambda: evaluate(c["net"], c["x"], c["y"], batch_size=512)  # noqa: E731
    else:
        fn = lambda: one_at_a_time(c["models"], c["x"], c["y"])  # noqa: E731
    measure(fn, rounds=ROUNDS, provider=provider)
