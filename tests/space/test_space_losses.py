"""NetSpace losses (netspace_fast/space/losses.py) on known values and against independent torch
formulas; the L_gamma plan (pairs, positions, targets) as the original computes it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

from netspace_fast.space import class_loss, gamma_plan, interpolate, kd_loss, multi_kd_loss


def test_kd_loss_known_value():
    """One image, two classes, T = 1 for a hand computation: p_t = (0.5, 0.5), p_s = softmax(0, ln 3) =
    (0.25, 0.75); KL = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln(4/3)."""
    s = torch.tensor([[0.0, math.log(3.0)]])
    t = torch.tensor([[0.0, 0.0]])
    assert kd_loss(s, t, T=1.0).item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    assert kd_loss(s, s, T=4.0).item() == pytest.approx(0.0, abs=1e-7)
    # T^2 scaling: T = 2 on logits scaled by 2 equals 4 * the T = 1 value
    assert kd_loss(2 * s, 2 * t, T=2.0).item() == pytest.approx(4 * 0.5 * math.log(4 / 3), rel=1e-6)


def test_kd_loss_matches_torch_kl_div_and_is_per_network():
    torch.manual_seed(0)
    s, t = torch.randn(3, 16, 10), torch.randn(16, 10)
    per = kd_loss(s, t)
    assert per.shape == (3,)
    for b in range(3):
        ref = F.kl_div(F.log_softmax(s[b] / 4, -1), F.softmax(t / 4, -1), reduction="batchmean") * 16
        assert per[b].item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(kd_loss(s, t.expand(3, 16, 10)), per)


def test_kd_loss_gradient_only_to_the_student():
    s = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)
    kd_loss(s, t).backward()
    assert s.grad is not None and t.grad is None


def test_multi_kd_loss_mixture():
    torch.manual_seed(1)
    s, t, y = torch.randn(2, 8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    got = multi_kd_loss(s, t, y)
    for b in range(2):
        ref = 0.9 * kd_loss(s[b], t) + 0.1 * F.cross_entropy(s[b], y)
        assert got[b].item() == pytest.approx(ref.item(), rel=1e-6)
    with pytest.raises(ValueError, match="labels"):
        multi_kd_loss(s, t, y[:5])
    with pytest.raises(ValueError, match="teacher"):
        kd_loss(s, torch.randn(8, 9))


def test_class_loss():
    logits, ids = torch.randn(5, 4), torch.tensor([0, 3, 1, 2, 3])
    assert class_loss(logits, ids).item() == pytest.approx(F.cross_entropy(logits, ids).item())
    with pytest.raises(ValueError, match="class_ids"):
        class_loss(logits, ids[:3])


def test_gamma_plan_known_cases():
    # 4 architectures: only pairs 3 apart (LeNetLike 0 and ResNet32 3), ordered low -> high
    assert gamma_plan([3, 0], 4) == [(1, 0, 1 / 3, 1), (1, 0, 2 / 3, 2)]
    assert gamma_plan([0, 3], 4) == [(0, 1, 1 / 3, 1), (0, 1, 2 / 3, 2)]
    assert gamma_plan([0, 2], 4) == [] and gamma_plan([1, 3], 4) == [] and gamma_plan([2, 2], 4) == []
    # 3 architectures: the gap is max(1, 1) = 1, so ClassIds 2 apart
    assert gamma_plan([2, 0, 1], 3) == [(1, 0, 0.5, 1)]
    assert gamma_plan([0], 4) == []
    with pytest.raises(ValueError, match="class_ids: element 1"):
        gamma_plan([0, 4], 4)
    with pytest.raises(ValueError, match="num_archs"):
        gamma_plan([0], 0)


@given(ids=st.lists(st.integers(0, 5), min_size=0, max_size=6), n=st.integers(6, 8))
def test_gamma_plan_properties(ids, n):
    gap = max(1, n - 2)
    plan = gamma_plan(ids, n)
    pairs = {(i, j) for i in range(len(ids)) for j in range(i + 1, len(ids)) if abs(ids[i] - ids[j]) > gap}
    assert {tuple(sorted((lo, hi))) for lo, hi, _, _ in plan} == pairs
    for lo, hi, t, target in plan:
        d = ids[hi] - ids[lo]
        assert d > gap and 0 < t < 1 and target == ids[lo] + round(t * d)
    assert len(plan) == sum(abs(ids[i] - ids[j]) - 1 for i, j in pairs)


def test_interpolate():
    z = torch.tensor([[0.0, 0.0], [3.0, 6.0]])
    emb, targets = interpolate(z, gamma_plan([0, 3], 4))
    torch.testing.assert_close(emb, torch.tensor([[1.0, 2.0], [2.0, 4.0]]))
    assert targets.tolist() == [1, 2]
    emb, targets = interpolate(z, [])
    assert emb.shape == (0, 2) and targets.shape == (0,)
