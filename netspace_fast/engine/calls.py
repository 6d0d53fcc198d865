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

A plain ``nn.Module`` (the Multi-Architecture teacher, a ResNet56 with its BatchNorm layers) is
slower still at large calls: its unfused activations at 512 images run 4.06 ms an image against
1.66 at 64 (same Xeon, steady loop), and its weights in ``channels_last`` take that to 1.39 ms
(oneDNN's native layout; no reorder per convolution). :func:`module_logits` runs a module over many
images that way: 48,000 training images through the teacher in ~67 s instead of ~200 s.
"""

from __future__ import annotations

import torch

#: the most images x networks of one no-grad evaluation call on the CPU
CPU_IMAGES_PER_CALL = 1024
#: the most images of one no-grad call of a plain ``nn.Module`` on the CPU (:func:`module_logits`)
CPU_MODULE_IMAGES_PER_CALL = 64


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


@torch.no_grad()
def module_logits(model: torch.nn.Module, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """``model``'s outputs on ``images`` (N, ...), concatenated, without gradients: calls of ``batch``
    images on a GPU; on the CPU calls of at most :data:`CPU_MODULE_IMAGES_PER_CALL` images, with the
    model's 4-D parameters in ``channels_last`` (the model is converted in place, as ``Module.to`` does)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(images, torch.Tensor) or images.dim() < 1 or images.shape[0] < 1:
        raise ValueError(f"images: expected a tensor of one or more images (N, ...), got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    step = images_per_call(1, batch, images.device)
    if images.device.type == "cpu":
        step = min(step, CPU_MODULE_IMAGES_PER_CALL)
        if images.dim() == 4:
            model.to(memory_format=torch.channels_last)
    return torch.cat([model(images[s:s + step]) for s in range(0, images.shape[0], step)])
