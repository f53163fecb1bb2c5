"""Prototypical Networks (Snell, Swersky, Zemel, NeurIPS 2017)."""

from __future__ import annotations

import torch
from torch import nn


def prototypes(support: torch.Tensor, support_labels: torch.Tensor, way: int) -> torch.Tensor:
    """Class means of the support: ``[E, S, D]`` with labels ``[E, S]`` -> ``[E, way, D]``."""
    onehot = torch.nn.functional.one_hot(support_labels, way).to(support.dtype)  # [E, S, way]
    sums = onehot.transpose(1, 2) @ support
    return sums / onehot.sum(1).unsqueeze(-1).clamp_min(1)


class ProtoNet(nn.Module):
    """Scores are negative squared Euclidean distances from each query to each class mean.

    Holds no per-episode state; episodes are batched along the first dimension.
    """

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                way: int) -> torch.Tensor:
        protos = prototypes(support, support_labels, way)
        return -(query.unsqueeze(2) - protos.unsqueeze(1)).pow(2).sum(-1)


def build_head(name: str) -> nn.Module:
    if name == "protonet":
        return ProtoNet()
    raise ValueError(f"unknown few-shot head '{name}'; available: protonet")
