"""Where one Multi-Architecture NetSpace training step spends its time, on a zoo of the user's (the
profile BENCHMARKS "NetSpace quality" cites for the Multi recipe).

    python benchmarks/space/profile_multi_step.py ZOO --preset fmnist-multi --root R [--steps 20]

Builds the preset's space on the zoo's training networks, runs ``--warmup`` steps untimed, then
``--steps`` steps exactly as the trainer takes them (the same meta-batches and image batches, Adam,
clipping) under ``torch.profiler``, and prints: the wall time per step and the share of its phases
(encoder, decoder + ClassId head, the decoded networks' evaluation per architecture, the losses,
the backward, the optimizer step), then torch's table of the operators by self CPU time. An optional
``--image-batch`` replaces the preset's images per step (the phases scale differently with it).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("zoo")
    ap.add_argument("--preset", default="fmnist-multi")
    ap.add_argument("--root", default=None)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--image-batch", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", type=int, default=25, help="operators shown")
    args = ap.parse_args(argv)

    from netspace_fast.space import step as step_mod
    from netspace_fast.space.presets import SPACE_PRESETS
    from netspace_fast.space.train import build_space, load_space_data, param_groups, rank_loss

    p = SPACE_PRESETS[args.preset]
    if args.image_batch:
        p = dataclasses.replace(p, image_batch=args.image_batch)
    if p.protocol != "multi":
        print(f"--preset: expected a Multi preset, got {args.preset!r} ({p.protocol})", file=sys.stderr)
        return 2
    d = load_space_data(args.zoo, p, root=args.root)
    enc, dec = build_space(p, d.height, args.seed)
    opt = torch.optim.Adam(param_groups(enc, dec, p), lr=p.lr)
    params = list(enc.parameters()) + list(dec.parameters())
    preps, class_ids = d.stacked("train")
    x, y = d.images["train"]
    g = torch.Generator().manual_seed(args.seed)

    # the phases of the forward, labelled where multi_step calls them (the backward is one phase)
    real_eval, real_dec, real_enc = step_mod.batched_forward, dec.forward, enc.forward

    def evaluate(spec, *a, **k):
        with record_function(f"phase: evaluate {spec.name}"):
            return real_eval(spec, *a, **k)

    def decode(*a, **k):
        with record_function("phase: decoder"):
            return real_dec(*a, **k)

    def encode(*a, **k):
        with record_function("phase: encoder"):
            return real_enc(*a, **k)

    step_mod.batched_forward, dec.forward, enc.forward = evaluate, decode, encode

    def one_step():
        idx = torch.randperm(x.shape[0], generator=g)[:p.image_batch]
        nets = torch.randperm(preps.shape[0], generator=g)[:p.meta_batch]
        with record_function("phase: forward (all)"):
            loss, _ = rank_loss(enc, dec, "multi", d.specs, preps, class_ids, nets, x, y, d.teacher_logits, idx,
                                0, 1, T=p.kd_temperature)
        opt.zero_grad(set_to_none=True)
        with record_function("phase: backward"):
            loss.backward()
        with record_function("phase: optimizer"):
            if p.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(params, p.clip_grad)
            opt.step()

    for _ in range(args.warmup):
        one_step()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            one_step()
    wall = (time.perf_counter() - t0) / args.steps
    step_mod.batched_forward = real_eval
    events = prof.key_averages()
    phases = sorted(((e.key, e.cpu_time_total / 1e3 / args.steps) for e in events if e.key.startswith("phase: ")),
                    key=lambda kv: -kv[1])
    print(f"{args.preset} on {args.zoo}: {args.steps} steps, meta-batch {p.meta_batch}, {p.image_batch} images a step, "
          f"{torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.1f}")
    print(f"wall per step (profiled): {wall * 1e3:.1f} ms")
    print("| phase | ms per step | share of the step |\n| --- | ---: | ---: |")
    for key, ms in phases:
        print(f"| {key.removeprefix('phase: ')} | {ms:.1f} | {ms / (wall * 1e3):.0%} |")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
