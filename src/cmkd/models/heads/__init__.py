"""Few-shot heads: each scores queries against a support set (the relations the SRL distils)."""

from __future__ import annotations

from torch import nn

from cmkd.models.heads.feat import FEAT
from cmkd.models.heads.matchingnet import MatchingNet
from cmkd.models.heads.protonet import ProtoNet
from cmkd.models.heads.relationnet import RelationNet

HEADS = ("protonet", "matchingnet", "relationnet", "feat")


def build_head(name: str, dim: int, map_shape: tuple[int, int, int], fce: bool = False,
               relation_loss: str = "mse") -> nn.Module:
    """The head ``name`` for embeddings of width ``dim`` (RelationNet: maps of ``map_shape``)."""
    if name == "protonet":
        return ProtoNet()
    if name == "matchingnet":
        return MatchingNet(dim, fce=fce)
    if name == "relationnet":
        return RelationNet(map_shape, loss=relation_loss)
    if name == "feat":
        return FEAT(dim)
    raise ValueError(f"unknown few-shot head '{name}'; available: {', '.join(HEADS)}")
