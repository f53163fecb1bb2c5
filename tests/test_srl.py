"""Spatial Relation Loss: golden values by hand, invariances and gradient flow."""

import math

import pytest
import torch

from cmkd.config import DistillConfig
from cmkd.losses.baselines import distill_weights
from cmkd.losses.srl import (
    SRLWeights,
    angle_structure,
    distance_structure,
    relation_kl,
    spatial_relation_loss,
)

STUDENT = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
TEACHER = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]])


def _smooth_l1(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def test_relation_kl_golden():
    # p_T = softmax([ln 3, 0]) = [3/4, 1/4], p_S = [1/2, 1/2]
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert relation_kl(torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3), 0.0]]), 1.0).item() == \
        pytest.approx(kl, rel=1e-6)
    # with tau = 2 the teacher logits 2 ln 3 give the same p_T; the loss is scaled by tau^2
    assert relation_kl(torch.tensor([[0.0, 0.0]]), torch.tensor([[2 * math.log(3), 0.0]]), 2.0).item() == \
        pytest.approx(4 * kl, rel=1e-6)


def test_distance_structure_golden():
    s = [1.0, 1.0, math.sqrt(2)]  # d01, d02, d12
    t = [2.0, 1.0, math.sqrt(5)]
    s = [v / (sum(s) / 3) for v in s]
    t = [v / (sum(t) / 3) for v in t]
    expected = sum(_smooth_l1(a - b) for a, b in zip(s, t)) / 3
    assert distance_structure(STUDENT, TEACHER).item() == pytest.approx(expected, rel=1e-5)


def test_angle_structure_golden():
    # cosines at vertex 1 and 2 differ; each appears for (i, k) and (k, i); 27 entries in all
    s1 = s2 = 1 / math.sqrt(2)
    t1, t2 = 2 / math.sqrt(5), 1 / math.sqrt(5)
    expected = 2 * (_smooth_l1(s1 - t1) + _smooth_l1(s2 - t2)) / 27
    assert angle_structure(STUDENT, TEACHER).item() == pytest.approx(expected, rel=1e-5)


def test_srl_is_the_weighted_sum_and_zero_for_equal_relations():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(2, 10, 6, generator=g)
    scores = torch.randn(2, 5, 5, generator=g)
    w = SRLWeights(rel=0.5, dist=2.0, angle=3.0, tau=4.0)
    same = spatial_relation_loss(scores, scores.clone(), emb, emb.clone(), w)
    assert same["srl"].item() == pytest.approx(0.0, abs=1e-6)
    other = spatial_relation_loss(scores, torch.randn(2, 5, 5, generator=g), emb,
                                  torch.randn(2, 10, 9, generator=g), w)
    total = 0.5 * other["rel"] + 2.0 * other["dist"] + 3.0 * other["angle"]
    assert other["srl"].item() == pytest.approx(total.item(), rel=1e-6)
    assert other["srl"].item() > 0


def test_structure_terms_are_invariant_to_rescaling_either_embedding():
    """The structure terms are scale-free (DESIGN.md); the relation term, by design, follows the
    head's scores and their temperature, so it is not part of this invariance."""
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(3, 12, 5, generator=g), torch.randn(3, 12, 8, generator=g)
    for fn in (distance_structure, angle_structure):
        ref = fn(s, t).item()
        assert fn(7.5 * s, t).item() == pytest.approx(ref, rel=1e-4)
        assert fn(s, 0.01 * t).item() == pytest.approx(ref, rel=1e-4)


def test_gradients_reach_the_student_never_the_teacher():
    g = torch.Generator().manual_seed(2)
    s_emb = torch.randn(1, 10, 4, generator=g, requires_grad=True)
    t_emb = torch.randn(1, 10, 7, generator=g, requires_grad=True)  # other dimension
    s_scores = torch.randn(1, 5, 5, generator=g, requires_grad=True)
    t_scores = torch.randn(1, 5, 5, generator=g, requires_grad=True)
    out = spatial_relation_loss(s_scores, t_scores, s_emb, t_emb, SRLWeights(1.0, 1.0, 1.0, 4.0))
    out["srl"].backward()
    assert s_emb.grad is not None and s_emb.grad.abs().sum() > 0
    assert s_scores.grad is not None and s_scores.grad.abs().sum() > 0
    assert t_emb.grad is None and t_scores.grad is None


def test_baselines_are_named_weightings():
    assert distill_weights(DistillConfig(method="none")) is None
    kd = distill_weights(DistillConfig(method="kd", tau=3.0))
    assert (kd.rel, kd.dist, kd.angle, kd.tau) == (1.0, 0.0, 0.0, 3.0)
    rkd = distill_weights(DistillConfig(method="rkd"))
    assert (rkd.rel, rkd.dist, rkd.angle) == (0.0, 1.0, 2.0)
    srl = distill_weights(DistillConfig(method="srl", rel=1.0, dist=0.5, angle=0.25))
    assert (srl.rel, srl.dist, srl.angle) == (1.0, 0.5, 0.25)
