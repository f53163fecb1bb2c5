import math

import numpy as np
import pytest

from cmkd.eval.stats import betainc, mean_ci, over_seeds, paired_over_seeds, t_quantile, t_two_sided_p


def test_mean_ci_formula():
    v = np.array([0.2, 0.4, 0.6, 0.8])
    m = mean_ci(v)
    assert m.mean == pytest.approx(0.5)
    assert m.ci95 == pytest.approx(1.96 * np.std(v, ddof=1) / 2)


@pytest.mark.parametrize("t,dof,p", [(2.0, 10, 0.07338803), (2.228138852, 10, 0.05), (1.959963985, 10**6, 0.05),
                                     (0.0, 5, 1.0), (12.706204736, 1, 0.05)])
def test_t_test_p_values_match_tables(t, dof, p):
    assert t_two_sided_p(t, dof) == pytest.approx(p, rel=1e-5)


def test_betainc_edges_and_symmetry():
    assert betainc(2, 3, 0.0) == 0.0 and betainc(2, 3, 1.0) == 1.0
    assert betainc(2.5, 1.5, 0.3) == pytest.approx(1 - betainc(1.5, 2.5, 0.7), rel=1e-10)
    assert betainc(1, 1, 0.37) == pytest.approx(0.37)


def test_paired_difference_of_one_run_each_is_the_paired_t_test():
    a = np.array([0.9, 0.8, 1.0, 0.7, 0.9])
    b = np.array([0.8, 0.8, 0.9, 0.6, 0.7])
    p = paired_over_seeds(a[None], b[None])
    d = a - b
    t = d.mean() / (d.std(ddof=1) / math.sqrt(5))
    assert p.mean == pytest.approx(d.mean()) and p.t == pytest.approx(t) and p.dof == pytest.approx(4)
    assert p.ci95 == pytest.approx(2.7764451 * d.std(ddof=1) / math.sqrt(5), rel=1e-5)  # t(0.975, 4)
    assert 0 < p.p < 0.05
    same = paired_over_seeds(a[None], a[None])
    assert same.mean == 0 and same.p == 1.0
    with pytest.raises(ValueError, match="same episodes"):
        paired_over_seeds(a[None], b[None, :3])


def test_t_quantile_inverts_the_t_distribution():
    from cmkd.eval.stats import t_quantile

    assert t_quantile(0.05, 10) == pytest.approx(2.228138852, rel=1e-6)
    assert t_quantile(0.05, 2) == pytest.approx(4.302652730, rel=1e-6)
    assert t_quantile(0.05, 10**6) == pytest.approx(1.959966, rel=1e-5)


def test_over_seeds_adds_the_spread_of_the_run_means():
    from cmkd.eval.stats import over_seeds, t_quantile

    runs = np.array([[0.6, 0.8, 0.7, 0.9], [0.5, 0.7, 0.6, 0.8], [0.7, 0.9, 0.8, 1.0]])  # seeds shift everything
    s = over_seeds(runs)
    per_episode = runs.mean(0)
    ve = per_episode.var(ddof=1) / 4
    vs = runs.mean(1).var(ddof=1) / 3
    dof = (ve + vs) ** 2 / (ve**2 / 3 + vs**2 / 2)
    assert s.mean == pytest.approx(0.75) and s.dof == pytest.approx(dof)
    assert s.ci95 == pytest.approx(t_quantile(0.05, dof) * math.sqrt(ve + vs))
    assert s.seed_means == pytest.approx((0.75, 0.65, 0.85))
    one = over_seeds(runs[:1])
    assert one.ci95 == pytest.approx(t_quantile(0.05, 3) * runs[0].std(ddof=1) / 2)
    assert s.ci95 > over_seeds(runs - runs.mean(1, keepdims=True) + 0.75).ci95  # same episodes, no seed spread


def test_paired_over_seeds_matches_the_paired_t_test_for_one_run_each():
    from cmkd.eval.stats import paired_over_seeds

    a = np.array([0.9, 0.8, 1.0, 0.7, 0.9])
    b = np.array([0.8, 0.8, 0.9, 0.6, 0.7])
    one = paired_over_seeds(a[None], b[None])
    d = a - b
    assert one.p == pytest.approx(t_two_sided_p(d.mean() / (d.std(ddof=1) / math.sqrt(5)), 4), rel=1e-6)
    noisy = paired_over_seeds(np.stack([a, a - 0.2]), np.stack([b, b + 0.1]))
    assert noisy.p > one.p and noisy.seeds == 4


def test_seed_for_is_stable_and_separates_purposes():
    from cmkd.runtime import seed_for

    assert seed_for(0, "step", 3) == seed_for(0, "step", 3)
    seeds = {seed_for(0, "step", 3), seed_for(0, "step", 4), seed_for(1, "step", 3), seed_for(0, "episodes", 3)}
    assert len(seeds) == 4
    assert 0 <= seed_for(2**31, "x", 10**9) < 2**63


def test_an_accuracy_is_tested_against_chance_and_a_difference_against_zero():
    rng = np.random.default_rng(0)
    at_chance = (rng.random((1, 400)) < 0.2).astype(float)  # 5-way guessing
    assert over_seeds(at_chance, chance=0.2).p > 0.01 and over_seeds(at_chance).p < 1e-6
    stat = over_seeds(at_chance, chance=0.2)
    assert stat.null == 0.2 and stat.t == pytest.approx((stat.mean - 0.2) / (stat.ci95 / t_quantile(0.05, stat.dof)))
    assert paired_over_seeds(at_chance, at_chance).null == 0.0
