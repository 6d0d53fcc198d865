"""Helpers shared by the GPU benchmark scripts (``benchmarks/*/gpu_bench_*.py``): the timer (CUDA:
``triton.testing.do_bench``, medians of CUDA events; CPU smoke runs: medians of ``perf_counter``),
the one-line form of an error for a table cell."""

from __future__ import annotations

import statistics
import time

import torch


def make_timer(device: torch.device, rep_ms: int, cpu_reps: int):
    """``timer(fn) -> ms``: on CUDA the median of ``do_bench`` (warmup 25 ms, ``rep_ms`` of
    measuring); elsewhere one warm-up call, then the median of ``cpu_reps`` calls."""
    if device.type == "cuda":
        import triton.testing

        def cuda_time(fn) -> float:
            return float(triton.testing.do_bench(fn, warmup=25, rep=rep_ms, return_mode="median"))
        return cuda_time

    def cpu_time(fn) -> float:
        fn()
        times = []
        for _ in range(cpu_reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    return cpu_time


def short(e: BaseException) -> str:
    """An exception as one short line, fit for a markdown table cell."""
    msg = str(e).strip().splitlines()
    first = msg[0] if msg else ""
    return f"{type(e).__name__}: {first}"[:160].replace("|", "/")
