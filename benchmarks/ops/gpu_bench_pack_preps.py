#!/usr/bin/env python
"""GPU benchmarks of PRep packing and BN folding, against the peers of the issue, in one run.

    python benchmarks/ops/gpu_bench_pack_preps.py [--csv results.csv] [--reps 20]

Scenarios (W = 10,000; peers in pack_peers.py):
  1. pack B=64 BN-free ResNet32: pack_preps and the reusable plan (PRepPacker, built once outside
     the timing) vs (b) cat + pad per network + stack;
  2. bandwidth: pack B=256 BN-free ResNet32 (~490 MB of PReps, well over 64 MB) vs a
     device-to-device copy of the same bytes (``dst.copy_(src)``): pack_preps, and the PRepPacker
     writing into a preallocated output (``packer(out=buf)``: no allocation, like the copy; the
     0.7x goal is the packer's) and allocating (``packer()``, informational);
  3. fold+pack B=64 BN-trained ResNet56: pack_preps vs (c) fuse_conv_bn_weights + cat/pad + stack;
  4. the Triton backend (backend='triton') vs the native CUDA backend on scenarios 1 to 3.
Times are medians of CUDA-event intervals around each call (host work included: the peers are
launch-bound, and pack_preps' Python side counts too), every provider under torch.no_grad().
Prints one markdown table (scenario, ours, peer, ours ms, peer ms, ratio = peer / ours, goal,
result), each row as soon as it is measured (a run cut short keeps what it measured); goals are
reported, never asserted. Exits 1 only when a provider's output disagrees with pack_preps'.

Without a GPU it prints 'skipped: no CUDA' and exits 0. ``--device cpu --quick`` runs the same
code on CPU with small batches (a smoke test of this script, not a benchmark; batches / 32 when the
Triton kernels are interpreted).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/: pack_peers.py

# Goals of the issue on GPU: peer time / ours time >= 10x (b) and >= 50x (c); the copy fraction
# (copy time / pack time, i.e. pack bandwidth as a fraction of a D2D copy's) >= 0.7 once the
# total exceeds 64 MB. Triton vs CUDA is informational.
GOAL_VS_CAT_PAD = 10.0
GOAL_VS_FUSE_WEIGHTS = 50.0
GOAL_COPY_FRACTION = 0.7


class Timer:
    def __init__(self, device: torch.device, warmup: int, reps: int) -> None:
        self.device, self.warmup, self.reps = device, warmup, reps

    def __call__(self, fn) -> float:
        """Median milliseconds of ``fn()`` under no_grad."""
        cuda = self.device.type == "cuda"
        times = []
        with torch.no_grad():
            for _ in range(self.warmup):
                fn()
            for _ in range(self.reps):
                if cuda:
                    torch.cuda.synchronize()
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    fn()
                    end.record()
                    end.synchronize()
                    times.append(start.elapsed_time(end))
                else:
                    t0 = time.perf_counter()
                    fn()
                    times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def _same(a: torch.Tensor, b: torch.Tensor, exact: bool) -> bool:
    if a.shape != b.shape:
        return False
    if exact:
        return bool(torch.equal(a, b))
    return bool(torch.allclose(a, b, rtol=1e-5, atol=1e-6))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cpu: smoke-test this script without a GPU (use with --quick)")
    parser.add_argument("--quick", action="store_true", help="batches / 8 and 3 repetitions")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--csv", help="append the rows to this CSV file (with device and date)")
    args = parser.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("skipped: no CUDA")
        return 0

    import netspace_fast
    from netspace_fast.ops import backend as nf_backend
    from pack_peers import WIDTH, foldpack_fuse_weights, make_models, pack_cat_pad

    device = torch.device(args.device)
    scale = (32 if nf_backend.triton_interpreted() else 8) if args.quick else 1
    reps = 3 if args.quick else args.reps
    timer = Timer(device, 1 if args.quick else args.warmup, reps)
    default_backend = nf_backend.select("pack_preps", device)
    avail = netspace_fast.backends()
    can_native = avail["cuda"]["usable"] if device.type == "cuda" else avail["cpu"]["usable"]
    can_triton = avail["triton"]["usable"] and (device.type == "cuda" or nf_backend.triton_interpreted())
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = "CPU (smoke test)"
    print(f"device: {name}; torch {torch.__version__}; default pack_preps backend: {default_backend}; "
          f"native usable: {can_native}; triton usable: {can_triton}")

    rows: list[dict] = []
    wrong = False

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    def show(r):
        goal = f">= {r['goal']:g}x" if r["goal"] else "-"
        ratio = "-" if r["ours_ms"] is None else f"{r['ratio']:.2f}x"
        print(f"| {r['scenario']} | {r['ours']} | {r['peer']} | {fmt(r['ours_ms'], '.3f')} | "
              f"{fmt(r['peer_ms'], '.3f')} | {ratio} | {goal} | {r['status']} |", flush=True)

    def add(scenario, ours_label, peer_label, ours_ms, peer_ms, goal, ok=True, status=None):
        nonlocal wrong
        ratio = peer_ms / ours_ms if ours_ms and peer_ms is not None else float("nan")
        if status is None and not ok:
            status, wrong = "WRONG OUTPUT", True
        elif status is None and goal is None:
            status = "info"
        elif status is None:
            status = "pass" if ratio >= goal else "fail"
        rows.append(dict(scenario=scenario, ours=ours_label, peer=peer_label, ours_ms=ours_ms, peer_ms=peer_ms,
                         ratio=ratio, goal=goal, status=status))
        show(rows[-1])

    print("| scenario | ours | peer | ours ms | peer ms | ratio | goal | result |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | --- |", flush=True)

    def pack(models, backend=None):
        return netspace_fast.pack_preps(models, width=WIDTH, backend=backend)

    def packer_for(models):
        """A PRepPacker built (and run once: Triton compiles on the first launch) outside the timing."""
        t0 = time.perf_counter()
        packer = netspace_fast.PRepPacker(models, width=WIDTH)
        build_ms = (time.perf_counter() - t0) * 1e3
        packer()
        return packer, build_ms

    with torch.no_grad():
        r32 = make_models("resnet32", 64 // scale, batchnorm=False, seed=1, device=device)
        r32_big = make_models("resnet32", 256 // scale, batchnorm=False, seed=4, device=device)
        r56 = make_models("resnet56", 64 // scale, batchnorm=True, seed=3, device=device)

        # 1. pack B=64 ResNet32 vs (b)
        sc = f"pack resnet32 B={len(r32)}"
        ok = _same(pack_cat_pad(r32, WIDTH), pack(r32), exact=True)
        cat_pad_ms = timer(lambda: pack_cat_pad(r32, WIDTH))
        add(sc, f"pack_preps[{default_backend}]", "(b) cat + pad + stack", timer(lambda: pack(r32)), cat_pad_ms,
            GOAL_VS_CAT_PAD, ok)
        packer, _ = packer_for(r32)
        ok = _same(packer(), pack(r32), exact=True)
        add(sc, f"PRepPacker[{packer.backend}]", "(b) cat + pad + stack", timer(lambda: packer()), cat_pad_ms,
            GOAL_VS_CAT_PAD, ok)
        del packer

        # 2. bandwidth against a device-to-device copy of the same bytes
        sc = f"bandwidth resnet32 B={len(r32_big)}"
        out = pack(r32_big)
        src, dst = torch.rand_like(out), torch.empty_like(out)
        ours_ms = timer(lambda: pack(r32_big))
        copy_ms = timer(lambda: dst.copy_(src))
        read = len(r32_big) * r32_big[0].spec.num_params * 4
        written = out.numel() * 4
        copy_label = f"dst.copy_(src) {written / 2**20:.0f} MiB"
        add(sc, f"pack_preps[{default_backend}]", copy_label, ours_ms, copy_ms, GOAL_COPY_FRACTION)
        packer, build_ms = packer_for(r32_big)
        buf = torch.empty_like(out)
        ok = _same(packer(out=buf), out, exact=True)
        packer_out_ms = timer(lambda: packer(out=buf))
        add(sc, f"PRepPacker[{packer.backend}] out=", copy_label, packer_out_ms, copy_ms, GOAL_COPY_FRACTION, ok)
        add(sc, f"PRepPacker[{packer.backend}]", copy_label, timer(lambda: packer()), copy_ms, None, ok)
        bw_note = (f"{sc}: pack moves {(read + written) / 2**30:.2f} GiB (reads {read / 2**20:.0f} MiB, writes "
                   f"{written / 2**20:.0f} MiB) -> pack_preps {(read + written) / ours_ms / 1e6:.0f} GB/s, "
                   f"PRepPacker(out=) {(read + written) / packer_out_ms / 1e6:.0f} GB/s; the copy moves "
                   f"{2 * written / 2**30:.2f} GiB -> {2 * written / copy_ms / 1e6:.0f} GB/s. Building that "
                   f"PRepPacker (once) took {build_ms:.0f} ms")
        del out, src, dst, buf, packer

        # 3. fold+pack B=64 ResNet56 vs (c)
        sc = f"fold+pack resnet56 B={len(r56)}"
        ok = _same(foldpack_fuse_weights(r56, WIDTH), pack(r56), exact=False)
        add(sc, f"pack_preps[{default_backend}]", "(c) fuse_conv_bn_weights + cat/pad", timer(lambda: pack(r56)),
            timer(lambda: foldpack_fuse_weights(r56, WIDTH)), GOAL_VS_FUSE_WEIGHTS, ok)

        # 4. Triton vs the native backend, same cases
        native = "cuda" if device.type == "cuda" else "cpp"
        for label, models, exact in ((f"resnet32 B={len(r32)}", r32, True),
                                     (f"resnet32 B={len(r32_big)}", r32_big, True),
                                     (f"fold+pack resnet56 B={len(r56)}", r56, False)):
            sc = f"triton vs {native}: {label}"
            if not (can_native and can_triton):
                add(sc, f"pack_preps[{native}]", "pack_preps[triton]", None, None, None, status="n/a (backend missing)")
                continue
            ok = _same(pack(models, "triton"), pack(models, native), exact=exact)
            add(sc, f"pack_preps[{native}]", "pack_preps[triton]", timer(lambda: pack(models, native)),
                timer(lambda: pack(models, "triton")), None, ok)

    print(bw_note)
    print("ratio = peer ms / ours ms (for the copy row: the fraction of D2D copy bandwidth reached)")

    if args.csv:
        new = not os.path.exists(args.csv)
        with open(args.csv, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["date", "device", "torch", *rows[0].keys()])
            if new:
                w.writeheader()
            stamp = datetime.datetime.now().isoformat(timespec="seconds")
            for r in rows:
                w.writerow(dict(date=stamp, device=name, torch=torch.__version__, **r))
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
