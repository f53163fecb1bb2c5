import math

import numpy as np
import pytest

from cmkd.eval.stats import betainc, mean_ci, paired_difference, t_two_sided_p


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


def test_paired_difference():
    a = np.array([0.9, 0.8, 1.0, 0.7, 0.9])
    b = np.array([0.8, 0.8, 0.9, 0.6, 0.7])
    p = paired_difference(a, b)
    d = a - b
    t = d.mean() / (d.std(ddof=1) / math.sqrt(5))
    assert p.diff.mean == pytest.approx(d.mean())
    assert p.t == pytest.approx(t)
    assert 0 < p.p < 0.05
    same = paired_difference(a, a)
    assert same.diff.mean == 0 and same.p == 1.0
    with pytest.raises(ValueError, match="same episodes"):
        paired_difference(a, b[:3])
