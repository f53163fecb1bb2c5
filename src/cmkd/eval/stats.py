"""Accuracy statistics: mean +- 95% CI over episodes, and over training seeds and episodes together.

The interval over episodes alone ignores training randomness (another seed, or the same seed
on another CPU, trains another model). With several training runs per method the intervals
add the seed-to-seed spread of the run means to the episode spread (Welch-Satterthwaite
degrees of freedom, Student t quantile), so a claim must hold across seeds to be significant.
"""

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


def t_two_sided_p(t: float, dof: float) -> float:
    """Two-sided p-value of Student's t with ``dof`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return betainc(dof / 2.0, 0.5, dof / (dof + t * t))


def t_quantile(p_two_sided: float, dof: float) -> float:
    """The ``t`` with two-sided tail probability ``p_two_sided`` (e.g. 0.05 -> 1.96 for large dof)."""
    lo, hi = 0.0, 1e4
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_two_sided_p(mid, dof) > p_two_sided:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class SeedStat:
    """Mean over training runs and episodes, with a 95% interval covering both, and the t statistic and
    two-sided p-value of ``mean == null`` (chance for an accuracy, 0 for a difference)."""

    mean: float
    ci95: float
    seeds: int
    episodes: int
    dof: float
    seed_means: tuple[float, ...]
    t: float = 0.0
    p: float = 1.0
    null: float = 0.0

    def __str__(self) -> str:
        return f"{100 * self.mean:+.2f} ± {100 * self.ci95:.2f} (p={self.p:.2g})"


def _seed_variance(runs: np.ndarray) -> tuple[float, int]:
    """Variance of the mean of the per-run means (0 for one run) and its degrees of freedom."""
    means = runs.mean(1)
    return (float(means.var(ddof=1)) / len(means), len(means) - 1) if len(means) > 1 else (0.0, 0)


def _combine(mean: float, per_episode: np.ndarray, seed_parts: list[tuple[float, int]],
             seed_means: np.ndarray, seeds: int, null: float = 0.0) -> SeedStat:
    e = len(per_episode)
    ve = float(per_episode.var(ddof=1)) / e if e > 1 else 0.0
    parts = [(ve, e - 1), *[(v, d) for v, d in seed_parts if d > 0]]
    var = sum(v for v, _ in parts)
    denom = sum(v * v / d for v, d in parts if d > 0)
    dof = var * var / denom if denom > 0 else float(max(e - 1, 1))
    se = math.sqrt(var)
    if se == 0.0:
        t = 0.0 if mean == null else math.copysign(math.inf, mean - null)
    else:
        t = (mean - null) / se
    return SeedStat(mean, t_quantile(0.05, dof) * se, seeds, e, dof, tuple(float(m) for m in seed_means), t,
                    t_two_sided_p(t, dof) if dof > 0 else 1.0, null)


def over_seeds(accs: np.ndarray, chance: float = 0.0) -> SeedStat:
    """Mean accuracy of ``accs [runs, episodes]`` (several training seeds on the same episodes); its p-value
    tests it against ``chance`` (1 / way).

    Variance of the grand mean = variance of the seed-averaged per-episode accuracies / episodes
    + variance of the per-run means / runs (conservative: their interaction is counted twice).
    """
    accs = np.atleast_2d(np.asarray(accs, dtype=np.float64))
    per_episode = accs.mean(0)
    return _combine(float(per_episode.mean()), per_episode, [_seed_variance(accs)], accs.mean(1), len(accs), chance)


def paired_over_seeds(a: np.ndarray, b: np.ndarray) -> SeedStat:
    """``a - b`` on the same episodes, each ``[runs, episodes]``: episode-paired differences of the
    seed-averaged accuracies, plus the seed spread of both methods (runs are not paired)."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired comparison needs the same episodes: {a.shape[1]} vs {b.shape[1]}")
    d = a.mean(0) - b.mean(0)
    diffs = np.subtract.outer(a.mean(1), b.mean(1)).ravel()
    return _combine(float(d.mean()), d, [_seed_variance(a), _seed_variance(b)], diffs, len(a) * len(b))
