"""Distillation methods compared on identical episodes (named in :data:`cmkd.registry.METHODS`).

Each method turns the student's and the frozen teacher's scores and embeddings of a batch of
episodes into named loss terms, says their weights (the objective sums them) and on which view
of the samples the student's side is computed:

* ``none`` — the student alone;
* ``kd``   — Hinton et al. 2015: KL between temperature-softened raw episode logits, on the
  student's own training view (for a metric head the logits *are* the relation scores);
* ``rkd``  — Park et al., CVPR 2019: distance + angle structure, on the training view;
* ``srl``  — the Spatial Relation Loss (:mod:`cmkd.losses.srl`), by default on the teacher's clean view.
"""

from __future__ import annotations

from typing import Protocol

import torch

from cmkd.config import DistillConfig
from cmkd.losses.objective import Term
from cmkd.losses.srl import angle_structure, distance_structure, relation_kl, srl_terms, srl_weights


class Method(Protocol):
    terms: tuple[Term, ...]
    student_view: str  # 'clean' (the teacher's inputs) or 'same' (the student's training inputs)
    queries: int  # queries per class it relates (the first of each class); 0: all of the episode's

    def __call__(self, student_scores: torch.Tensor, teacher_scores: torch.Tensor, student_emb: torch.Tensor,
                 teacher_emb: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]: ...


def student_alone(cfg: DistillConfig) -> None:
    return None


class HintonKD:
    def __init__(self, cfg: DistillConfig) -> None:
        self.cfg, self.terms, self.student_view, self.queries = cfg.kd, (Term("kd", 1.0),), "same", 0

    def __call__(self, student_scores: torch.Tensor, teacher_scores: torch.Tensor, student_emb: torch.Tensor,
                 teacher_emb: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"kd": relation_kl(student_scores, teacher_scores, self.cfg.tau, "none")}


class RelationalKD:
    def __init__(self, cfg: DistillConfig) -> None:
        self.cfg, self.student_view, self.queries = cfg.rkd, "same", 0
        self.terms = tuple(Term(n, w) for n, w in (("rkd_dist", cfg.rkd.dist), ("rkd_angle", cfg.rkd.angle)) if w)

    def __call__(self, student_scores: torch.Tensor, teacher_scores: torch.Tensor, student_emb: torch.Tensor,
                 teacher_emb: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        if self.cfg.dist:
            out["rkd_dist"] = distance_structure(student_emb, teacher_emb)
        if self.cfg.angle:
            out["rkd_angle"] = angle_structure(student_emb, teacher_emb)
        return out


class SpatialRelation:
    def __init__(self, cfg: DistillConfig) -> None:
        self.cfg, self.terms, self.student_view = cfg.srl, srl_weights(cfg.srl), cfg.srl.student_inputs
        self.queries = cfg.srl.queries

    def __call__(self, student_scores: torch.Tensor, teacher_scores: torch.Tensor, student_emb: torch.Tensor,
                 teacher_emb: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return srl_terms(student_scores, teacher_scores, student_emb, teacher_emb, self.cfg, labels)
