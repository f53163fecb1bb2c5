"""Accuracy statistics over evaluation episodes: mean +- 95% CI and paired comparisons."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MeanCI:
    mean: float
    ci95: float
    n: int

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f} ± {100 * self.ci95:.2f}"


def mean_ci(values: np.ndarray) -> MeanCI:
    """Mean and the 95% half-width ``1.96 * std / sqrt(n)`` (sample std, ddof=1)."""
    v = np.asarray(values, dtype=np.float64)
    sd = v.std(ddof=1) if len(v) > 1 else 0.0
    return MeanCI(float(v.mean()), float(1.96 * sd / math.sqrt(len(v))), len(v))


def _betacf(a: float, b: float, x: float) -> float:
    # continued fraction of the incomplete beta function (modified Lentz)
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(lbeta + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, dof: int) -> float:
    """Two-sided p-value of Student's t with ``dof`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return betainc(dof / 2.0, 0.5, dof / (dof + t * t))


@dataclass(frozen=True)
class Paired:
    diff: MeanCI
    t: float
    p: float

    def __str__(self) -> str:
        return f"{100 * self.diff.mean:+.2f} ± {100 * self.diff.ci95:.2f} (p={self.p:.2g})"


def paired_difference(a: np.ndarray, b: np.ndarray) -> Paired:
    """``a - b`` on the same episodes: mean +- 95% CI and the paired t-test p-value."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs the same episodes: {a.shape} vs {b.shape}")
    d = a - b
    ci = mean_ci(d)
    sd = d.std(ddof=1) if len(d) > 1 else 0.0
    if sd == 0.0:
        t = 0.0 if ci.mean == 0.0 else math.copysign(math.inf, ci.mean)
    else:
        t = ci.mean / (sd / math.sqrt(len(d)))
    return Paired(ci, float(t), t_two_sided_p(t, len(d) - 1) if len(d) > 1 else 1.0)
