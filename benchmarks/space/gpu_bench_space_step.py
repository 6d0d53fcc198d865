#!/usr/bin/env python
"""GPU benchmark of one NetSpace training step at the paper configuration: batched evaluation of the
networks vs the original code's per-network loop.

    python benchmarks/space/gpu_bench_space_step.py [--rep-ms 200] [--budget 120]
    python benchmarks/space/gpu_bench_space_step.py --device cpu --quick     (a smoke test of this script)

The paper configuration (netspace_fast/space/presets.py, the cifar10-* and tinyimagenet-single presets;
docs/METHOD.md sections 5 and 6; the original's train_single_arch.py / train_multi_arch.py): embedding
E = 4096 (``SpaceConfig.paper``), PRep width 10,000, 128 images per step, Adam lr 1e-4. Scenarios:
  (a) Single, CIFAR-10: a meta-batch of 8 ResNet8, PReps (8, 10000);
  (b) Multi, CIFAR-10: a meta-batch of 2, a LeNetLike and a ResNet32 (ClassIds 0 and 3: one L_gamma
      pair, 2 interpolations), PReps at ResNet32's height (48, 10000), ClassId head of 4; the teacher's
      (ResNet56) logits given. The ClassId head is first fitted (on the fixed embeddings, the rest of
      the space untouched) until every embedding reads as its own architecture, the state of a trained
      space: the decoded networks are then a LeNetLike, a ResNet32 and the two interpolations' VanillaCNN
      and ResNet8 (at initialization the head's argmax is arbitrary, and so would be what gets evaluated);
  (c) Single, Tiny-ImageNet: 8 ResNet8 (64 x 64 images, 200 classes), PReps (16, 10000).
One step = ``zero_grad``, encoder + decoder forward, the input networks' logits (the teachers, no
gradient) and the decoded networks' logits, the loss, backward into the encoder and decoder, Adam step.
Providers, same run, each on its own copy of the same encoder, decoder and Adam state:
  ours   ``netspace_fast.space.step.single_step`` / ``multi_step``: ONE ``batched_forward`` call for the
         input networks and one per architecture for the decoded ones;
  loop   the same step with the evaluation done the original way: a Python loop over the networks,
         each PRep unpacked and run alone (``netspace_fast.engine.batched_forward_reference`` on one
         network), one loss per network, combined as the library's step combines them; everything else
         (encoder, decoder, losses, reductions, optimizer) identical.
Also, informative: 'loop + unfused encoder' (the original's encoder too: its modules one after the other
with dense autograd, ``Encoder(fused=False)``) and 'enc+dec+Adam only' (ours' step without any
evaluation: the part batching cannot speed up, so peer ms / this ms bounds the ratio).
Correctness, per scenario before timing: ours' and the loop's loss and gradients from the same
state agree (max |diff| / max |loop| <= 2e-2 per parameter, TF32); and again AFTER the timing, on
fresh images of the same shapes, when ours' batched calls replay their CUDA graphs (the row says how
many replays the check saw);
otherwise 'FAIL' in the row (the providers are timed all the same) and exit status 1.
TF32 allowed and cuDNN autotuning on for every provider. Times: ``triton.testing.do_bench`` (CUDA events,
median, warmup 25 ms, rep ``--rep-ms``); on CPU the mean of perf_counter over 2 steps after one.
Goal (GPU): ours >= 3x the loop; reported, never asserted. Rows are markdown lines starting with '| ',
printed as soon as measured. Without a GPU it prints 'skipped: no CUDA' and exits 0; ``--device cpu
--quick`` runs the same code on CPU with a small space (E = 256), 2 networks and 4 images.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/: gpu_common.py

from gpu_common import make_timer, short  # noqa: E402

WIDTH = 10_000
N_IMAGES = 128
GOAL = 3.0
GRAD_RTOL = 2e-2
LR = 1e-4
#: the small space of --quick (the CPU presets' smoke-test sizes, netspace_fast/space/presets.py _TINY)
QUICK_SPACE = {"embed": 256, "view": 16, "dec_a": 8, "dec_b": 16, "dec_c": 8}
MULTI_ARCHS = ("lenetlike", "vanillacnn", "resnet8", "resnet32")  # ClassId order


def scenarios(quick: bool) -> list[dict]:
    b, n = (2, 4) if quick else (8, N_IMAGES)
    return [
        {"label": f"(a) single cifar10 {b} resnet8", "protocol": "single", "dataset": "cifar10",
         "nets": ("resnet8",) * b, "n": n},
        {"label": "(b) multi cifar10 lenetlike+resnet32", "protocol": "multi", "dataset": "cifar10",
         "nets": ("lenetlike", "resnet32"), "n": 4 if quick else N_IMAGES},
        {"label": f"(c) single tinyimagenet {b} resnet8", "protocol": "single", "dataset": "tinyimagenet",
         "nets": ("resnet8",) * b, "n": n},
    ]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Scenario:
    """The inputs of one scenario: specs, PReps, images (labels and teacher logits for Multi), and one
    initial encoder + decoder state that every provider copies."""

    def __init__(self, s: dict, quick: bool, device: torch.device) -> None:
        from netspace_fast import archs, pack_preps
        from netspace_fast.prep import PRepLayout
        from netspace_fast.space import Decoder, Encoder, SpaceConfig

        self.protocol, self.label = s["protocol"], s["label"]
        ds = s["dataset"]
        torch.manual_seed(0)
        if self.protocol == "single":
            self.specs = [archs.spec(s["nets"][0], ds)]
            height = PRepLayout.for_spec(self.specs[0], WIDTH).height
            self.class_ids = None
        else:
            self.specs = [archs.spec(n, ds) for n in MULTI_ARCHS]
            height = max(PRepLayout.for_spec(sp, WIDTH).height for sp in self.specs)
            self.class_ids = torch.tensor([MULTI_ARCHS.index(n) for n in s["nets"]], device=device)
        with torch.no_grad():
            self.preps = torch.cat([pack_preps(archs.build(n, ds, batchnorm=False), WIDTH, height)
                                    for n in s["nets"]]).to(device)
        spec0 = self.specs[0]
        n = s["n"]
        self.x = torch.randn(n, *spec0.input_shape, device=device)
        self.y = torch.randint(0, spec0.num_outputs, (n,), device=device)
        self.teacher = torch.randn(n, spec0.num_outputs, device=device)
        num_archs = len(MULTI_ARCHS) if self.protocol == "multi" else 0
        cfg = (SpaceConfig(height, WIDTH, num_archs=num_archs, **QUICK_SPACE) if quick
               else SpaceConfig.paper(height, WIDTH, num_archs=num_archs))
        self.config = cfg
        self.encoder, self.decoder = Encoder(cfg).to(device), Decoder(cfg).to(device)
        self.note = ""
        if self.protocol == "multi":
            self.note = self._fit_head()

    def _fit_head(self) -> str:
        """Fit the ClassId head alone on the fixed embeddings of the meta-batch and its interpolations,
        until each reads as its own architecture; returns a note of the result."""
        from netspace_fast.space.losses import gamma_plan, interpolate

        enc, dec = self.encoder, self.decoder
        with torch.no_grad():
            z = enc(self.preps)
            zg, targets = interpolate(z, gamma_plan(self.class_ids.tolist(), len(MULTI_ARCHS)))
            z_all, want = torch.cat([z, zg]), torch.cat([self.class_ids, targets])
        head = list(dec.arch_conv.parameters()) + list(dec.arch_classifier.parameters())
        opt = torch.optim.Adam(head, lr=1e-2)
        for it in range(500):
            loss = torch.nn.functional.cross_entropy(dec.class_logits(z_all), want)
            if loss.item() < 0.05:  # each embedding's own architecture at probability ~0.95 or more
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        for p in dec.parameters():
            p.grad = None
        with torch.no_grad():
            logits = dec.class_logits(z_all)
            ce = torch.nn.functional.cross_entropy(logits, want).item()
        got = logits.argmax(-1)
        names = "/".join(MULTI_ARCHS[c] for c in got.tolist())
        ok = torch.equal(got, want)
        return f"ClassId head fitted ({it + 1} Adam steps, L_class {ce:.3f}): the decoded networks are {names}" + (
            "" if ok else f" (wanted {'/'.join(MULTI_ARCHS[c] for c in want.tolist())})")

    def copy(self, fused: bool = True):
        """A fresh copy of the initial encoder and decoder, and an Adam over them."""
        from netspace_fast.space import Encoder

        dec = copy.deepcopy(self.decoder)
        if fused:
            enc = copy.deepcopy(self.encoder)
        else:
            enc = Encoder(self.config, fused=False).to(self.preps.device)
            enc.load_state_dict(self.encoder.state_dict())
        return enc, dec, torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=LR)


# ---------------------------------------------------------------------------------------------
# the losses of one step: ours (the library's step) and the loop (the original's evaluation)


def ours_loss(sc: Scenario, enc, dec):
    from netspace_fast.space.step import multi_step, single_step

    if sc.protocol == "single":
        out = single_step(enc, dec, sc.specs[0], sc.preps, sc.x)
        return out.loss, None
    out = multi_step(enc, dec, sc.specs, sc.preps, sc.class_ids, sc.x, sc.y, sc.teacher)
    return out.loss, out.predicted


def _one(spec, prep, x):
    """One network, alone: its PRep unpacked into views and run (the per-network reference)."""
    from netspace_fast.engine import batched_forward_reference

    return batched_forward_reference(spec, prep[None], x)[0]


def loop_loss(sc: Scenario, enc, dec):
    """The step of :func:`netspace_fast.space.step.single_step` / ``multi_step`` with every network
    evaluated alone in a Python loop (the original code's ``compute_loss``), the same losses and
    reductions."""
    from netspace_fast.space.losses import class_loss, gamma_plan, interpolate, kd_loss, multi_kd_loss

    if sc.protocol == "single":
        spec = sc.specs[0]
        decoded = dec(enc(sc.preps))
        per = []
        for b in range(sc.preps.shape[0]):
            with torch.no_grad():
                teacher = _one(spec, sc.preps[b], sc.x)
            per.append(kd_loss(_one(spec, decoded[b], sc.x), teacher))
        return torch.stack(per).mean(), None
    B = sc.preps.shape[0]
    z = enc(sc.preps)
    plan = gamma_plan(sc.class_ids.tolist(), len(sc.specs))
    z_gamma, targets = interpolate(z, plan)
    z_all = torch.cat([z, z_gamma])
    decoded = dec(z_all)
    logits = dec.class_logits(z_all)
    predicted = logits.detach().argmax(-1)
    kd = [multi_kd_loss(_one(sc.specs[c], decoded[k], sc.x), sc.teacher, sc.y)
          for k, c in enumerate(predicted.tolist())]
    loss = class_loss(logits[:B], sc.class_ids) * B + torch.stack(kd[:B]).sum()
    if plan:
        loss = loss + class_loss(logits[B:], targets) * len(plan) + torch.stack(kd[B:]).sum()
    return loss, predicted


def encdec_loss(sc: Scenario, enc, dec):
    """Ours' step without any evaluation: the encoder and decoder (and ClassId head) forward, a
    stand-in loss on their outputs."""
    from netspace_fast.space.losses import gamma_plan, interpolate

    if sc.protocol == "single":
        return dec(enc(sc.preps)).square().mean(), None
    z = enc(sc.preps)
    zg, _ = interpolate(z, gamma_plan(sc.class_ids.tolist(), len(sc.specs)))
    z_all = torch.cat([z, zg])
    return dec(z_all).square().mean() + dec.class_logits(z_all).square().mean(), None


def make_step(sc: Scenario, loss_fn, fused: bool = True):
    enc, dec, opt = sc.copy(fused)
    state = {"predicted": None}

    def step():
        opt.zero_grad(set_to_none=True)
        loss, predicted = loss_fn(sc, enc, dec)
        loss.backward()
        opt.step()
        state["predicted"] = predicted
    return step, state


def grads(sc: Scenario, loss_fn) -> tuple[float, list]:
    """Loss and gradients of one step from the initial state (no optimizer step)."""
    enc, dec, _ = sc.copy()
    loss, _ = loss_fn(sc, enc, dec)
    loss.backward()
    return loss.item(), [p.grad for p in list(enc.parameters()) + list(dec.parameters())]


def worst_rel_err(got: list, ref: list) -> float:
    worst = 0.0
    for g, r in zip(got, ref):
        if r is None and g is None:
            continue
        if r is None or g is None:
            if (r if g is None else g).abs().max().item() == 0:
                continue
            return float("inf")
        scale = r.abs().max().item()
        worst = max(worst, (g - r).abs().max().item() / (scale if scale > 0 else 1.0))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cpu: smoke-test this script without a GPU (with --quick)")
    parser.add_argument("--quick", action="store_true", help="a small space, 2 networks, 4 images")
    parser.add_argument("--rep-ms", type=int, default=200, help="do_bench measuring time per provider (ms)")
    parser.add_argument("--budget", type=float, default=120.0,
                        help="seconds this script may take: a scenario that would start later is skipped")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("skipped: no CUDA")
        return 0
    device = torch.device(args.device)
    from netspace_fast.engine.graphs import ENGINE
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        from netspace_fast import settings
        print(f"cudnn.benchmark={settings.apply_cudnn_benchmark()} (the GPU program's rule, for ours and the peers alike)")
        name = torch.cuda.get_device_name(device)
    else:
        name = "CPU (smoke test)"
    timer = make_timer(device, args.rep_ms, 2)
    print(f"device: {name}; torch {torch.__version__}; TF32 allowed, cuDNN autotuning "
          f"{'on' if device.type == 'cuda' else 'n/a'}; one step = zero_grad, encoder + decoder, evaluation, "
          f"loss, backward, Adam (lr {LR:g})", flush=True)
    print("| scenario | ours ms | peer ms | ratio | goal | pass/fail |")
    print("|---|---:|---:|---:|---:|---|", flush=True)
    failed = False
    notes = []
    for s in scenarios(args.quick):
        used = time.perf_counter() - t_start
        if used > args.budget:
            print(f"| {s['label']} | - | - | - | >= {GOAL:g}x | skipped: time budget ({used:.0f} s of "
                  f"{args.budget:g} s used) |", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            sc = Scenario(s, args.quick, device)
            label = (f"{sc.label} B={sc.preps.shape[0]} N={sc.x.shape[0]} PRep {sc.preps.shape[1]}x{WIDTH} "
                     f"E={sc.config.embed}")
            # correctness: the same state, one step's loss and gradients
            ours_step, _ = make_step(sc, ours_loss)
            ours_step()  # the first call compiles / autotunes; not part of the check
            sync(device)
            loss_o, g_o = grads(sc, ours_loss)
            loss_l, g_l = grads(sc, loop_loss)
            err = max(abs(loss_o - loss_l) / max(abs(loss_l), 1e-12), worst_rel_err(g_o, g_l))
        except Exception as e:  # noqa: BLE001 - report, do not crash
            print(f"| {s['label']} | - | - | - | >= {GOAL:g}x | FAIL: {short(e)} |", flush=True)
            failed = True
            continue
        check = f"step check rel err {err:.1e}"
        if not err <= GRAD_RTOL:  # reported, and timed all the same (a first GPU run learns the most that way)
            check = f"FAIL: loss / gradients vs loop rel err {err:.2e} > {GRAD_RTOL:g}"
            failed = True
        times, predicted = {}, {}
        for prov, fn, fused in (("ours", ours_loss, True), ("loop", loop_loss, True),
                                ("loop + unfused encoder", loop_loss, False), ("enc+dec+Adam only", encdec_loss, True)):
            try:
                step, state = make_step(sc, fn, fused)
                times[prov] = timer(step)
                sync(device)
                if state["predicted"] is not None:
                    predicted[prov] = "/".join(MULTI_ARCHS[c] for c in state["predicted"].tolist())
            except Exception as e:  # noqa: BLE001
                times[prov] = None
                notes.append(f"{label}: {prov} failed: {short(e)}")
        # after the timing: ours' step from the initial state on FRESH images of the same shapes (a graph
        # that replayed its capture-time work would give the old result), its batched calls replayed
        # from the graphs the timing used, against the loop's loss and gradients on them
        try:
            fresh = copy.copy(sc)
            fresh.x, fresh.teacher = torch.randn_like(sc.x), torch.randn_like(sc.teacher)
            fresh.y = torch.randint_like(sc.y, 0, sc.specs[0].num_outputs)
            loss_l2, g_l2 = grads(fresh, loop_loss)
            before = ENGINE.stats()["replayed"]
            loss_r, g_r = grads(fresh, ours_loss)
            replays = ENGINE.stats()["replayed"] - before
            err_r = max(abs(loss_r - loss_l2) / max(abs(loss_l2), 1e-12), worst_rel_err(g_r, g_l2))
            check += f"; after timing ({replays} replayed) {err_r:.1e}"
            if not err_r <= GRAD_RTOL:
                check = f"FAIL: after timing, loss / gradients vs loop rel err {err_r:.2e} > {GRAD_RTOL:g} ({check})"
                failed = True
        except Exception as e:  # noqa: BLE001
            check = f"FAIL: after timing: {short(e)} ({check})"
            failed = True
        ours, loop = times["ours"], times["loop"]
        if ours is None or loop is None:
            ms = ["-" if t is None else f"{t:.2f}" for t in (ours, loop)]
            print(f"| {label} | {ms[0]} | {ms[1]} | - | >= {GOAL:g}x | FAIL: a provider failed (see below) |",
                  flush=True)
            failed = True
            continue
        ratio = loop / ours
        print(f"| {label} | {ours:.2f} | {loop:.2f} | {ratio:.2f}x | >= {GOAL:g}x | "
              f"{'pass' if ratio >= GOAL else 'fail'} ({check}) |", flush=True)
        unfused = times["loop + unfused encoder"]
        if unfused is not None:
            print(f"| {label} [peer: loop + unfused encoder, the original's whole step] | {ours:.2f} | {unfused:.2f} | "
                  f"{unfused / ours:.2f}x | - | info |", flush=True)
        base = times["enc+dec+Adam only"]
        if base is not None and base >= ours:
            notes.append(f"{label}: encoder + decoder + Adam alone {base:.2f} ms, not below ours' whole step "
                         f"{ours:.2f} ms: timing noise")
        elif base is not None:
            notes.append(f"{label}: encoder + decoder + Adam alone {base:.2f} ms = {100 * base / ours:.0f}% of ours' "
                         f"step; the evaluation costs ours {ours - base:.2f} ms, the loop {loop - base:.2f} ms "
                         f"({(loop - base) / max(ours - base, 1e-9):.1f}x); ratio ceiling loop / enc+dec "
                         f"{loop / base:.2f}x")
        if sc.note:
            notes.append(f"{label}: {sc.note}; after timing: " + ", ".join(f"{k} {v}" for k, v in predicted.items()))
        notes.append(f"{label}: {time.perf_counter() - t0:.0f} s")
    print("ratio = peer ms / ours ms (a speedup of ours); peer = the same step with the networks evaluated one at a "
          "time (batched_forward_reference on one network each); medians of do_bench (CUDA events) on CUDA, means "
          "of perf_counter on CPU")
    for n in notes:
        print(n)
    print(f"total {time.perf_counter() - t_start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
