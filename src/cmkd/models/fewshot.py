"""A few-shot model: encoders for the modalities it sees, a fusion, and a few-shot head.

The student sees one modality (``image`` or ``text``); the teacher of Zhao et al. (ICASSP
2021) sees both (``image+text``) and fuses them before the same kind of head.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from cmkd.config import Config, ModelConfig, read_keys, value_of
from cmkd.data.augment import to_float
from cmkd.data.dataset import FewShotDataset
from cmkd.data.episodes import episode_labels, local_labels
from cmkd.data.text import Vocab
from cmkd.errors import ConfigError
from cmkd.models.fusion import LateFusion, MapFusion
from cmkd.models.heads import build_head
from cmkd.registry import BACKBONES, FUSIONS, HEADS, TEXT_ENCODERS

Inputs = torch.Tensor | Mapping[str, torch.Tensor | None]  # images, or embed()'s keyword arguments


class FewShotModel(nn.Module):
    """Embeds samples of one or two modalities and scores queries against the support."""

    def __init__(self, cfg: ModelConfig, in_channels: int, image_size: int, vocab: Vocab | None,
                 image_encoder: nn.Module | None = None) -> None:
        """``image_encoder``: your own ``nn.Module`` mapping images ``[B, C, H, W]`` to ``[B, D]``
        instead of ``cfg.backbone`` (its width is read from ``out_dim`` or found by a trial forward;
        heads that compare feature maps need a ``feature_map`` method and ``map_shape``)."""
        super().__init__()
        # pluggable parts (built-in or the user's), duck-typed: out_dim, map_shape, feature_map, prepare, ...
        self.image_encoder: Any = None
        self.text_encoder: Any = None
        self.fusion: Any = None
        self.head: Any = None
        self.map_shape: tuple[int, int, int]
        self.cfg, self.in_channels, self.image_size, self.vocab = cfg, in_channels, image_size, vocab
        self.uses_image = "image" in cfg.modality
        self.uses_text = "text" in cfg.modality
        self.wants_maps = HEADS.get(cfg.head).wants_maps
        self.custom_encoder = type(image_encoder).__name__ if image_encoder is not None else None
        if self.uses_image:
            if image_encoder is None:
                image_encoder = BACKBONES.build(cfg.backbone, in_channels=in_channels, image_size=image_size,
                                                dropblock=cfg.dropblock)
            self.image_encoder = _adopt_encoder(image_encoder, in_channels, image_size, self.wants_maps)
        self.text_encoder = (TEXT_ENCODERS.build(cfg.text_encoder, vocab=vocab, out_dim=cfg.text_dim,
                                                 word_dropout=cfg.word_dropout) if self.uses_text else None)
        if self.uses_image and self.uses_text:
            self.fusion = (MapFusion(self.image_encoder.map_shape, self.text_encoder.out_dim) if self.wants_maps
                           else FUSIONS.build(cfg.fusion, image_dim=self.image_encoder.out_dim,
                                              text_dim=self.text_encoder.out_dim, out_dim=cfg.embed_dim))
        if self.uses_image:
            self.map_shape = self.image_encoder.map_shape
        else:
            self.map_shape = (self.text_encoder.out_dim, 1, 1)
        if self.wants_maps:
            self.out_dim = self.map_shape[0] * self.map_shape[1] * self.map_shape[2]
        else:
            self.out_dim = (self.fusion or self.image_encoder or self.text_encoder).out_dim
        self.head = build_head(cfg, self.out_dim, self.map_shape)

    def embed(self, images: torch.Tensor | None = None, text: torch.Tensor | None = None,
              text_mask: torch.Tensor | None = None, keep: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, D]`` embeddings from normalised images and/or encoder-ready text inputs.

        ``text`` holds one caption per sample, or with ``text_mask [B, C]`` several: their
        text embeddings are averaged (over the valid ones) before fusion. ``keep [B, 2]``
        (modality dropout) multiplies the image and the text embedding before fusion.
        """
        if self.uses_image and images is None:
            raise ValueError(f"this {self.cfg.modality} model needs images")
        if self.uses_text and text is None:
            raise ValueError(f"this {self.cfg.modality} model needs text for every sample")
        img: Any = None  # None, or a tensor, per modality
        if self.uses_image:
            img = self.image_encoder.feature_map(images) if self.wants_maps else self.image_encoder(images)
        txt: Any = None
        if self.uses_text and text_mask is None:
            txt = self.text_encoder(text)
        elif self.uses_text:
            assert text is not None and text_mask is not None
            b, c = text_mask.shape
            flat = self.text_encoder(text.flatten(0, 1)).view(b, c, -1)
            m = text_mask.unsqueeze(-1).to(flat.dtype)
            txt = (flat * m).sum(1) / m.sum(1).clamp_min(1.0)
        if keep is not None and self.fusion is not None:
            keep = keep.to(img.dtype)
            img = img * keep[:, 0].view(-1, *[1] * (img.dim() - 1))
            txt = txt * keep[:, 1].view(-1, 1)
        out = self.fusion(img, txt) if self.fusion is not None else (img if img is not None else txt)
        return out.flatten(1)

    def forward(self, support: Inputs, support_labels: torch.Tensor, query: Inputs) -> torch.Tensor:
        """Logits of ``query`` over the classes of ``support``: ``[E, Q, C]`` for a batch of episodes (``support
        [E, S, ...]``, ``support_labels [E, S]``, ``query [E, Q, ...]``) or ``[Q, C]`` for one (no ``E``).

        Labels may take any integer values in any order; column ``c`` is the ``c``-th smallest label of the
        episode (``torch.unique(labels)`` order), and every episode of a batch needs the same number of
        classes. Inputs are what :meth:`embed` takes: a tensor of :meth:`preprocess`-ed images for an image
        model, otherwise a mapping of :meth:`embed`'s keyword arguments (``text``, ``text_mask``, ``images``).
        """
        batched = support_labels.dim() == 2
        labels = support_labels if batched else support_labels.unsqueeze(0)
        local, ways = local_labels(labels)
        if bool((ways != ways[0]).any()):
            raise ValueError(f"every episode of a batch needs the same number of classes, got {ways.tolist()}")
        e = labels.shape[0]
        s_emb = self._embed_inputs(support, batched).view(e, labels.shape[1], -1)
        q_emb = self._embed_inputs(query, batched)
        q_emb = q_emb.view(e, q_emb.shape[0] // e, -1)
        logits = self.head(s_emb, local, q_emb, int(ways[0]))
        return logits if batched else logits[0]

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """uint8 images ``[..., C, H, W]`` (at the model's ``image_size``) -> the normalised floats it takes."""
        return to_float(images)

    def _embed_inputs(self, inputs: Inputs, batched: bool) -> torch.Tensor:
        """Embeddings ``[N, D]`` of forward's inputs (an episode axis folded into N)."""
        kwargs = dict(inputs) if isinstance(inputs, Mapping) else {"images" if self.uses_image else "text": inputs}
        if batched:
            kwargs = {k: v.flatten(0, 1) if v is not None else None for k, v in kwargs.items()}
        return self.embed(**kwargs)

    def scores(self, emb: torch.Tensor, way: int, shot: int) -> torch.Tensor:
        """Episode embeddings ``[E, way*(shot+query), D]`` (support first) -> scores ``[E, Q, way]``."""
        n_support = way * shot
        support, query = emb[:, :n_support], emb[:, n_support:]
        labels = episode_labels(way, shot, emb.device).expand(emb.shape[0], -1)
        return self.head(support, labels, query, way)

    def loss_terms(self, scores: torch.Tensor, emb: torch.Tensor, way: int, shot: int) -> dict[str, torch.Tensor]:
        """The head's episode loss (under ``head.loss_name``) and, for FEAT, its contrastive regulariser
        (``feat_reg``); :class:`cmkd.losses.objective.Objective` weighs and sums them."""
        query = (emb.shape[1] - way * shot) // way
        truth = episode_labels(way, query, emb.device).expand(emb.shape[0], -1)
        terms = {self.head.loss_name: self.head.loss(scores, truth)}
        if self.regularised and self.cfg.feat_reg > 0:
            n_support = way * shot
            s_labels = episode_labels(way, shot, emb.device).expand(emb.shape[0], -1)
            terms["feat_reg"] = self.head.regularizer(emb[:, :n_support], s_labels, emb[:, n_support:], truth, way)
        return terms

    @property
    def regularised(self) -> bool:
        """Whether the head brings a regulariser of its own (FEAT's contrastive term)."""
        return hasattr(self.head, "regularizer")

    @property
    def late_fusion(self) -> bool:
        return isinstance(self.fusion, LateFusion)

    def branch_loss(self, emb: torch.Tensor, way: int, shot: int,
                    model_loss: Callable[[dict[str, torch.Tensor]], torch.Tensor]) -> torch.Tensor:
        """Late fusion: ``model_loss`` of the image half and of the text half of ``emb``, each alone."""
        split = self.image_encoder.out_dim
        total = emb.new_zeros(())
        for keep in (slice(0, split), slice(split, None)):
            part = torch.zeros_like(emb)
            part[..., keep] = emb[..., keep]
            total = total + model_loss(self.loss_terms(self.scores(part, way, shot), part, way, shot))
        return total

    def spec(self) -> dict:
        """What is needed to rebuild this model (stored beside its weights)."""
        return {"model": asdict(self.cfg), "in_channels": self.in_channels, "image_size": self.image_size,
                "vocab": self.vocab.to_dict() if self.vocab is not None else None,
                "custom_image_encoder": self.custom_encoder}

    @classmethod
    def from_spec(cls, spec: dict, image_encoder: nn.Module | None = None) -> FewShotModel:
        """The model ``spec`` describes (untrained); ``image_encoder``: the module a model trained with your own
        encoder was built around (a fresh instance of the same class)."""
        cls.check_encoder(spec, image_encoder)
        vocab = Vocab.from_dict(spec["vocab"]) if spec.get("vocab") else None
        return cls(ModelConfig(**spec["model"]), spec["in_channels"], spec["image_size"], vocab, image_encoder)

    @staticmethod
    def check_encoder(spec: dict, image_encoder: nn.Module | None) -> None:
        """A ``ValueError`` unless ``image_encoder`` is given exactly when ``spec``'s model used the user's own."""
        custom = spec.get("custom_image_encoder")
        if custom and image_encoder is None:
            raise ValueError(f"this model was trained with your own image encoder ({custom}): pass a fresh one, "
                             f"load_model(path, image_encoder={custom}(...)), or register its class "
                             f"(cmkd.register('backbone', 'name', {custom})) and train with model.backbone=name")
        if image_encoder is not None and not custom:
            raise ValueError(f"this model was trained with the '{spec['model']['backbone']}' backbone, not your own "
                             "image encoder; load it without image_encoder=")


def _adopt_encoder(encoder: Any, in_channels: int, image_size: int, wants_maps: bool) -> nn.Module:
    """A user's image encoder, given the ``out_dim`` and ``map_shape`` the model reads."""
    if not hasattr(encoder, "out_dim") or not hasattr(encoder, "map_shape"):
        was_training = encoder.training
        with torch.no_grad():
            out = encoder.eval()(torch.zeros(2, in_channels, image_size, image_size))
        encoder.train(was_training)
        if out.dim() != 2:
            raise ValueError(f"the image encoder {type(encoder).__name__} must return [batch, features], "
                             f"got shape {tuple(out.shape)}")
        width = int(getattr(encoder, "out_dim", out.shape[1]))
        encoder.out_dim = width
        encoder.map_shape = getattr(encoder, "map_shape", (width, 1, 1))
    if wants_maps and not hasattr(encoder, "feature_map"):
        raise ValueError(f"this head compares feature maps: give {type(encoder).__name__} a feature_map(x) "
                         "method returning [B, C, h, w] and a map_shape attribute")
    return encoder


def build_model(cfg: ModelConfig, dataset: FewShotDataset, image_encoder: nn.Module | None = None) -> FewShotModel:
    """A fresh model for ``cfg`` (or around your own ``image_encoder``); text vocabularies come from
    base-split captions only."""
    vocab = None
    if "text" in cfg.modality and TEXT_ENCODERS.get(cfg.text_encoder).needs_vocab:
        vocab = dataset.base_vocabulary()
    c, h, _ = dataset.image_shape
    return FewShotModel(cfg, c, h, vocab, image_encoder)


def check_same_model(model: FewShotModel, cfg: Config, dataset: FewShotDataset, role: str = "--init") -> None:
    """Refuse starting weights of another model than ``cfg`` describes (another modality, head, width, input
    size ...), naming every field that differs."""
    c, h, _ = dataset.image_shape
    differ = [f"{key}: {getattr(model.cfg, key.split('.')[1])!r} in the checkpoint, {value_of(cfg, key)!r} "
              "configured" for key in read_keys(cfg, "model")
              if getattr(model.cfg, key.split(".")[1]) != value_of(cfg, key)]
    if (model.in_channels, model.image_size) != (c, h):
        differ.append(f"input: {model.in_channels}x{model.image_size}px in the checkpoint, {c}x{h}px in the data")
    if differ:
        raise ConfigError(f"{role}: the checkpoint holds another model than the configured one:\n  " +
                          "\n  ".join(differ) + "\nStart from a checkpoint of the same model, or configure it so")


def copy_encoder(teacher: FewShotModel, student: FewShotModel, student_has_init: bool = False) -> None:
    """Start ``student``'s encoder from ``teacher``'s encoder of the same modality (``distill.init_encoder``): an
    image student from the teacher's image branch. Refused, naming the fix, unless the two are the same
    architecture (and, for text, the same vocabulary), or when the student already has starting weights
    (``student_has_init``: ``--init``), which the teacher's encoder would silently overwrite."""
    if student_has_init:
        raise ConfigError("distill.init_encoder and --init both give the student's encoder its starting weights; "
                          "keep one: drop --init, or set distill.init_encoder=false")
    from cmkd.models.ensemble import TeacherEnsemble  # a subclass of this module's model

    if isinstance(teacher, TeacherEnsemble):
        raise ConfigError("distill.init_encoder: an ensemble of teachers has one encoder per teacher, not one to "
                          "start the student from; set distill.init_encoder=false, or distil from one teacher")
    if student.uses_image == student.uses_text:
        raise ConfigError("distill.init_encoder: the student sees both modalities; it starts from one encoder of "
                          "the teacher only when it sees one (model.modality=image or text)")
    name, modality = ("image_encoder", "image") if student.uses_image else ("text_encoder", "text")
    source, target = getattr(teacher, name), getattr(student, name)
    fix = "give both the same model settings (model.backbone, widths, text encoder), or set distill.init_encoder=false"
    if source is None:
        raise ConfigError(f"distill.init_encoder: the teacher has no {modality} encoder (it sees "
                          f"{teacher.cfg.modality}); {fix}")
    if modality == "text" and getattr(teacher.vocab, "key", None) != getattr(student.vocab, "key", None):
        raise ConfigError(f"distill.init_encoder: the teacher's vocabulary is not the student's; {fix}")
    mismatch = f"distill.init_encoder: the teacher's {modality} encoder ({type(source).__name__}) is not the student's"
    if type(source) is not type(target):
        raise ConfigError(f"{mismatch} ({type(target).__name__}); {fix}")
    try:  # strict: every tensor present on both sides, with the same shape (the student is discarded on failure)
        target.load_state_dict(source.state_dict())
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise ConfigError(f"{mismatch} ({detail}); {fix}") from err
