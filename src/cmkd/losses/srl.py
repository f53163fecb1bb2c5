"""Spatial Relation Loss (SRL) of Zhao et al., "Cross-modal knowledge distillation for
fine-grained one-shot classification", ICASSP 2021 (the README's "The Spatial Relation Loss" states it).

The teacher (image + text) and the student (one modality) embed the same episode in
different spaces, so the student learns the teacher's *relations* between the samples,
never its features:

1. relation term ``L_rel = tau^2 * mean_q KL(p_T(.|q) || p_S(.|q))`` with
   ``p = softmax(z / tau)``, where ``z`` are the head's scores standardised per episode
   (or per query, or raw: ``srl.standardise``) so one temperature means the same for every head;
2. distance structure ``L_dist``: pairwise Euclidean distances over all samples of the
   episode, each matrix divided by its mean off-diagonal distance, compared with smooth-L1
   (the RKD distance term, Park et al., CVPR 2019);
3. angle structure ``L_angle`` (RKD's angle term): cosines of the angles of all sample triplets.

``SRL = srl.rel * L_rel + srl.dist * L_dist + srl.angle * L_angle``; the teacher side never
carries gradient. The settings are :class:`cmkd.config.SRLConfig`, the same object as the
config's ``distill.srl`` section.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cmkd.config import SRLConfig
from cmkd.losses.objective import Term, weighted_sum


def standardise(scores: torch.Tensor, per: str, eps: float = 1e-6) -> torch.Tensor:
    """Scores ``[..., Q, way]`` minus each query's mean, divided by their standard deviation over
    the classes of each query (``per="query"``) or of the whole episode (``per="episode"``: one
    scale per episode, so queries keep their relative confidence).

    Heads score on different scales (squared distances, log-probabilities, relation logits);
    standardised scores have zero mean and unit variance whatever the head, so one temperature
    means the same for all (logit standardisation, Sun et al., CVPR 2024).
    """
    centred = scores - scores.mean(-1, keepdim=True)
    dims = (-1,) if per == "query" else (-2, -1)
    return centred / (centred.pow(2).mean(dims, keepdim=True).sqrt() + eps)


def relation_kl(student_scores: torch.Tensor, teacher_scores: torch.Tensor, tau: float,
                standardised: str, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``tau^2 * mean over queries of KL(p_T || p_S)``; scores are ``[..., Q, way]``.

    ``standardised`` compares :func:`standardise`-d scores; ``weights [..., Q]`` weigh the
    queries (e.g. 0 where the teacher is wrong); the mean is over their total weight.
    """
    teacher_scores = teacher_scores.detach()
    if standardised != "none":
        student_scores = standardise(student_scores, standardised)
        teacher_scores = standardise(teacher_scores, standardised)
    log_p_s = F.log_softmax(student_scores / tau, dim=-1)
    log_p_t = F.log_softmax(teacher_scores / tau, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    if weights is None:
        return tau**2 * kl.mean()
    return tau**2 * (kl * weights).sum() / weights.sum().clamp_min(1.0)


def normalised_distances(emb: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances ``[..., n, n]``, divided by their mean off-diagonal value."""
    diff = emb.unsqueeze(-2) - emb.unsqueeze(-3)
    d = diff.pow(2).sum(-1).clamp_min(1e-12).sqrt()
    n = emb.shape[-2]
    eye = torch.eye(n, dtype=torch.bool, device=emb.device)
    d = d.masked_fill(eye, 0.0)
    mean = d.sum((-1, -2), keepdim=True) / (n * (n - 1))
    return d / mean.clamp_min(1e-12)


def distance_structure(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 between the scale-free distance matrices (mean over off-diagonal pairs)."""
    ds, dt = normalised_distances(student_emb), normalised_distances(teacher_emb.detach())
    n = ds.shape[-1]
    off = ~torch.eye(n, dtype=torch.bool, device=ds.device)
    return F.smooth_l1_loss(ds[..., off], dt[..., off])


def triplet_cosines(emb: torch.Tensor) -> torch.Tensor:
    """``[..., n, n, n]``: cosine of the angle at ``j`` formed by ``i-j`` and ``k-j``."""
    e = F.normalize(emb.unsqueeze(-3) - emb.unsqueeze(-2), p=2, dim=-1)  # [..., j, i, D]: e_i - e_j
    return e @ e.transpose(-1, -2)


def angle_structure(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 between the triplet-angle cosines of student and teacher (RKD angle term)."""
    return F.smooth_l1_loss(triplet_cosines(student_emb), triplet_cosines(teacher_emb.detach()))


def srl_terms(student_scores: torch.Tensor, teacher_scores: torch.Tensor, student_emb: torch.Tensor,
              teacher_emb: torch.Tensor, cfg: SRLConfig, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The SRL's terms with a non-zero weight (``srl_rel``, ``srl_dist``, ``srl_angle``) for a batch of episodes.

    Scores are ``[E, Q, way]``; embeddings ``[E, n, D_s]`` and ``[E, n, D_t]`` over all the
    samples of each episode (support and query). ``D_s`` and ``D_t`` may differ. ``labels
    [E, Q]`` (the queries' classes) are needed for ``cfg.correct_only``.
    """
    terms = {}
    if cfg.rel:
        weights = None
        if cfg.correct_only:
            if labels is None:
                raise ValueError("correct_only distillation needs the query labels")
            weights = (teacher_scores.argmax(-1) == labels).to(student_scores.dtype)
        terms["srl_rel"] = relation_kl(student_scores, teacher_scores, cfg.tau, cfg.standardise, weights)
    if cfg.dist:
        terms["srl_dist"] = distance_structure(student_emb, teacher_emb)
    if cfg.angle:
        terms["srl_angle"] = angle_structure(student_emb, teacher_emb)
    return terms


def srl_weights(cfg: SRLConfig) -> tuple[Term, ...]:
    """The SRL's terms and their weights, as the objective sums them."""
    return tuple(Term(f"srl_{k}", w) for k, w in (("rel", cfg.rel), ("dist", cfg.dist), ("angle", cfg.angle)) if w)


def spatial_relation_loss(student_scores: torch.Tensor, teacher_scores: torch.Tensor, student_emb: torch.Tensor,
                          teacher_emb: torch.Tensor, cfg: SRLConfig | None = None,
                          labels: torch.Tensor | None = None) -> torch.Tensor:
    """The SRL of a batch of episodes (see :func:`srl_terms`); ``cfg`` defaults to cmkd's defaults."""
    cfg = cfg or SRLConfig()
    terms = srl_terms(student_scores, teacher_scores, student_emb, teacher_emb, cfg, labels)
    return weighted_sum(terms, srl_weights(cfg)) if terms else student_scores.new_zeros(())
