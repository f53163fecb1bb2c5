"""Prototypical Networks (Snell, Swersky, Zemel, NeurIPS 2017)."""

from __future__ import annotations

import torch
from torch import nn

from cmkd.config import ModelConfig
from cmkd.models.heads.common import episode_cross_entropy, prototypes, squared_distances


class ProtoNet(nn.Module):
    """Scores are negative squared Euclidean distances from each query to each class mean."""

    wants_maps = False

    @classmethod
    def from_config(cls, cfg: ModelConfig, dim: int, map_shape: tuple[int, int, int]) -> ProtoNet:
        return cls()

    loss_name = "ce"  # logged under this name

    @staticmethod
    def loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return episode_cross_entropy(scores, labels)

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                way: int) -> torch.Tensor:
        return -squared_distances(query, prototypes(support, support_labels, way))
