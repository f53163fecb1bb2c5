"""Distillation methods compared on identical episodes, as weightings of the same terms.

* ``none`` — the student alone (cross-entropy only);
* ``kd``   — Hinton et al. 2015: KL between temperature-softened episode logits;
* ``rkd``  — Park et al., CVPR 2019: distance + angle structure (their 1:2 weighting);
* ``srl``  — the Spatial Relation Loss with the configured ``rel``/``dist``/``angle``.

For a metric head the episode logits *are* the relation scores, so ``kd`` equals the
SRL's relation term alone; what separates ``srl`` is that it adds the structure terms.
"""

from __future__ import annotations

from cmkd.config import DistillConfig
from cmkd.losses.srl import SRLWeights


def distill_weights(cfg: DistillConfig) -> SRLWeights | None:
    """The term weights of a method, or None for the student alone."""
    if cfg.method == "none":
        return None
    if cfg.method == "kd":
        return SRLWeights(rel=1.0, dist=0.0, angle=0.0, tau=cfg.tau)
    if cfg.method == "rkd":
        return SRLWeights(rel=0.0, dist=1.0, angle=2.0, tau=cfg.tau)
    if cfg.method == "srl":
        return SRLWeights(rel=cfg.rel, dist=cfg.dist, angle=cfg.angle, tau=cfg.tau, standardised=cfg.standardise,
                          correct_only=cfg.correct_only)
    raise ValueError(f"unknown distillation method '{cfg.method}'; choose none, kd, rkd or srl")
