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

    Every head maps ``support [E, S, D]``, ``support_labels [E, S]``, ``query [E, Q, D]`` and
    ``way`` to relation scores ``[E, Q, way]`` (what the SRL distils), keeps no per-episode
    state on the module, and defines its training ``loss(scores, labels)``.
    """

    @staticmethod
    def loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(scores.reshape(-1, scores.shape[-1]), labels.reshape(-1))

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                way: int) -> torch.Tensor:
        protos = prototypes(support, support_labels, way)
        return -(query.unsqueeze(2) - protos.unsqueeze(1)).pow(2).sum(-1)

