"""One registry per kind of named part: the single source of every name a config, the command line
or a message may use.

Entries point at their implementation by ``"module:attribute"`` and are imported on first use, so
this low layer names the parts of the layers above without importing them. Each implementation
is a callable taking the keyword arguments its registry documents.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Entry:
    target: str | Callable[..., Any]  # "package.module:attribute", or the implementation itself
    help: str


class Registry:
    """Named implementations of one kind (heads, backbones, ...), resolved lazily."""

    def __init__(self, kind: str, entries: dict[str, Entry]) -> None:
        self.kind, self.entries = kind, entries

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.entries)

    def get(self, name: str) -> Any:
        """The implementation registered as ``name`` (an error naming the valid ones otherwise)."""
        if name not in self.entries:
            raise ValueError(f"unknown {self.kind} '{name}'; available: {', '.join(self.names)}")
        target = self.entries[name].target
        if not isinstance(target, str):
            return target
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)

    def build(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)

    def add(self, name: str, implementation: str | Callable[..., Any], help: str = "") -> None:
        """Register ``implementation`` as ``name``; registering the same one again is a no-op."""
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"a {self.kind} name must be letters, digits, '-' or '_', got {name!r}")
        old = self.entries.get(name)
        if old is not None and old.target is not implementation and old.target != implementation:
            raise ValueError(f"'{name}' is already a {self.kind} ({old.help or old.target}); choose another name")
        self.entries[name] = Entry(implementation, help or getattr(implementation, "__doc__", None) or "")


def register(kind: str, name: str, implementation: str | Callable[..., Any], help: str = "") -> None:
    """Make your own part usable by name in configs, on the command line and in checkpoints (Python API).

    ``kind`` is ``"backbone"`` (called with ``in_channels``, ``image_size``, ``dropblock``; returns an
    ``nn.Module`` mapping ``[B, C, H, W]`` to ``[B, D]``), ``"head"`` (a class with ``from_config(cfg, dim=,
    map_shape=)``, see :class:`cmkd.models.heads.FewShotHead`), ``"text_encoder"`` (called with ``vocab``,
    ``out_dim``, ``word_dropout``) or ``"fusion"`` (called with ``image_dim``, ``text_dim``, ``out_dim``).
    A checkpoint stores the name, so register it again before loading (``cmkd --import your_module`` on
    the command line imports a module that does)."""
    kinds = {"backbone": BACKBONES, "head": HEADS, "text_encoder": TEXT_ENCODERS, "fusion": FUSIONS}
    if kind not in kinds:
        raise ValueError(f"unknown kind {kind!r}; one of {', '.join(kinds)}")
    kinds[kind].add(name, implementation, help)


#: Few-shot heads; built as ``cls.from_config(cfg, dim=..., map_shape=...)``.
HEADS = Registry("few-shot head", {
    "protonet": Entry("cmkd.models.heads.protonet:ProtoNet", "Prototypical Networks (Snell et al. 2017)"),
    "matchingnet": Entry("cmkd.models.heads.matchingnet:MatchingNet", "Matching Networks (Vinyals et al. 2016)"),
    "relationnet": Entry("cmkd.models.heads.relationnet:RelationNet", "Relation Networks (Sung et al. 2018)"),
    "feat": Entry("cmkd.models.heads.feat:FEAT", "FEAT set-to-set adaptation (Ye et al. 2020)"),
})

#: Image backbones; built with ``in_channels``, ``image_size``, ``dropblock``.
BACKBONES = Registry("backbone", {
    "conv4": Entry("cmkd.models.backbones:Conv4", "4 x [conv 64, BN, ReLU, pool] (Vinyals et al. 2016)"),
    "resnet12": Entry("cmkd.models.backbones:ResNet12", "ResNet-12, 64-160-320-640 (MetaOptNet, FEAT)"),
    "resnet18": Entry("cmkd.models.backbones:ResNet18", "ResNet-18 (He et al. 2016)"),
})

#: Text encoders; built with ``vocab``, ``out_dim``, ``word_dropout``.
TEXT_ENCODERS = Registry("text encoder", {
    "bow": Entry("cmkd.models.text_encoders:BagOfWords", "mean of learned word embeddings, then linear"),
    "bigru": Entry("cmkd.models.text_encoders:BiGRU", "bidirectional GRU over learned word embeddings"),
    "minilm": Entry("cmkd.models.text_encoders:MiniLM", "frozen all-MiniLM-L6-v2 sentence embeddings (cmkd[text])"),
})

#: Fusions of the teacher's image and text embeddings; built with ``image_dim``, ``text_dim``, ``out_dim``.
FUSIONS = Registry("fusion", {
    "concat": Entry("cmkd.models.fusion:ConcatFusion", "concatenation, then a two-layer MLP"),
    "gated": Entry("cmkd.models.fusion:GatedFusion", "gated sum of projected image and text embeddings"),
    "late": Entry("cmkd.models.fusion:LateFusion", "scaled side by side: a late fusion of relation scores"),
})

#: Distillation methods; called with the ``DistillConfig``, they return a method (or None: the student alone).
METHODS = Registry("distillation method", {
    "none": Entry("cmkd.losses.distillation:student_alone", "the student alone (its own loss only)"),
    "kd": Entry("cmkd.losses.distillation:HintonKD", "Hinton et al. 2015: KL of softened episode logits"),
    "rkd": Entry("cmkd.losses.distillation:RelationalKD", "Park et al. 2019: distance + angle structure"),
    "srl": Entry("cmkd.losses.distillation:SpatialRelation", "the Spatial Relation Loss (Zhao et al. 2021)"),
})
