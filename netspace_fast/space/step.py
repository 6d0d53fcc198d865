"""One NetSpace training step (METHOD.md section 6; seed Sec. IV), with the decoded networks evaluated in
batches: every network of a step is evaluated by :func:`netspace_fast.batched_forward` (one call per
architecture), never in a per-network Python loop.

- Single-Architecture: a meta-batch of B PReps of one architecture is encoded and decoded; the
  input networks' logits (no gradient) and the decoded networks' logits each come from ONE batched
  call on the shared image batch; the loss is L_kd(decoded, input), averaged over the networks.
- Multi-Architecture: the meta-batch's embeddings and every embedding that L_gamma interpolates
  (:func:`netspace_fast.space.losses.gamma_plan`) go through ONE decoder call; the ClassId head
  predicts each one's architecture (argmax, no gradient through the choice); the decoded PReps are
  grouped by predicted ClassId and each group is ONE batched call of its architecture. Loss:
  L_class (mean over the meta-batch) + the distillation mixture (0.9 L_kd from the teacher + 0.1
  CE; mean over the meta-batch's decoded networks) + L_gamma, the SUM over the interpolated
  embeddings of their L_class (target ClassId low + step) and of their decoded networks' mixture
  (the restated method: "L_class on them ... (summed)"; we read the sum as covering both terms of each
  interpolation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..archs import ArchSpec
from ..engine import batched_forward
from .losses import KD_T, class_loss, gamma_plan, interpolate, kd_loss, multi_kd_loss
from .nets import Decoder, Encoder

__all__ = ["MultiStep", "SingleStep", "multi_step", "single_step"]


@dataclass
class SingleStep:
    loss: torch.Tensor  #: the scalar to minimize
    per_network: torch.Tensor  #: (B,) L_kd of each decoded network
    decoded: torch.Tensor  #: (B, H, W) decoded PReps


@dataclass
class MultiStep:
    loss: torch.Tensor
    class_loss: torch.Tensor  #: L_class of the meta-batch, summed over its networks (the original's reduction)
    kd: torch.Tensor  #: (B,) distillation mixture of the meta-batch's decoded networks
    gamma_class_loss: torch.Tensor  #: L_class of the interpolated embeddings, summed (0 without pairs)
    gamma_kd: torch.Tensor  #: (K,) mixture of the interpolated decoded networks
    predicted: torch.Tensor  #: (B + K,) predicted ClassIds (meta-batch first)
    decoded: torch.Tensor  #: (B + K, H, W) decoded PReps


def single_step(encoder: Encoder, decoder: Decoder, spec: ArchSpec, preps: torch.Tensor,
                images: torch.Tensor, T: float = KD_T) -> SingleStep:
    """The Single-Architecture loss of a meta-batch ``preps`` (B, H, W) of ``spec`` networks on
    ``images`` (N, ...): the input networks are the teachers of their own decoded networks
    (distillation temperature ``T``; the paper's 4)."""
    if preps.dim() != 3:
        raise ValueError(f"preps: expected a meta-batch (B, H, W), got {tuple(preps.shape)}")
    with torch.no_grad():
        teacher = batched_forward(spec, preps, images)  # (B, N, C), one call
    decoded = decoder(encoder(preps))
    student = batched_forward(spec, decoded, images)  # one call
    per = kd_loss(student, teacher, T)
    return SingleStep(per.mean(), per, decoded)


def multi_step(encoder: Encoder, decoder: Decoder, specs: Sequence[ArchSpec], preps: torch.Tensor,
               class_ids: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
               teacher_logits: torch.Tensor, T: float = KD_T) -> MultiStep:
    """The Multi-Architecture loss of a meta-batch ``preps`` (B, H, W) (every PRep at the tallest
    architecture's height) with true ``class_ids`` (B,); ``specs[c]`` is the architecture of ClassId
    c; ``teacher_logits`` (N, C) the teacher's (ResNet56) logits on ``images``, ``labels`` (N,)."""
    num_archs = len(specs)
    if preps.dim() != 3 or class_ids.shape != preps.shape[:1]:
        raise ValueError(f"class_ids: expected one ClassId per PRep of preps (B, H, W), got preps "
                         f"{tuple(preps.shape)} and class_ids {tuple(class_ids.shape)}")
    if decoder.config.num_archs != num_archs:
        raise ValueError(f"specs: the decoder's ClassId head has {decoder.config.num_archs} architectures, got "
                         f"{num_archs} specs")
    B = preps.shape[0]
    z = encoder(preps)
    plan = gamma_plan(class_ids.tolist(), num_archs)
    z_gamma, targets = interpolate(z, plan)
    z_all = torch.cat([z, z_gamma])
    decoded = decoder(z_all)  # ONE decoder call for the meta-batch and every interpolation
    logits = decoder.class_logits(z_all)
    predicted = logits.detach().argmax(-1)
    kd_all = decoded.new_zeros(decoded.shape[0])
    parts = []
    for c in predicted.unique().tolist():  # one batched call per predicted architecture
        idx = (predicted == c).nonzero().flatten()
        student = batched_forward(specs[c], decoded[idx], images)
        parts.append((idx, multi_kd_loss(student, teacher_logits, labels, T)))
    kd_all = kd_all.index_put((torch.cat([i for i, _ in parts]),), torch.cat([v for _, v in parts]))
    # the original's compute_losses SUMS L_class and the mixture over the meta-batch's networks (its
    # arch_loss / kl_loss / ce_loss `+=` per network, no division), as it sums over the interpolations
    l_class = class_loss(logits[:B], class_ids) * B
    loss = l_class + kd_all[:B].sum()
    g_class = logits.new_zeros(())
    if plan:
        g_class = class_loss(logits[B:], targets) * len(plan)  # the sum over the interpolations
        loss = loss + g_class + kd_all[B:].sum()
    return MultiStep(loss, l_class, kd_all[:B], g_class, kd_all[B:], predicted, decoded)
