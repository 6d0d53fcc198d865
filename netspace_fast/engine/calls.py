"""How many images one batched evaluation call takes.

A no-grad evaluation of B networks on n images makes activations of B x n images at once: for nine
ResNet32s at 512 images a call, 300 MB a tensor. Inside a training job, between steps whose
allocations are of other sizes, glibc hands such blocks back to the kernel and maps them again (with
``tune_malloc`` too: a freed top of heap above its 2 GB trim threshold is trimmed), so every call pays
first-touch page faults for them. Measured on the 2-core Xeon (2026-12-06), the ``fmnist-multi`` zoo
(seed 0, idle machine) before and after the cap: 22 min 34 s -> 18 min 24 s wall, system time 680 s
-> 11 s, 115 M -> a few minor page faults a second, peak RSS 11.5 GB -> 4.1 GB; the zoo written is the
same. A first call of 9 ResNet32 x 512 images in a fresh process: 3.6 ms per image and network (44 s
of it system time) against 0.75 at 113 images. In a steady loop that keeps its memory (the benchmark
``benchmarks/zoo/test_bench_zoo_eval.py``) the two run at the same speed (0.97x): the cap costs
nothing there and removes the churn and the memory peak where it happens.

So on the CPU every evaluation loop of the package caps B x n at :data:`CPU_IMAGES_PER_CALL`; on a
GPU the caller's batch stands (large calls are what a GPU wants).
"""

from __future__ import annotations

import torch

#: the most images x networks of one no-grad evaluation call on the CPU
CPU_IMAGES_PER_CALL = 1024


def images_per_call(networks: int, batch: int, device: torch.device | str = "cpu") -> int:
    """The images of one evaluation call of ``networks`` networks: ``batch`` on a GPU; on the CPU
    at most ``batch`` and at most :data:`CPU_IMAGES_PER_CALL` // ``networks`` (at least 1)."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch: expected a positive int (images per call), got {batch!r}")
    if isinstance(networks, bool) or not isinstance(networks, int) or networks < 0:
        raise ValueError(f"networks: expected an int >= 0, got {networks!r}")
    if torch.device(device).type != "cpu":
        return batch
    return max(1, min(batch, CPU_IMAGES_PER_CALL // max(networks, 1)))
