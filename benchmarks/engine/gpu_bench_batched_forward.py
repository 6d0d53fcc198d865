#!/usr/bin/env python
"""GPU benchmark of batched functional evaluation: forward + backward into the PReps.

    python benchmarks/engine/gpu_bench_batched_forward.py [--rep-ms 200] [--budget 135] [--scenarios i,ii]

Scenarios (W = 10,000, shared input x of N = 128 cifar10 images, BN-free networks):
  (i)  B = 8 ResNet8;  (ii) B = 64 LeNetLike; (iii) B = 32 of a user architecture, the
  depthwise-separable CNN of examples/dsconv.py (the general engine; ``backend="triton"`` does
  not apply to it: its layers are cuDNN / cuBLAS calls).
Providers, same run, one step each = ``preps.grad = None``, forward, ``.sum().backward()``:
  ours     ``netspace_fast.batched_forward(spec, preps, x)``: on CUDA the GPU program (cuDNN grouped
           convolutions, fused epilogues, replayed from CUDA graphs after its first calls);
  triton layers  ``batched_forward(..., backend="triton")``: every layer as the batched Triton layer
           ops (the older GPU program; informational, no goal);
  loop     ``batched_forward_reference`` (unpack each PRep into views, run each network, stack);
  vmap     ``torch.func.vmap`` over ``functional_call`` of the BN-free module with the stacked
           parameter views of ``unpack_prep(preps, layout)``;
  compile  ``torch.compile`` (mode default) of that vmapped function, compiled once before timing;
           a compile error is reported as 'failed: <reason>' in its row.
TF32 is allowed for every provider (cuBLAS and cuDNN flags on; ours' Triton kernels use TF32 on
CUDA by default). Times: ``triton.testing.do_bench`` (CUDA events, median, warmup 25 ms, rep
``--rep-ms``). Goals (GPU): ours >= 5x the loop, >= 3x vmap, >= 1.5x torch.compile(vmap);
reported, never asserted. Also ours' achieved TFLOP/s (3 x the forward FLOPs, counted on the BN-free
module on one image with FlopCounterMode, x N x B) as a fraction of the dense TF32 peak, and an
estimate of its activation traffic against the HBM bandwidth (see the notes it prints).

Correctness, twice per scenario: ours' PRep gradient against the loop's, max |diff| / max |loop|
<= 2e-2 (TF32), on the first (eager) call, and again AFTER the timing on fresh PReps and images of
the same shapes, when ours' call is replayed from its CUDA graphs (the check says how many replays it
saw); otherwise a FAIL row and exit status 1. Between the two, one more call captures the graphs, so the timing measures replays only.
vmap's and compile's gradients are checked the same way and flagged in their rows (no effect on the
exit status).

Result rows are markdown table lines starting with '| ', printed as soon as each is measured (so a
timeout keeps what was done); torch.compile runs last, and is skipped when less than ``--budget``
minus the time used remains for it. ``--scenarios i,ii`` runs only those (the device check runs
(i)/(ii) first and (iii) later). Without a GPU it prints 'skipped: no CUDA' and exits 0.
``--device cpu --quick`` (with TRITON_INTERPRET=1 for ours) runs the same code on CPU with B = N = 1
for ResNet8 and B = N = 2 for LeNetLike, times ours' checked step once (the interpreter is slow),
and skips torch.compile unless ``--cpu-compile``: a smoke test of this script, not a benchmark.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/: gpu_common.py

from gpu_common import make_timer, short  # noqa: E402

WIDTH = 10_000
GOALS = {"loop": 5.0, "vmap": 3.0, "compile": 1.5}
GRAD_RTOL = 2e-2
# (dense TF32 TFLOP/s, HBM TB/s) per card; dense = without 2:4 sparsity
# (the first key found in the device's name; H100 SXM: HBM3 3.35 TB/s, H100 PCIe: 378 TFLOP/s, 2.0 TB/s)
PEAKS = {"H200": (495.0, 4.8), "H100 PCIe": (378.0, 2.0), "H100": (495.0, 3.35)}
DEFAULT_PEAK = ("H100 SXM (assumed)", 495.0, 3.35)
COMPILE_RESERVE_S = 40.0  # a cold torch.compile of one scenario (fwd + bwd) takes up to this


def scenarios(quick: bool) -> list[tuple[str, str, int, int]]:
    if quick:  # the Triton interpreter takes ~50 s for one ResNet8 step at B = N = 1 (2-core VM)
        return [("(i) resnet8", "resnet8", 1, 1), ("(ii) lenetlike", "lenetlike", 2, 2),
                ("(iii) dsconv", "dsconv", 2, 2)]
    return [("(i) resnet8", "resnet8", 8, 128), ("(ii) lenetlike", "lenetlike", 64, 128),
            ("(iii) dsconv", "dsconv", 32, 128)]


def count_per_image(spec) -> tuple[int, int]:
    """(forward FLOPs, activation elements written by conv/linear layers) of one network on one image.

    Counted on the BN-free module at the dispatcher (torch.utils.flop_counter.FlopCounterMode: a
    multiply-add is 2 FLOPs; a dispatch mode that sums the outputs of convolution / (add)mm). Module
    forward hooks would see nothing: SpecNet.forward calls F.conv2d / F.linear with the
    submodules' parameters, it never calls the Conv2d / Linear submodules."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    from netspace_fast import archs

    aten = torch.ops.aten
    layer_ops = {aten.convolution.default, aten.addmm.default, aten.mm.default}

    class CountOutputs(TorchDispatchMode):
        elements = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in layer_ops:
                CountOutputs.elements += out.numel()
            return out

    model = archs.build(spec.name, spec.dataset, batchnorm=False)
    x = torch.zeros(1, *spec.input_shape)
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            model(x)
        with CountOutputs():
            model(x)
    flops, acts = int(fc.get_total_flops()), CountOutputs.elements
    if flops <= 0 or acts <= 0:
        raise RuntimeError(f"{spec.name}: counted {flops} FLOPs and {acts} activations per image")
    return flops, acts


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rel_err(g: torch.Tensor | None, ref: torch.Tensor) -> float:
    if g is None or g.shape != ref.shape:
        return float("inf")
    scale = ref.abs().max().item()
    return (g - ref).abs().max().item() / (scale if scale > 0 else 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cpu: smoke-test this script without a GPU (use with --quick and TRITON_INTERPRET=1)")
    parser.add_argument("--quick", action="store_true", help="tiny B and N, 3 repetitions (ours: 1 on CPU)")
    parser.add_argument("--rep-ms", type=int, default=200, help="do_bench measuring time per provider (ms)")
    parser.add_argument("--budget", type=float, default=135.0,
                        help="seconds this script may take; torch.compile is skipped when it would not fit")
    parser.add_argument("--cpu-compile", action="store_true", help="also run torch.compile on CPU")
    parser.add_argument("--scenarios", default="i,ii,iii",
                        help="comma-separated scenario numbers to run (default i,ii,iii)")
    args = parser.parse_args(argv)
    chosen = [c.strip() for c in args.scenarios.split(",") if c.strip()]
    if not chosen or any(c not in ("i", "ii", "iii") for c in chosen):
        parser.error(f"--scenarios: expected a comma-separated list of i, ii, iii, got {args.scenarios!r}")
    t_start = time.perf_counter()

    if args.device == "cuda" and not torch.cuda.is_available():
        print("skipped: no CUDA")
        return 0

    import netspace_fast
    from netspace_fast import archs
    from netspace_fast.engine import batched_forward_reference
    from netspace_fast.engine.graphs import ENGINE
    from torch.func import functional_call, vmap

    # (iii): a user architecture (examples/dsconv.py), on the general engine: cuDNN / cuBLAS calls
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples"))
    from dsconv import depthwise_separable

    archs.register("dsconv", depthwise_separable)

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        from netspace_fast import settings
        print(f"cudnn.benchmark={settings.apply_cudnn_benchmark()} (the GPU program's rule, for ours and the peers alike)")
        name = torch.cuda.get_device_name(device)
        card, peak_tflops, peak_tbs = DEFAULT_PEAK
        for key, (pf, pb) in PEAKS.items():
            if key in name:
                card, peak_tflops, peak_tbs = key, pf, pb
                break
    else:
        name = "CPU (smoke test)"
        card, peak_tflops, peak_tbs = DEFAULT_PEAK
    timer = make_timer(device, args.rep_ms, 3 if args.quick else 10)
    run_compile = device.type == "cuda" or args.cpu_compile
    single_shot = device.type == "cpu" and args.quick
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        os.environ.setdefault("NETSPACE_GPU_REHEARSAL", "1")  # ours: the GPU program, rehearsed on CPU
    print(f"device: {name}; torch {torch.__version__}; TF32 allowed: cuBLAS "
          f"{torch.backends.cuda.matmul.allow_tf32}, cuDNN {torch.backends.cudnn.allow_tf32}, ours' Triton kernels "
          f"{'yes' if device.type == 'cuda' else 'no (interpreter: float32)'}; peaks used: {peak_tflops:g} TFLOP/s "
          f"dense TF32, {peak_tbs:g} TB/s HBM ({card})", flush=True)

    header = ("| scenario | provider | ms / step | TFLOP/s | ratio (provider ms / ours ms) | goal | result |\n"
              "| --- | --- | ---: | ---: | ---: | ---: | --- |")
    print(header, flush=True)

    def row(scenario, provider, ms, tflop, ratio, goal, result):
        ms_s = "-" if ms is None else f"{ms:.3f}"
        tf_s = "-" if ms is None or tflop is None else f"{tflop / (ms * 1e-3) / 1e12:.2f}"
        ratio_s = "-" if ratio is None else f"{ratio:.2f}x"
        goal_s = "-" if goal is None else f">= {goal:g}x"
        print(f"| {scenario} | {provider} | {ms_s} | {tf_s} | {ratio_s} | {goal_s} | {result} |", flush=True)

    failed = False
    notes = []
    pending_compile = []

    for label, arch, B, N in scenarios(args.quick):
        if label.split(")")[0].lstrip("(") not in chosen:
            continue
        scen = f"{label} B={B} N={N}"
        torch.manual_seed(0)
        spec = archs.spec(arch, "cifar10")
        with torch.no_grad():
            preps0 = netspace_fast.pack_preps([archs.build(arch, "cifar10", batchnorm=False) for _ in range(B)],
                                              WIDTH).to(device)
        preps = preps0.detach().requires_grad_()
        x = torch.randn(N, *spec.input_shape, device=device)
        layout = netspace_fast.PRepLayout.for_spec(spec, preps.shape[2], preps.shape[1])
        module = archs.build(arch, "cifar10", batchnorm=False).to(device)
        fwd_flops_img, acts_img = count_per_image(spec)
        ours_label = "ours (GPU program)" if spec.fast else "ours (general engine)"
        step_flops = 3 * fwd_flops_img * N * B

        def vmapped(p, xx, module=module, layout=layout):
            views = dict(netspace_fast.unpack_prep(p, layout))
            return vmap(lambda params: functional_call(module, params, (xx,)))(views)

        def make_step(forward, preps=preps, x=x):
            def step():
                preps.grad = None
                forward(preps, x).sum().backward()
            return step

        steps = {
            "ours": make_step(lambda p, xx, spec=spec: netspace_fast.batched_forward(spec, p, xx)),
            "loop": make_step(lambda p, xx, spec=spec: batched_forward_reference(spec, p, xx)),
            "vmap": make_step(vmapped),
        }

        def grad_of(step, preps=preps):
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return None if preps.grad is None else preps.grad.detach().clone()

        # correctness, once: the loop's gradient is the reference
        ref = grad_of(steps["loop"])
        try:
            t0 = time.perf_counter()
            err_ours = rel_err(grad_of(steps["ours"]), ref)
            first_ms = (time.perf_counter() - t0) * 1e3
            ours_err_msg = None
        except Exception as e:  # noqa: BLE001 - report, do not crash
            err_ours, ours_err_msg = float("inf"), short(e)
        if ours_err_msg is not None:
            row(scen, ours_label, None, None, None, None, f"FAIL: {ours_err_msg}")
            failed = True
            continue
        if not err_ours <= GRAD_RTOL:
            row(scen, ours_label, None, None, None, None,
                f"FAIL: gradient vs loop rel err {err_ours:.2e} > {GRAD_RTOL:g}")
            failed = True
            continue

        # the interpreter is too slow to repeat: on CPU --quick ours' time is that of the checked step
        if single_shot:
            ours_ms = first_ms
        else:
            steps["ours"]()  # the second call captures the CUDA graphs: the timing below replays them
            sync(device)
            ours_ms = timer(steps["ours"])
        # after the timing: the replayed call on FRESH inputs of the same shapes (a graph that replayed
        # its capture-time work would return the old result) against the loop's gradient on them
        try:
            preps2 = (preps0 + 0.05 * torch.randn_like(preps0)).requires_grad_()
            x2 = torch.randn_like(x)
            ref2 = grad_of(make_step(lambda p, xx, spec=spec: batched_forward_reference(spec, p, xx), preps2, x2),
                           preps2)
            before = ENGINE.stats()["replayed"]
            err_replay = rel_err(grad_of(make_step(lambda p, xx, spec=spec: netspace_fast.batched_forward(spec, p, xx),
                                                   preps2, x2), preps2), ref2)
            replays = ENGINE.stats()["replayed"] - before
            replay_msg = None
        except Exception as e:  # noqa: BLE001
            err_replay, replay_msg, replays = float("inf"), short(e), 0
        checks = f"first call rel err vs loop {err_ours:.1e}; after timing ({replays} replayed) {err_replay:.1e}"
        if replay_msg is not None or not err_replay <= GRAD_RTOL:
            row(scen, ours_label, ours_ms, step_flops, None, None,
                f"FAIL: after timing: {replay_msg or f'gradient vs loop rel err {err_replay:.2e} > {GRAD_RTOL:g}'}"
                f" ({checks})")
            failed = True
        else:
            row(scen, ours_label, ours_ms, step_flops, None, None, f"grad ok ({checks})")
        if spec.fast and not single_shot:
            steps["triton layers"] = make_step(
                lambda p, xx, spec=spec: netspace_fast.batched_forward(spec, p, xx, backend="triton"))
        for prov in [p for p in ("triton layers", "loop", "vmap") if p in steps]:
            goal = GOALS.get(prov)
            try:
                err = 0.0 if prov == "loop" else rel_err(grad_of(steps[prov]), ref)
                ms = timer(steps[prov])
            except Exception as e:  # noqa: BLE001
                row(scen, prov, None, None, None, goal, f"failed: {short(e)}")
                continue
            ratio = ms / ours_ms
            res = "info" if goal is None else ("pass" if ratio >= goal else "fail")
            if err > GRAD_RTOL:
                res += f" (peer grad differs from loop: rel err {err:.1e})"
            row(scen, prov, ms, step_flops, ratio, GOALS[prov], res)

        # ours against the roofline
        tflops = step_flops / (ours_ms * 1e-3) / 1e12
        act_bytes = 4 * B * N * acts_img
        traffic = 6 * act_bytes
        tbs = traffic / (ours_ms * 1e-3) / 1e12
        row(scen, "ours vs peak", ours_ms, step_flops, None, None,
            f"{tflops:.2f} TFLOP/s = {100 * tflops / peak_tflops:.2f}% of {peak_tflops:g} (dense TF32, {card}); "
            f"~{traffic / 1e6:.0f} MB activation traffic -> {tbs:.3f} TB/s = {100 * tbs / peak_tbs:.1f}% of "
            f"{peak_tbs:g} TB/s")
        notes.append(f"{scen}: forward {fwd_flops_img / 1e6:.2f} MFLOP/image, step = 3 x {fwd_flops_img / 1e6:.2f} "
                     f"MFLOP x N={N} x B={B} = {step_flops / 1e9:.2f} GFLOP; conv/linear outputs "
                     f"{acts_img} floats/image -> {act_bytes / 1e6:.1f} MB of activations")
        pending_compile.append((scen, make_step(torch.compile(vmapped)), ref, ours_ms, step_flops, grad_of))

    # torch.compile last: the slowest part to set up (compilation), kept out of timing
    for scen, step, ref, ours_ms, step_flops, grad_of in pending_compile:
        if not run_compile:
            row(scen, "torch.compile(vmap)", None, None, None, GOALS["compile"], "skipped: CPU smoke test")
            continue
        used = time.perf_counter() - t_start
        if args.budget - used < COMPILE_RESERVE_S:
            row(scen, "torch.compile(vmap)", None, None, None, GOALS["compile"],
                f"skipped: time budget ({used:.0f} s of {args.budget:g} s used)")
            continue
        t0 = time.perf_counter()
        try:
            g = grad_of(step)  # compiles forward and backward
            grad_of(step)
            compile_s = time.perf_counter() - t0
            err = rel_err(g, ref)
            ms = timer(step)
        except Exception as e:  # noqa: BLE001
            row(scen, "torch.compile(vmap)", None, None, None, GOALS["compile"], f"failed: {short(e)}")
            continue
        ratio = ms / ours_ms
        res = "pass" if ratio >= GOALS["compile"] else "fail"
        if err > GRAD_RTOL:
            res += f" (peer grad differs from loop: rel err {err:.1e})"
        row(scen, "torch.compile(vmap)", ms, step_flops, ratio, GOALS["compile"],
            f"{res} (compile + 2 steps {compile_s:.0f} s)")

    print("ratio = provider ms / ours ms (a speedup of ours); one step = grad=None, forward, .sum().backward() "
          "into the PReps; medians of do_bench (CUDA events) on CUDA, of perf_counter on CPU")
    print("FLOPs: FlopCounterMode on the BN-free module, one image (2 FLOPs per multiply-add, conv/linear layers; "
          "module forward hooks never fire: SpecNet calls F.conv2d/F.linear itself), x N x B; fwd+bwd = 3 x "
          "forward. TFLOP/s of every provider from that same count")
    print(f"peaks: {peak_tflops:g} TFLOP/s dense TF32 (without 2:4 sparsity), HBM {peak_tbs:g} TB/s: the {card} "
          f"figures this script uses")
    print("activation traffic estimate = 6 x (bytes of all conv/linear outputs, float32, x N x B): forward writes "
          "each activation and the next layer reads it (2x); backward writes and reads a gradient of the same size "
          "(2x) and re-reads the saved activation for the weight gradient and the activation derivative (2x); "
          "weights, the shared input, pooling, residual reads and cache reuse are ignored")
    for n in notes:
        print(n)
    print(f"total {time.perf_counter() - t_start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
