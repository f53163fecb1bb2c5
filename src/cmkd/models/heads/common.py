"""Pieces the heads share: class means, squared distances and the episode cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def prototypes(support: torch.Tensor, support_labels: torch.Tensor, way: int) -> torch.Tensor:
    """Class means of the support: ``[E, S, D]`` with labels ``[E, S]`` -> ``[E, way, D]``."""
    onehot = F.one_hot(support_labels, way).to(support.dtype)  # [E, S, way]
    sums = onehot.transpose(1, 2) @ support
    return sums / onehot.sum(1).unsqueeze(-1).clamp_min(1)


def squared_distances(query: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``[E, Q, D]`` and ``[E, C, D]`` -> squared Euclidean distances ``[E, Q, C]``."""
    return (query.unsqueeze(2) - centres.unsqueeze(1)).pow(2).sum(-1)


def episode_cross_entropy(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of scores ``[E, Q, way]`` against labels ``[E, Q]``, averaged over all queries."""
    return F.cross_entropy(scores.reshape(-1, scores.shape[-1]), labels.reshape(-1))
