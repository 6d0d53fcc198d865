"""Batched zoo training vs one instance at a time (the original code's way), CPU.

Instance-epochs per hour of (a) 32 LeNetLike on digits (1,079 training images, batch 64) and
(b) 8 ResNet8 on cifar10-sized inputs (512 random 32x32 images, batch 128). Ours: one
`BatchedZooNet` job, SGD(momentum 0.9, wd 5e-4) over the stacked parameters (`make_optimizer`:
fused where torch has it), minibatches gathered by the fused `gather_grouped` op. Peer: each instance
alone, a plain `nn.Module` from `archs.build` and `torch.optim.SGD`, the same data and batch size.
Goals (issue): CPU >= 3x (LeNetLike), >= 1.2x (ResNet8). The ratio printed is peer time / ours time
for the same number of instance-epochs (= ratio of instance-epochs per hour).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from netspace_fast import archs, data
from netspace_fast.zoo import BatchedZooNet, DataOrder, make_optimizer, train_epoch

ROUNDS = 3
SCENARIOS = {"zoo (a) 32 lenetlike digits": ("lenetlike", 32, 64), "zoo (b) 8 resnet8 cifar-size": ("resnet8", 8, 128)}
GOALS = {"zoo (a) 32 lenetlike digits": 3.0, "zoo (b) 8 resnet8 cifar-size": 1.2}
_cache: dict = {}


def setup(scenario):
    if scenario not in _cache:
        name, B, bs = SCENARIOS[scenario]
        if name == "lenetlike":
            x, y = data.tensors("digits", "train")
        else:
            g = torch.Generator().manual_seed(0)
            x, y = torch.randn(512, 3, 32, 32, generator=g), torch.randint(0, 10, (512,), generator=g)
        models = []
        for s in range(B):
            torch.manual_seed(s)
            models.append(archs.build(name, "digits" if name == "lenetlike" else "cifar10"))
        _cache[scenario] = (models, x, y, bs)
    return _cache[scenario]


def ours(models, x, y, bs):
    net = BatchedZooNet(models)
    opt = make_optimizer(net, "multi", 0.01)  # what train_zoo uses: SGD, fused where available
    train_epoch(net, opt, x, y, DataOrder.from_seeds(list(range(len(models)))), bs)


def one_at_a_time(models, x, y, bs, epochs: int = 1):
    """The peer (also used by gpu_bench_zoo.py): each instance alone, plain nn.Module + torch.optim."""
    for s, m in enumerate(models):
        m = archs.build(m.spec.name, m.spec.dataset).to(x.device)  # fresh instance, as a zoo script builds one
        m.train()
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        gen = torch.Generator().manual_seed(s)
        for _ in range(epochs):
            perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
            for t in range(0, x.shape[0], bs):
                idx = perm[t:t + bs]
                loss = F.cross_entropy(m(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("provider", ["ours", "one instance at a time"])
def test_zoo_epoch(benchmark, measure, scenario, provider):
    benchmark.group = scenario
    models, x, y, bs = setup(scenario)
    fn = ours if provider == "ours" else one_at_a_time
    benchmark.extra_info["instance_epochs"] = len(models)
    measure(lambda: fn(models, x, y, bs), rounds=ROUNDS, provider=provider,
            goal=None if provider == "ours" else GOALS[scenario], grad=True)
