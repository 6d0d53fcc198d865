"""How many images one batched evaluation call takes.

A no-grad evaluation of B networks on n images makes activations of B x n images at once. On the
CPU, past about a thousand images per call the tensors (a ResNet's first stage is 64 KiB an image)
no longer stay near the cores and the call gets slower per image, not faster. Measured on the
2-core Xeon (2026-12-06), ms per image and network:

======================  =====  =====  =====  =====  =====
images per call (B x n)  288   576    1,152  2,304  4,608
======================  =====  =====  =====  =====  =====
ResNet32, B = 9 (zoo)    0.85  0.81   0.75   0.94   3.6
ResNet8, B = 9 (zoo)     0.19  0.18   0.16   --     0.17
======================  =====  =====  =====  =====  =====

(``batched_forward``, ResNet32, B = 16: 1,024 images 0.70, 2,048 0.64, 8,192 2.19.) So on the CPU
every evaluation loop of the package caps B x n at :data:`CPU_IMAGES_PER_CALL`; on a GPU the
caller's batch stands (large calls are what a GPU wants).
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
