"""The process group of a CUDA rank is bound to its GPU (``device_id``), shown on CPU with the
distributed calls faked: NCCL then makes its communicator on that device at once instead of
guessing it at the first collective."""

from __future__ import annotations

import torch
import torch.distributed as dist

from netspace_fast import settings
from netspace_fast.zoo import distributed


def _fake(monkeypatch, calls):
    monkeypatch.setattr(settings, "check_device", lambda d: str(d))
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", str(d))))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: calls.append(("init", a, k)))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")


def test_a_cuda_rank_binds_its_process_group_to_its_gpu(monkeypatch):
    calls = []
    _fake(monkeypatch, calls)
    rank, world, device, _, owned = distributed.setup_distributed("cuda")
    assert (rank, world, device, owned) == (1, 2, "cuda:1", True)
    assert calls == [("set_device", "cuda:1"), ("init", ("nccl",), {"device_id": torch.device("cuda", 1)})]


def test_a_cpu_rank_uses_gloo_without_a_device(monkeypatch):
    calls = []
    _fake(monkeypatch, calls)
    assert distributed.setup_distributed("cpu")[2] == "cpu"
    assert calls == [("init", ("gloo",), {})]
