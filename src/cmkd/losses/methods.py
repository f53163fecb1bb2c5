"""Distillation methods compared on identical episodes, as settings of the same loss terms
(named in :data:`cmkd.registry.METHODS`).

* ``none`` — the student alone (cross-entropy only);
* ``kd``   — Hinton et al. 2015: KL between temperature-softened episode logits;
* ``rkd``  — Park et al., CVPR 2019: distance + angle structure (their 1:2 weighting);
* ``srl``  — the Spatial Relation Loss with the configured terms.

For a metric head the episode logits *are* the relation scores, so ``kd`` equals the
SRL's relation term alone on raw scores; ``srl`` adds the structure terms and the choices
of how relations are compared (standardised scores, the student's clean view).
"""

from __future__ import annotations

from cmkd.config import DistillConfig
from cmkd.losses.srl import SRLSettings
from cmkd.registry import METHODS


def student_alone(cfg: DistillConfig) -> None:
    return None


def hinton_kd(cfg: DistillConfig) -> SRLSettings:
    """Classic KD: raw episode logits at ``distill.kd_tau``, on the student's own training view."""
    return SRLSettings(rel=1.0, dist=0.0, angle=0.0, tau=cfg.kd_tau, standardised="none", student_view="same")


def relational_kd(cfg: DistillConfig) -> SRLSettings:
    """RKD's distance and angle terms (weights 1 and 2) on the student's own training view."""
    return SRLSettings(rel=0.0, dist=1.0, angle=2.0, standardised="none", student_view="same")


def spatial_relation(cfg: DistillConfig) -> SRLSettings:
    return SRLSettings(rel=cfg.rel, dist=cfg.dist, angle=cfg.angle, tau=cfg.tau, standardised=cfg.standardise,
                       correct_only=cfg.correct_only, student_view=cfg.student_inputs)


def loss_settings(cfg: DistillConfig) -> SRLSettings | None:
    """The loss settings of ``cfg.method``, or None for the student alone."""
    return METHODS.get(cfg.method)(cfg)
