"""FEAT: few-shot embedding adaptation with a set-to-set function (Ye et al., CVPR 2020)."""

from __future__ import annotations

import torch
from torch import nn

from cmkd.config import ModelConfig
from cmkd.models.heads.common import episode_cross_entropy, prototypes, squared_distances


class SetToSet(nn.Module):
    """One-head self-attention with a residual connection and layer norm (FEAT's adaptation)."""

    def __init__(self, dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, 1, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.attn(x, x, x, need_weights=False)
        return self.norm(x + self.drop(out))


class FEAT(nn.Module):
    """FEAT (Ye et al., CVPR 2020): prototypes adapted by a set-to-set transformer.

    Scores are negative squared distances to the adapted prototypes divided by
    ``temperature``. :meth:`regularizer` is FEAT's contrastive term: every instance of the
    episode is classified against the centres of its class's transformed instance set.
    """

    wants_maps = False

    def __init__(self, dim: int, temperature: float = 1.0, reg_temperature: float = 1.0) -> None:
        super().__init__()
        self.adapt = SetToSet(dim)
        self.temperature, self.reg_temperature = temperature, reg_temperature

    @classmethod
    def from_config(cls, cfg: ModelConfig, dim: int, map_shape: tuple[int, int, int]) -> FEAT:
        return cls(dim)

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                way: int) -> torch.Tensor:
        protos = self.adapt(prototypes(support, support_labels, way))
        return -squared_distances(query, protos) / self.temperature

    def regularizer(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                    query_labels: torch.Tensor, way: int) -> torch.Tensor:
        x = torch.cat([support, query], 1)  # [E, n, D]
        y = torch.cat([support_labels, query_labels], 1)
        e, n, d = x.shape
        order = torch.argsort(y, dim=1, stable=True)  # group each class's instances
        grouped = torch.gather(x, 1, order.unsqueeze(-1).expand(-1, -1, d)).view(e * way, n // way, d)
        centres = self.adapt(grouped).mean(1).view(e, way, d)
        return episode_cross_entropy(-squared_distances(x, centres) / self.reg_temperature, y)

    loss_name = "ce"  # logged under this name

    @staticmethod
    def loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return episode_cross_entropy(scores, labels)
