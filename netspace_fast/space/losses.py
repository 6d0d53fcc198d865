"""The NetSpace losses (METHOD.md section 6; seed Sec. IV; main paper Sec. 3), one function each.

Logits come from batched evaluation: (..., N, C) (e.g. (B, N, C) for B networks on N images);
each distillation loss is averaged over the N images (the "batch mean" of the original) and
returned per leading index, so the trainer decides how networks are combined (``.mean()``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["KD_ALPHA", "KD_T", "class_loss", "gamma_plan", "interpolate", "kd_loss", "multi_kd_loss"]

KD_T = 4.0  #: the distillation temperature T
KD_ALPHA = 0.9  #: the weight of L_kd in the Multi-Architecture mixture (0.1 goes to cross-entropy)


def _check_logits(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.dim() < 2:
        raise ValueError(f"student: expected logits (..., N, C), got shape {tuple(student.shape)}")
    if teacher.shape[-2:] != student.shape[-2:]:
        raise ValueError(f"teacher: expected logits (..., {student.shape[-2]}, {student.shape[-1]}) like the "
                         f"student's, got {tuple(teacher.shape)}")


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, T: float = KD_T) -> torch.Tensor:
    """L_kd = T^2 * KL( softmax(teacher / T) || softmax(student / T) ), the KL summed over the classes
    and averaged over the N images (Hinton et al.'s distillation; seed Sec. IV, METHOD.md section 6).

    ``student`` (..., N, C); ``teacher`` (N, C) shared by every student, or (..., N, C); returns the
    loss per leading index (a scalar for (N, C) logits). The teacher gets no gradient."""
    _check_logits(student, teacher)
    log_p_s = F.log_softmax(student / T, dim=-1)
    log_p_t = F.log_softmax(teacher.detach() / T, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # (..., N)
    return kl.mean(-1) * (T * T)


def multi_kd_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, T: float = KD_T,
                  alpha: float = KD_ALPHA) -> torch.Tensor:
    """The Multi-Architecture distillation: ``alpha * L_kd(student, teacher) + (1 - alpha) * CE(student,
    labels)`` (alpha = 0.9; METHOD.md section 6), per leading index of ``student`` (..., N, C);
    ``labels`` (N,) the images' classes."""
    _check_logits(student, teacher)
    if labels.shape != student.shape[-2:-1]:
        raise ValueError(f"labels: expected ({student.shape[-2]},) class indices, got {tuple(labels.shape)}")
    flat = student.reshape(-1, student.shape[-2], student.shape[-1])
    ce = F.cross_entropy(flat.transpose(1, 2), labels.expand(flat.shape[0], -1), reduction="none").mean(-1)
    return alpha * kd_loss(student, teacher, T) + (1 - alpha) * ce.reshape(student.shape[:-2])


def class_loss(logits: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
    """L_class: cross-entropy of the ClassId head's logits (B, num_archs) against the true ClassIds (B,)
    (seed Sec. I), averaged over the B embeddings."""
    if logits.dim() != 2 or class_ids.shape != logits.shape[:1]:
        raise ValueError(f"class_ids: expected ({logits.shape[0] if logits.dim() else '?'},) ClassIds for logits "
                         f"(B, num_archs), got logits {tuple(logits.shape)} and class_ids {tuple(class_ids.shape)}")
    return F.cross_entropy(logits, class_ids)


def gamma_plan(class_ids: list[int], num_archs: int) -> list[tuple[int, int, float, int]]:
    """The interpolations of L_gamma, as the original computes them: for every pair (i, j) of the
    meta-batch whose ClassIds differ by more than ``max(1, num_archs - 2)``, ordered from the lower
    ClassId ``lo`` to the higher, d = the difference, the positions t = step / d for step = 1..d-1,
    each with target ClassId lo + step. Returns (index of lo, index of hi, t, target) tuples, pairs
    in meta-batch order."""
    if not isinstance(num_archs, int) or num_archs < 1:
        raise ValueError(f"num_archs: expected a positive int, got {num_archs!r}")
    for i, c in enumerate(class_ids):
        if not 0 <= int(c) < num_archs:
            raise ValueError(f"class_ids: element {i} is {c}, expected a ClassId in [0, {num_archs})")
    gap = max(1, num_archs - 2)
    out = []
    for i in range(len(class_ids)):
        for j in range(i + 1, len(class_ids)):
            a, b = int(class_ids[i]), int(class_ids[j])
            d = abs(a - b)
            if d <= gap:
                continue
            lo, hi = (i, j) if a < b else (j, i)
            base = min(a, b)
            out += [(lo, hi, step / d, base + step) for step in range(1, d)]
    return out


def interpolate(z: torch.Tensor, plan: list[tuple[int, int, float, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The embeddings of a :func:`gamma_plan`: ``(1 - t) * z[lo] + t * z[hi]`` stacked (K, E), and their
    target ClassIds (K,)."""
    if not plan:
        return z.new_empty((0, z.shape[1])), torch.empty(0, dtype=torch.long, device=z.device)
    lo = torch.tensor([p[0] for p in plan], device=z.device)
    hi = torch.tensor([p[1] for p in plan], device=z.device)
    t = torch.tensor([p[2] for p in plan], dtype=z.dtype, device=z.device)[:, None]
    targets = torch.tensor([p[3] for p in plan], dtype=torch.long, device=z.device)
    return torch.lerp(z[lo], z[hi], t), targets
