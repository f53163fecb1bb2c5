"""Several teachers as one: an ensemble of few-shot models of one architecture (for example the same teacher
trained from several seeds), whose scores are the mean of its members' scores.

Averaging the teachers' scores is the classic way to give a student a better-calibrated soft target than any
one teacher (Hinton et al., "Distilling the knowledge in a neural network", 2015; for several teachers, You et
al., KDD 2017). The ensemble's embedding of a sample is its members' embeddings side by side, so a
relational term on embeddings (the SRL's distance structure) sees their summed geometry: for ProtoNet
members the mean score is ProtoNet's score on that concatenation divided by the number of members, so the
ensemble's relations and its geometry agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from cmkd.config import flatten
from cmkd.errors import ConfigError
from cmkd.models.fewshot import FewShotModel, Inputs


class TeacherEnsemble(FewShotModel):
    """A teacher made of ``members`` (two or more models with the same ``spec()``: architecture,
    modalities, image size, vocabulary). It embeds and scores like one :class:`FewShotModel` and serves
    wherever a teacher does (``Trainer(teacher=...)``, which freezes its copy; ``cmkd distill --teacher A,B,C``); it is
    not trained."""

    def __init__(self, members: Sequence[FewShotModel]) -> None:
        nn.Module.__init__(self)  # the members hold every part; none of FewShotModel's own are built
        if len(members) < 2:
            raise ConfigError(f"an ensemble of teachers needs two or more, got {len(members)}; "
                              "distil from a single teacher directly")
        first = flatten(members[0].spec())
        for i, m in enumerate(members[1:], start=1):
            if (spec := flatten(m.spec())) != first:
                keys = sorted(k for k in first.keys() | spec.keys() if first.get(k) != spec.get(k))
                raise ConfigError(f"an ensemble's teachers must share one model; teacher {i} differs from teacher 0 "
                                  f"in {', '.join(keys)}: ensemble teachers trained with the same model settings "
                                  "(different seeds or data order)")
        self.members = nn.ModuleList(members)
        m0 = members[0]
        self.cfg, self.in_channels, self.image_size, self.vocab = m0.cfg, m0.in_channels, m0.image_size, m0.vocab
        self.uses_image, self.uses_text, self.wants_maps = m0.uses_image, m0.uses_text, m0.wants_maps
        self.custom_encoder, self.map_shape = m0.custom_encoder, m0.map_shape
        self.image_encoder = self.fusion = None  # one per member: no single branch to start a student from
        self.widths = [m.out_dim for m in members]
        self.out_dim = sum(self.widths)

    @property
    def text_encoder(self) -> Any:
        """The members' text input is one (same encoder kind and vocabulary): the first member's encoder
        prepares it."""
        return self.models[0].text_encoder

    @property
    def models(self) -> list[FewShotModel]:
        return cast(list[FewShotModel], list(self.members))

    def embed(self, images: torch.Tensor | None = None, text: torch.Tensor | None = None,
              text_mask: torch.Tensor | None = None, keep: torch.Tensor | None = None) -> torch.Tensor:
        """The members' embeddings side by side: ``[B, sum of their widths]``."""
        return torch.cat([m.embed(images, text, text_mask, keep) for m in self.models], dim=-1)

    def scores(self, emb: torch.Tensor, way: int, shot: int) -> torch.Tensor:
        """The mean of the members' scores, each on its own part of ``emb``."""
        parts = emb.split(self.widths, dim=-1)
        return torch.stack([m.scores(p, way, shot) for m, p in zip(self.models, parts)]).mean(0)

    def forward(self, support: Inputs, support_labels: torch.Tensor, query: Inputs) -> torch.Tensor:
        """The mean of the members' logits (see :meth:`FewShotModel.forward`)."""
        return torch.stack([m(support, support_labels, query) for m in self.models]).mean(0)

    def loss_terms(self, scores: torch.Tensor, emb: torch.Tensor, way: int, shot: int) -> dict[str, torch.Tensor]:
        raise TypeError("a TeacherEnsemble is not trained; train its members, then ensemble them")

    def spec(self) -> dict:
        return {"ensemble": [m.spec() for m in self.models]}

