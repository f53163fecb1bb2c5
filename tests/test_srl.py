"""Spatial Relation Loss: golden values by hand, invariances and gradient flow."""

import math

import pytest
import torch

from cmkd.config import Config, DistillConfig, KDConfig, RKDConfig, SRLConfig
from cmkd.errors import ConfigError
from cmkd.losses.distillation import HintonKD, RelationalKD, SpatialRelation, student_alone
from cmkd.losses.objective import Objective, Term
from cmkd.losses.srl import (
    angle_structure,
    distance_structure,
    relation_kl,
    spatial_relation_loss,
    srl_terms,
    standardise,
)

STUDENT = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
TEACHER = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]])


def _smooth_l1(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def test_relation_kl_golden():
    # p_T = softmax([ln 3, 0]) = [3/4, 1/4], p_S = [1/2, 1/2]
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert relation_kl(torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3), 0.0]]), 1.0, "none").item() == \
        pytest.approx(kl, rel=1e-6)
    # with tau = 2 the teacher logits 2 ln 3 give the same p_T; the loss is scaled by tau^2
    assert relation_kl(torch.tensor([[0.0, 0.0]]), torch.tensor([[2 * math.log(3), 0.0]]), 2.0, "none").item() == \
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
    w = SRLConfig(rel=0.5, dist=2.0, angle=3.0, tau=4.0)
    same = spatial_relation_loss(scores, scores.clone(), emb, emb.clone(), w)
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    t_scores, t_emb = torch.randn(2, 5, 5, generator=g), torch.randn(2, 10, 9, generator=g)
    other = srl_terms(scores, t_scores, emb, t_emb, w)
    total = 0.5 * other["srl_rel"] + 2.0 * other["srl_dist"] + 3.0 * other["srl_angle"]
    assert spatial_relation_loss(scores, t_scores, emb, t_emb, w).item() == pytest.approx(total.item(), rel=1e-6)
    assert total.item() > 0
    assert set(srl_terms(scores, t_scores, emb, t_emb, SRLConfig(angle=0.0))) == {"srl_rel", "srl_dist"}


def test_structure_terms_are_invariant_to_rescaling_either_embedding():
    """The structure terms are scale-free (docs/design.md); the relation term, by design, follows the
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
    out = spatial_relation_loss(s_scores, t_scores, s_emb, t_emb, SRLConfig(1.0, 1.0, 1.0, 4.0))
    out.backward()
    assert s_emb.grad is not None and s_emb.grad.abs().sum() > 0
    assert s_scores.grad is not None and s_scores.grad.abs().sum() > 0
    assert t_emb.grad is None and t_scores.grad is None


def test_methods_name_their_terms_weights_and_view():
    assert student_alone(DistillConfig(method="none")) is None
    kd = HintonKD(DistillConfig(method="kd", kd=KDConfig(tau=3.0)))
    assert (kd.terms, kd.student_view, kd.cfg.tau) == ((Term("kd", 1.0),), "same", 3.0)
    rkd = RelationalKD(DistillConfig(method="rkd", rkd=RKDConfig(dist=1.0, angle=2.0)))
    assert (rkd.terms, rkd.student_view) == ((Term("rkd_dist", 1.0), Term("rkd_angle", 2.0)), "same")
    srl = SpatialRelation(DistillConfig(srl=SRLConfig(rel=1.0, dist=0.5, angle=0.25, tau=2.0)))
    assert srl.terms == (Term("srl_rel", 1.0), Term("srl_dist", 0.5), Term("srl_angle", 0.25))
    default = SpatialRelation(DistillConfig())
    assert (default.cfg.standardise, default.student_view, default.cfg.tau) == ("episode", "clean", 1.0)
    assert DistillConfig().weight == 4.0
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 5, 5, generator=g), torch.randn(2, 5, 5, generator=g)
    assert kd(s, t, s, t, None)["kd"].item() == pytest.approx(relation_kl(s, t, 3.0, "none").item())


def test_objective_sums_named_terms_in_one_place_and_prints_as_one_line():
    cfg = Config()
    cfg.model.feat_reg, cfg.lsl.weight, cfg.distill.weight, cfg.distill.warmup = 0.1, 5.0, 4.0, 0.5
    objective = Objective.build(cfg, "ce", True, False, SpatialRelation(cfg.distill))
    assert str(objective) == "loss = ce + 0.1·feat_reg + 5·lsl + 4·ramp(t, 0.5)·(srl_rel + srl_dist)"
    cfg.distill.every, cfg.distill.until = 2, 0.5
    both = Objective.build(cfg, "ce", True, False, SpatialRelation(cfg.distill))
    assert str(both) == ("loss = ce + 0.1·feat_reg + 5·lsl + 8·ramp(t, 0.5)·(srl_rel + srl_dist)"
                         " (every 2 steps, the first 0.5 of the steps)")
    v = {"ce": torch.tensor(1.0), "feat_reg": torch.tensor(2.0), "lsl": torch.tensor(3.0),
         "srl_rel": torch.tensor(0.5), "srl_dist": torch.tensor(0.25)}
    # step 10 of 100 with a warm-up over half the steps: ramp = 10 / 50
    assert objective(v, 10, 100).item() == pytest.approx(1 + 0.2 + 15 + 0.2 * 4 * 0.75)
    assert objective(v, 80, 100).item() == pytest.approx(1 + 0.2 + 15 + 4 * 0.75)
    plain = Objective.build(Config(), "nll", False, False, None)
    assert str(plain) == "loss = nll" and plain.names == ("nll",)


def test_distilling_every_nth_step_keeps_the_mean_weight():
    cfg = Config()
    cfg.distill.every = 4
    objective = Objective.build(cfg, "ce", False, False, SpatialRelation(cfg.distill))
    v = {"ce": torch.tensor(0.0), "srl_rel": torch.tensor(1.0), "srl_dist": torch.tensor(0.0)}
    per_step = [objective(v, step, 100).item() if objective.distills_at(step, 100) else 0.0 for step in range(100)]
    assert per_step[:5] == [16.0, 0.0, 0.0, 0.0, 16.0] and sum(per_step) / 100 == cfg.distill.weight == 4.0


def test_distilling_fine_grained_episodes_only_keeps_the_mean_weight():
    """``distill.episodes=fine``: the terms enter on the fine-grained steps only (``train.fine_grained_share`` of
    them), 1/share times as heavily; with no fine-grained steps nothing would distil, which is refused."""
    cfg = Config()
    cfg.distill.episodes, cfg.train.fine_grained_share = "fine", 0.25
    objective = Objective.build(cfg, "ce", False, False, SpatialRelation(cfg.distill))
    assert str(objective) == "loss = ce + 16·(srl_rel + srl_dist) (fine-grained episodes only)"
    v = {"ce": torch.tensor(0.0), "srl_rel": torch.tensor(1.0), "srl_dist": torch.tensor(0.0)}
    fine = [step % 4 == 1 for step in range(100)]  # a quarter of the steps fine-grained
    per_step = [objective(v, s, 100, fine=f).item() for s, f in enumerate(fine)]
    assert per_step[:5] == [0.0, 16.0, 0.0, 0.0, 0.0] and sum(per_step) / 100 == cfg.distill.weight
    assert [objective.distills_at(s, 100, f) for s, f in enumerate(fine)] == fine
    assert all(objective.distills_at(s, 100, True) for s in range(100))
    cfg.distill.every = 2
    assert Objective.build(cfg, "ce", False, False, SpatialRelation(cfg.distill)).scale == 8.0
    cfg.train.fine_grained_share = 0.0
    with pytest.raises(ConfigError, match=r"'distill.episodes' is 'fine' but train.fine_grained_share is 0, so no "
                                          r"step would distil.*distill.episodes=all"):
        Objective.build(cfg, "ce", False, False, SpatialRelation(cfg.distill))


def test_standardise_golden_values():
    s = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]]])  # one episode, two queries, three classes
    q = standardise(s, "query")
    assert torch.allclose(q[0, 0], torch.tensor([-1.0, 0.0, 1.0]) / math.sqrt(2 / 3), atol=1e-5)
    assert torch.allclose(q[0, 1], torch.tensor([-2.0, -2.0, 4.0]) / math.sqrt(8), atol=1e-5)
    e = standardise(s, "episode")
    scale = math.sqrt((2 / 3 + 8) / 2)  # one standard deviation over both queries' centred scores
    assert torch.allclose(e[0, 0], torch.tensor([-1.0, 0.0, 1.0]) / scale, atol=1e-5)
    assert torch.allclose(e[0, 1], torch.tensor([-2.0, -2.0, 4.0]) / scale, atol=1e-5)


@pytest.mark.parametrize("per", ["query", "episode"])
def test_standardised_relations_ignore_each_heads_scale_and_offset(per):
    """What makes one temperature mean the same for every head: scores of any scale and offset
    (distances, log-probabilities, logits) give the same relation term."""
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 6, 5, generator=g), torch.randn(2, 6, 5, generator=g)
    ref = relation_kl(s, t, 1.0, per).item()
    assert relation_kl(40.0 * s - 7.0, t, 1.0, per).item() == pytest.approx(ref, rel=1e-4)
    assert relation_kl(s, 0.02 * t + 3.0, 1.0, per).item() == pytest.approx(ref, rel=1e-4)
    assert relation_kl(40.0 * s, t, 1.0, "none").item() != pytest.approx(ref, rel=1e-2)


def test_episode_standardising_keeps_the_teachers_relative_confidence():
    t = torch.tensor([[[4.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])  # a sure query and an unsure one
    p_query = torch.softmax(standardise(t, "query"), -1)[0, :, 0]
    p_episode = torch.softmax(standardise(t, "episode"), -1)[0, :, 0]
    assert p_query[0] == pytest.approx(p_query[1].item())  # per query: both look alike
    assert p_episode[0] > p_episode[1] + 0.3


def test_correct_only_weighs_out_the_queries_the_teacher_gets_wrong():
    s = torch.tensor([[[0.0, 1.0], [2.0, 0.0]]])
    t = torch.tensor([[[3.0, 0.0], [3.0, 0.0]]])  # right on query 0 (label 0), wrong on query 1 (label 1)
    labels = torch.tensor([[0, 1]])
    only = relation_kl(s, t, 1.0, "none", weights=(t.argmax(-1) == labels).float())
    assert only.item() == pytest.approx(relation_kl(s[:, :1], t[:, :1], 1.0, "none").item(), rel=1e-6)
    w = SRLConfig(rel=1.0, dist=0.0, tau=1.0, standardise="none", correct_only=True)
    emb = torch.zeros(1, 4, 2)
    assert srl_terms(s, t, emb, emb, w, labels)["srl_rel"].item() == pytest.approx(only.item())
