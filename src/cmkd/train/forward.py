"""The differentiable part of a training step, as a module that DDP and ``torch.compile`` can wrap.

Mixed precision covers the encoders (where the time goes); embeddings are cast back to
float32 before the head, its loss and the distillation terms, so softmaxes, distances and
KL divergences are computed in full precision.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cmkd.losses.objective import Objective
from cmkd.models.caption_decoder import CaptionDecoder
from cmkd.models.fewshot import FewShotModel
from cmkd.runtime import autocast


class EpisodeForward(nn.Module):
    """Embeddings ``[E, N, D]``, scores ``[E, Q, way]`` and the model-side objective terms of ``E`` batched
    episodes: the head's loss, FEAT's regulariser, the late-fusion branch losses and LSL's caption loss."""

    def __init__(self, model: FewShotModel, objective: Objective, way: int, shot: int, precision: str,
                 device: torch.device, decoder: CaptionDecoder | None = None) -> None:
        super().__init__()
        self.model, self.objective, self.way, self.shot = model, objective, way, shot
        self.precision, self.device = precision, device
        self.decoder = decoder  # language-shaped learning (LSL)

    def forward(self, images: torch.Tensor | None, text: torch.Tensor | None, episodes: int,
                text_mask: torch.Tensor | None = None, captions: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Embeddings, scores and the terms by name (``lsl`` only when ``captions [E * n, L]`` are given)."""
        batch = images if images is not None else text
        assert batch is not None, "an episode needs images or text"
        keep = self._modality_dropout(episodes, batch.shape[0] // episodes)
        with autocast(self.precision, self.device):
            emb = self.model.embed(images, text, text_mask, keep=keep)
        emb = emb.float().view(episodes, -1, emb.shape[-1])
        scores = self.model.scores(emb, self.way, self.shot)
        terms = self.model.loss_terms(scores, emb, self.way, self.shot)
        if "branch" in self.objective.names:
            terms["branch"] = self.model.branch_loss(emb, self.way, self.shot, self.objective.model_loss)
        if self.decoder is not None and captions is not None:
            terms["lsl"] = self.decoder(emb.flatten(0, 1), captions)
        return emb, scores, terms

    def _modality_dropout(self, episodes: int, per_episode: int) -> torch.Tensor | None:
        """``[E * n, 2]`` keep-masks hiding, in a ``model.modality_dropout`` share of the episodes, the
        image (half of them) or the text of every sample of the episode; None when off."""
        p = self.model.cfg.modality_dropout
        if not (self.model.training and p > 0 and self.model.fusion is not None):
            return None
        u = torch.rand(episodes, device=self.device)
        keep = torch.ones(episodes, 2, device=self.device)
        keep[:, 0] = (u >= p / 2).float()  # image hidden when u < p/2
        keep[:, 1] = ((u < p / 2) | (u >= p)).float()  # text hidden when p/2 <= u < p
        return keep.repeat_interleave(per_episode, 0)


class ClassifierForward(nn.Module):
    """Many-way logits of a linear classifier on the embedding (the pre-training stage)."""

    def __init__(self, model: FewShotModel, classifier: nn.Linear, precision: str, device: torch.device) -> None:
        super().__init__()
        self.model, self.classifier = model, classifier
        self.precision, self.device = precision, device

    def forward(self, images: torch.Tensor | None, text: torch.Tensor | None) -> torch.Tensor:
        with autocast(self.precision, self.device):
            emb = self.model.embed(images, text)
        return self.classifier(emb.float())


def data_parallel(module: nn.Module, device: torch.device, world: int) -> Any:
    """``module`` wrapped in DistributedDataParallel when several processes train together (``Any``: the caller
    may compile it, which returns a plain callable)."""
    if world == 1:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)
