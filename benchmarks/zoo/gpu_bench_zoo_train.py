#!/usr/bin/env python
"""GPU benchmark of batched zoo training: instance-epochs per hour, batched vs one at a time.

    python benchmarks/zoo/gpu_bench_zoo_train.py [--epochs 3] [--device cuda] [--quick]

The scenarios of benchmarks/test_bench_zoo.py (the CPU benchmark): (a) 32 LeNetLike on digits
(1,079 training images, batch 64), (b) 8 ResNet8 on 512 cifar10-sized images (batch 128); plus
(c) 64 ResNet8, batch 128, the scale a GPU zoo job really has. One timing = ``--epochs`` training
epochs of every instance, synchronized, median of 3 after one warm-up run.
Providers, same run:
  ours            one ``BatchedZooNet`` job (``train_epoch``: fused gather, per-instance BN,
                  ``make_optimizer``); the conv layout the library picks (``auto``);
                  replayed from CUDA graphs after the first steps of each batch shape. Each provider
                  builds its net (and so its graph cache) and optimizer ONCE; every timed run first
                  restores the initial weights, BatchNorm statistics and optimizer state in place, so
                  the warm-up run pays the captures and the timed runs replay them;
  ours [no CUDA graphs]: the same, every step eager (NETSPACE_CUDA_GRAPHS=0): what the graphs gain;
  ours [grouped]  / ours [split]: the same with NETSPACE_CONV_LAYOUT forced (what the layout rule
                  measured on this GPU gains);
  one at a time   each instance alone: a plain ``nn.Module`` from ``archs.build`` and
                  ``torch.optim.SGD``, the same data and batch size (the original code's way).
TF32 allowed for every provider. Ratio = peer time / ours = ratio of instance-epochs per hour.
Check, after the timings: one more run of ours (replayed) and of ours [no CUDA graphs] (eager) from the
same initial state; every weight and statistic within ``CHECK_RTOL`` relative norm, and the mean
losses too, else 'FAIL' in a row and exit status 1.
Goal (GPU): >= 10x for (a) and (b); reported, never asserted. Rows are markdown lines
starting with '| ', printed as soon as measured. Without a GPU it prints 'skipped: no CUDA' and
exits 0; ``--device cpu --quick`` runs the same code on CPU at a tiny size (a smoke test).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gpu_common import short  # noqa: E402

GOAL = 10.0
#: graphed vs eager training after one epoch: ||a - b|| / ||b|| per tensor (the same kernels, in another
#: order at most: cuDNN's non-deterministic backward algorithms; a stale or empty graph is off by O(1))
CHECK_RTOL = 1e-2


def scenarios(quick: bool):
    if quick:
        return [("(a) lenetlike digits", "lenetlike", 2, 16, 40), ("(b) resnet8 cifar-size", "resnet8", 2, 16, 40)]
    return [("(a) 32 lenetlike digits", "lenetlike", 32, 64, None), ("(b) 8 resnet8 cifar-size", "resnet8", 8, 128, 512),
            ("(c) 64 resnet8 cifar-size", "resnet8", 64, 128, 512)]


def data_for(name: str, n_images, device):
    from netspace_fast import data

    if name == "lenetlike":
        x, y = data.tensors("digits", "train")
        if n_images is not None:
            x, y = x[:n_images], y[:n_images]
    else:
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(n_images, 3, 32, 32, generator=g), torch.randint(0, 10, (n_images,), generator=g)
    return x.to(device), y.to(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class OursJob:
    """One provider's ``BatchedZooNet`` and optimizer, built once (its graph cache lives as long as the
    benchmark); each call trains ``epochs`` epochs from the same initial state, restored in place."""

    def __init__(self, models, device, x, y, bs: int, epochs: int) -> None:
        from netspace_fast.zoo import BatchedZooNet, make_optimizer

        self.net = BatchedZooNet(models).to(device)
        self.opt = make_optimizer(self.net, "multi", 0.01)
        self.initial = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        self.x, self.y, self.bs, self.epochs = x, y, bs, epochs
        self.losses = None

    def reset(self) -> None:
        with torch.no_grad():
            for k, v in self.net.state_dict().items():
                v.copy_(self.initial[k])
        for p in self.net.parameters():
            p.grad = None
        self.opt.state.clear()  # SGD's momentum buffers: made again from the first gradient, as when new

    def __call__(self, epochs: int | None = None) -> None:
        from netspace_fast.zoo import DataOrder, train_epoch

        self.reset()
        order = DataOrder.from_seeds(list(range(self.net.B)))
        for _ in range(self.epochs if epochs is None else epochs):
            self.losses = train_epoch(self.net, self.opt, self.x, self.y, order, self.bs)


def rel_norm(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    scale = b.norm().item()
    return (a - b).norm().item() / (scale if scale > 0 else 1.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("skipped: no CUDA")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    from netspace_fast import settings
    print(f"cudnn.benchmark={settings.apply_cudnn_benchmark()} (the GPU program's rule, for ours and the peer alike)")

    from netspace_fast import archs
    from test_bench_zoo_train import one_at_a_time as peer  # the CPU benchmark's peer, the same code

    dataset = {"lenetlike": "digits", "resnet8": "cifar10"}
    name_dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name_dev}, torch {torch.__version__}, {args.epochs} epochs per timing")
    print("| scenario | provider | ms per timing | instance-epochs / hour | ratio vs one at a time | goal | result |")
    print("|---|---|---:|---:|---:|---:|---|")
    t_start = time.perf_counter()
    failed = False

    def with_env(env, fn):
        """``fn()`` with the environment variables ``env`` set meanwhile."""
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            return fn()
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def timed(fn, env):
        """Median ms of ``fn`` (after one warm-up call: cuDNN autotuning, the allocator, the captures)."""
        def run():
            fn()  # warm-up
            sync(device)
            ts = []
            for _ in range(1 if args.quick else 3):
                t0 = time.perf_counter()
                fn()
                sync(device)
                ts.append(time.perf_counter() - t0)
            return statistics.median(ts) * 1e3
        return with_env(env, run)

    for scen, arch, B, bs, n_images in scenarios(args.quick):
        x, y = data_for(arch, n_images, device)
        models = []
        for s in range(B):
            torch.manual_seed(s)
            models.append(archs.build(arch, dataset[arch]))
        providers = [("ours", {}), ("ours [no CUDA graphs]", {"NETSPACE_CUDA_GRAPHS": "0"})]
        if arch == "resnet8":
            providers += [("ours [grouped]", {"NETSPACE_CONV_LAYOUT": "grouped"}),
                          ("ours [split]", {"NETSPACE_CONV_LAYOUT": "split"})]
        jobs = {prov: OursJob(models, device, x, y, bs, args.epochs) for prov, _ in providers}  # built once

        inst_epochs = B * args.epochs
        peer_ms = None
        if not scen.startswith("(c)"):
            peer_ms = timed(lambda: peer(models, x, y, bs, args.epochs), {})
        rows = [(prov, timed(jobs[prov], env)) for prov, env in providers]
        if peer_ms is not None:
            print(f"| {scen} | one at a time | {peer_ms:.1f} | {inst_epochs / (peer_ms / 3.6e6):,.0f} | 1.00x | | |",
                  flush=True)
        for prov, ms in rows:
            ratio = peer_ms / ms if peer_ms is not None else None
            res = "" if ratio is None or prov != "ours" else ("pass" if ratio >= GOAL else "fail")
            goal = f">= {GOAL:g}x" if (prov == "ours" and ratio is not None and not scen.startswith("(c)")) else ""
            rtxt = f"{ratio:.2f}x" if ratio is not None else "-"
            print(f"| {scen} | {prov} | {ms:.1f} | {inst_epochs / (ms / 3.6e6):,.0f} | {rtxt} | {goal} | {res} |",
                  flush=True)

        # after the timings: the graphed job (replaying what the timings captured) against the eager one
        graphed, eager = jobs["ours"], jobs["ours [no CUDA graphs]"]
        try:
            before = graphed.net.graphs.stats()
            with_env({}, lambda: graphed(1))
            after = graphed.net.graphs.stats()
            with_env({"NETSPACE_CUDA_GRAPHS": "0"}, lambda: eager(1))
            sync(device)
            sa, sb = graphed.net.state_dict(), eager.net.state_dict()
            worst = max((rel_norm(sa[k], sb[k]), k) for k in sb if sb[k].is_floating_point())
            worst = max(worst, (rel_norm(graphed.losses, eager.losses), "mean losses"))
            replays = after["replayed"] - before["replayed"]
            captures = after["captured"] - before["captured"]
            detail = (f"graphed vs eager after 1 epoch: worst rel norm {worst[0]:.1e} ({worst[1]}); "
                      f"{replays} replayed, {captures} captured during the check")
            ok = worst[0] <= CHECK_RTOL
        except Exception as e:  # noqa: BLE001 - report, do not crash
            ok, detail = False, short(e)
        failed |= not ok
        print(f"| {scen} | check (after timing) | - | - | - | <= {CHECK_RTOL:g} | "
              f"{'ok' if ok else 'FAIL'}: {detail} |", flush=True)
    print(f"total {time.perf_counter() - t_start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
