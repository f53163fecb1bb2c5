"""Relation Networks (Sung et al., CVPR 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cmkd.config import ModelConfig
from cmkd.models.heads.common import episode_cross_entropy, prototypes


class RelationNet(nn.Module):
    """Relation Networks (Sung et al., CVPR 2018): a learned relation module over feature maps.

    Embeddings are flattened maps of shape ``map_shape``; each query map is concatenated with
    each class's mean support map and scored by two conv blocks and two linear layers. The
    scores are the relation logits; ``loss='mse'`` regresses sigmoid(logit) to the one-hot
    target as in the paper, ``loss='ce'`` uses cross-entropy over the logits.
    """

    wants_maps = True  # it compares feature maps, not vectors

    def __init__(self, map_shape: tuple[int, int, int], hidden: int = 64, loss: str = "mse") -> None:
        super().__init__()
        c, h, w = map_shape
        self.map_shape, self.loss_kind = map_shape, loss
        self.loss_name = loss  # 'mse' or 'ce'; logged under this name
        pool = (lambda: nn.MaxPool2d(2)) if min(h, w) >= 4 else (lambda: nn.Identity())
        self.relation_module = nn.Sequential(
            nn.Conv2d(2 * c, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True), pool(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True), pool(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(hidden, 8), nn.ReLU(inplace=True), nn.Linear(8, 1))

    @classmethod
    def from_config(cls, cfg: ModelConfig, dim: int, map_shape: tuple[int, int, int]) -> RelationNet:
        return cls(map_shape, loss=cfg.relation_loss)

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                way: int) -> torch.Tensor:
        e, q, _ = query.shape
        protos = prototypes(support, support_labels, way).view(e, 1, way, *self.map_shape)
        qmaps = query.view(e, q, 1, *self.map_shape)
        pairs = torch.cat([qmaps.expand(-1, -1, way, -1, -1, -1), protos.expand(-1, q, -1, -1, -1, -1)], dim=3)
        return self.relation_module(pairs.flatten(0, 2)).view(e, q, way)

    def loss(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.loss_kind == "ce":
            return episode_cross_entropy(scores, labels)
        target = F.one_hot(labels, scores.shape[-1]).to(scores.dtype)
        return F.mse_loss(torch.sigmoid(scores), target)
