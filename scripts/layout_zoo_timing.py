"""Zoo-training epoch time under each convolution layout mode, on this machine.

One epoch of B networks of one architecture (SGD, the zoo's training loop) on 512 random 32x32
images, batch 128, per ``NETSPACE_CONV_LAYOUT`` mode: ``rule`` (static thresholds), ``grouped``,
``split`` and ``auto`` (measured here; its first epoch includes the timing of every new layer
shape, the second reads the cache). Prints one markdown row per (architecture, mode) for
BENCHMARKS.md. Usage: ``python scripts/layout_zoo_timing.py [arch ...]`` (default resnet8
resnet32), with ``NETSPACE_CACHE_DIR`` pointing at an empty folder for a first-time measurement.
"""

from __future__ import annotations

import os
import sys
import time

import torch

from netspace_fast import archs
from netspace_fast.engine import layout
from netspace_fast.zoo import BatchedZooNet, DataOrder, make_optimizer, train_epoch


def epoch(name: str, B: int, x, y, bs: int) -> float:
    models = []
    for s in range(B):
        torch.manual_seed(s)
        models.append(archs.build(name, "cifar10"))
    net = BatchedZooNet(models)
    opt = make_optimizer(net, "multi", 0.01)
    t = time.perf_counter()
    train_epoch(net, opt, x, y, DataOrder.from_seeds(list(range(B))), bs)
    return time.perf_counter() - t


def main(names: list[str]) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(512, 3, 32, 32, generator=g), torch.randint(0, 10, (512,), generator=g)
    B, bs = 8, 128
    print(f"torch threads {torch.get_num_threads()}, B={B}, batch {bs}, 512 images 32x32")
    print("| architecture | mode | epoch s |\n| --- | --- | ---: |")
    for name in names:
        for mode in ("rule", "grouped", "split", "auto (first: measures)", "auto (cached)"):
            os.environ["NETSPACE_CONV_LAYOUT"] = mode.split()[0]
            if mode.startswith("auto (first"):
                layout.reset_tuners()
            s = epoch(name, B, x, y, bs)
            print(f"| {name} | {mode} | {s:.2f} |", flush=True)
    layout.print_cache()


if __name__ == "__main__":
    main(sys.argv[1:] or ["resnet8", "resnet32"])
