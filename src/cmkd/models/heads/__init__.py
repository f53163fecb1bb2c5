"""Few-shot heads: each scores queries against a support set (the relations the SRL distils).

Every head follows :class:`FewShotHead`; the names are in :data:`cmkd.registry.HEADS`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from cmkd.config import ModelConfig
from cmkd.registry import HEADS


@runtime_checkable
class FewShotHead(Protocol):
    """What a few-shot head is.

    ``forward`` maps ``support [E, S, D]``, ``support_labels [E, S]``, ``query [E, Q, D]`` and
    ``way`` to relation scores ``[E, Q, way]`` (higher = more alike: what the SRL distils) and
    keeps no per-episode state on the module (episodes can be batched, DDP-safe). ``loss``
    is its training loss on those scores. ``wants_maps`` heads get flattened feature maps of
    ``map_shape`` instead of vectors. A head may add a ``regularizer`` (FEAT).
    """

    wants_maps: bool

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                way: int) -> torch.Tensor: ...

    def loss(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...


def build_head(cfg: ModelConfig, dim: int, map_shape: tuple[int, int, int]) -> FewShotHead:
    """The head ``cfg.head`` for embeddings of width ``dim`` (feature maps of ``map_shape``)."""
    return HEADS.get(cfg.head).from_config(cfg, dim=dim, map_shape=map_shape)
