"""The differentiable part of a training step, as a module that DDP and ``torch.compile`` can wrap.

Mixed precision covers the encoders (where the time goes); embeddings are cast back to
float32 before the head, its loss and the distillation terms, so softmaxes, distances and
KL divergences are computed in full precision.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from cmkd.models.fewshot import FewShotModel

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on a GPU that supports it, else fp32 (bf16 was slower than fp32 on the
    development CPU, which lacks bf16 instructions: benchmarks/RESULTS.md)."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to ``precision`` (a resolved one) on ``device``; a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


class EpisodeForward(nn.Module):
    """Embeddings ``[E, N, D]``, scores ``[E, Q, way]`` and the head's loss of ``E`` batched episodes."""

    def __init__(self, model: FewShotModel, way: int, shot: int, precision: str, device: torch.device) -> None:
        super().__init__()
        self.model, self.way, self.shot = model, way, shot
        self.precision, self.device = precision, device

    def forward(self, images: torch.Tensor | None, text: torch.Tensor | None,
                episodes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with autocast(self.precision, self.device):
            emb = self.model.embed(images, text)
        emb = emb.float().view(episodes, -1, emb.shape[-1])
        scores = self.model.scores(emb, self.way, self.shot)
        return emb, scores, self.model.loss(scores, emb, self.way, self.shot)


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


def data_parallel(module: nn.Module, device: torch.device, world: int) -> nn.Module:
    """``module`` wrapped in DistributedDataParallel when several processes train together."""
    if world == 1:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)
