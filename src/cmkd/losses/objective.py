"""The training objective: one weighted sum of named terms, built once from the config.

    loss = ce + 0.1·feat_reg + 0.5·branch + 5·lsl + 4·ramp(t)·(1·srl_rel + 1·srl_dist)

Every term is computed elsewhere (the head's loss, FEAT's regulariser, the late-fusion branch
losses, LSL's caption loss, the distillation terms) and arrives here by name; the weights, the
order of the sum and lambda's warm-up live only here, and the same names are logged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from cmkd.config import Config
from cmkd.errors import ConfigError

if TYPE_CHECKING:
    from cmkd.losses.distillation import Method


@dataclass(frozen=True)
class Term:
    """A named loss term and its weight."""

    name: str
    weight: float


def weighted_sum(values: Mapping[str, torch.Tensor], terms: Sequence[Term]) -> torch.Tensor:
    """``sum(weight * values[name])`` in the order of ``terms``."""
    total = terms[0].weight * values[terms[0].name]
    for term in terms[1:]:
        total = total + term.weight * values[term.name]
    return total


def _text(terms: Sequence[Term]) -> str:
    return " + ".join(t.name if t.weight == 1 else f"{t.weight:g}·{t.name}" for t in terms)


@dataclass(frozen=True)
class Objective:
    """``model terms + extra terms + lambda · ramp(step) · distillation terms``.

    ``model`` is the model's own episode loss (its head's loss first, then FEAT's regulariser);
    ``extra`` the training-only terms (late-fusion branch losses, LSL); ``distill`` the terms of the
    distillation method, weighted by ``weight`` (lambda) after a linear warm-up over ``warmup`` of
    the steps. With ``every`` = N the distillation terms enter on every N-th step only, N times as
    heavily (the same gradient in expectation), and not after the first ``until`` of the steps (a
    student that trains alone late; :meth:`distills_at` says which steps). With ``fine_share`` > 0 they
    enter on fine-grained steps only (that share of the steps), 1/``fine_share`` times as heavily.
    """

    model: tuple[Term, ...]
    extra: tuple[Term, ...] = ()
    distill: tuple[Term, ...] = ()
    weight: float = 0.0
    warmup: float = 0.0
    every: int = 1
    until: float = 1.0
    fine_share: float = 0.0

    @classmethod
    def build(cls, cfg: Config, head_loss: str, regularised: bool, branches: bool,
              method: Method | None = None) -> Objective:
        """The objective of ``cfg``: ``head_loss`` names the head's loss; ``regularised``: the head has
        FEAT's regulariser; ``branches``: the model is a late fusion; ``method``: the distillation method
        (:data:`cmkd.registry.METHODS`), None without a teacher."""
        model = [Term(head_loss, 1.0)]
        if regularised and cfg.model.feat_reg > 0:
            model.append(Term("feat_reg", cfg.model.feat_reg))
        extra = []
        if branches and cfg.model.branch_loss > 0:
            extra.append(Term("branch", cfg.model.branch_loss))
        if cfg.lsl.weight > 0:
            extra.append(Term("lsl", cfg.lsl.weight))
        if method is None:
            return cls(tuple(model), tuple(extra))
        fine = cfg.distill.episodes == "fine"
        if fine and cfg.train.fine_grained_share == 0:
            raise ConfigError("config field 'distill.episodes' is 'fine' but train.fine_grained_share is 0, so no "
                              "step would distil; draw some fine-grained episodes (train.fine_grained_share=0.5) "
                              "or set distill.episodes=all")
        return cls(tuple(model), tuple(extra), method.terms, cfg.distill.weight, cfg.distill.warmup,
                   cfg.distill.every, cfg.distill.until, cfg.train.fine_grained_share if fine else 0.0)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in (*self.model, *self.extra, *self.distill))

    def model_loss(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The model's own episode loss (what each late-fusion branch is trained on too)."""
        return weighted_sum(values, self.model)

    @property
    def scale(self) -> float:
        """How much heavier the distillation terms weigh on the steps that have them (1 / their share)."""
        return self.every / (self.fine_share or 1.0)

    def distills_at(self, step: int, steps: int, fine: bool = True) -> bool:
        """Whether the distillation terms are part of the loss at ``step`` of ``steps`` (``fine``: whether its
        episodes are fine-grained)."""
        return (bool(self.distill) and step % self.every == 0 and step < self.until * steps
                and (fine or not self.fine_share))

    def ramp(self, step: int, steps: int) -> float:
        """Lambda's warm-up factor at ``step`` of ``steps``."""
        return min(1.0, step / (self.warmup * steps)) if self.warmup > 0 else 1.0

    def __call__(self, values: Mapping[str, torch.Tensor], step: int = 0, steps: int = 1,
                 distil: bool = True, fine: bool = True) -> torch.Tensor:
        """The loss of ``step`` of ``steps`` (``fine``: whether its episodes are fine-grained); ``distil`` False
        leaves the distillation terms out of any step."""
        total = weighted_sum(values, (*self.model, *self.extra))
        if distil and self.distills_at(step, steps, fine):
            total = total + self.ramp(step, steps) * self.weight * self.scale * weighted_sum(values, self.distill)
        return total

    def __str__(self) -> str:
        text = "loss = " + _text((*self.model, *self.extra))
        if self.distill:
            ramp = f"·ramp(t, {self.warmup:g})" if self.warmup > 0 else ""
            when = [f"every {self.every} steps"] if self.every > 1 else []
            if self.fine_share:
                when.append("fine-grained episodes only")
            if self.until < 1:
                when.append(f"the first {self.until:g} of the steps")
            suffix = f" ({', '.join(when)})" if when else ""
            text += f" + {self.weight * self.scale:g}{ramp}·({_text(self.distill)}){suffix}"
        return text
