"""Zoo training under torchrun: the process group and the sharding of a job's instances over ranks."""

from __future__ import annotations

import os

import torch

__all__ = ["setup_distributed", "shard"]


def setup_distributed(device: str):
    """(rank, world, device, dist, owned) under torchrun, else (0, 1, device, None, False).

    The process group is gloo on CPU and NCCL on CUDA (``owned``: created here, so destroyed by the
    caller); each rank trains on its LOCAL_RANK GPU. One rank under torchrun makes its process group
    too (its barriers are then real collectives: a one-GPU machine checks the NCCL setup)."""
    from ..settings import check_device

    device = check_device(device)  # a GPU asked for where there is none: one line, before any work
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:  # torchrun sets it; a plain process does not
        return 0, 1, device, None, False
    import torch.distributed as dist

    if device.startswith("cuda") and ":" not in device:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    owned = not dist.is_initialized()
    if owned:
        if device.startswith("cuda"):
            # device_id binds the NCCL communicator to this rank's GPU at once (without it NCCL guesses
            # the device at the first collective, and a barrier may warn or hang on a wrong guess)
            dist.init_process_group("nccl", device_id=torch.device(device))
        else:
            dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), device, dist, owned


def shard(n: int, rank: int, world: int) -> range:
    """The contiguous block of ``range(n)`` that rank ``rank`` of ``world`` trains (sizes differ by <= 1)."""
    return range(n * rank // world, n * (rank + 1) // world)

