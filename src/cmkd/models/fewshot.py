"""A few-shot model: encoders for the modalities it sees, a fusion, and a few-shot head.

The student sees one modality (``image`` or ``text``); the teacher of Zhao et al. (ICASSP
2021) sees both (``image+text``) and fuses them before the same kind of head.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from cmkd.config import ModelConfig
from cmkd.data.episodes import episode_labels
from cmkd.data.text import Vocab
from cmkd.models.backbones import build_backbone
from cmkd.models.fusion import MapFusion, build_fusion
from cmkd.models.heads import build_head
from cmkd.models.text_encoders import build_text_encoder


class FewShotModel(nn.Module):
    """Embeds samples of one or two modalities and scores queries against the support."""

    def __init__(self, cfg: ModelConfig, in_channels: int, image_size: int, vocab: Vocab | None) -> None:
        super().__init__()
        self.cfg, self.in_channels, self.image_size, self.vocab = cfg, in_channels, image_size, vocab
        self.uses_image = "image" in cfg.modality
        self.uses_text = "text" in cfg.modality
        self.wants_maps = cfg.head == "relationnet"  # RelationNet compares feature maps, not vectors
        self.image_encoder = (build_backbone(cfg.backbone, in_channels, image_size, cfg.dropblock)
                              if self.uses_image else None)
        self.text_encoder = (build_text_encoder(cfg.text_encoder, vocab, cfg.text_dim, cfg.word_dropout)
                             if self.uses_text else None)
        self.fusion = None
        if self.uses_image and self.uses_text:
            self.fusion = (MapFusion(self.image_encoder.map_shape, self.text_encoder.out_dim) if self.wants_maps
                           else build_fusion(cfg.fusion, self.image_encoder.out_dim, self.text_encoder.out_dim,
                                             cfg.embed_dim))
        if self.uses_image:
            self.map_shape = self.image_encoder.map_shape
        else:
            self.map_shape = (self.text_encoder.out_dim, 1, 1)
        if self.wants_maps:
            self.out_dim = self.map_shape[0] * self.map_shape[1] * self.map_shape[2]
        else:
            self.out_dim = (self.fusion or self.image_encoder or self.text_encoder).out_dim
        self.head = build_head(cfg.head, self.out_dim, self.map_shape, cfg.fce, cfg.relation_loss)

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
        img = None
        if self.uses_image:
            img = self.image_encoder.feature_map(images) if self.wants_maps else self.image_encoder(images)
        txt = None
        if self.uses_text and text_mask is None:
            txt = self.text_encoder(text)
        elif self.uses_text:
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

    def scores(self, emb: torch.Tensor, way: int, shot: int) -> torch.Tensor:
        """Episode embeddings ``[E, way*(shot+query), D]`` (support first) -> scores ``[E, Q, way]``."""
        n_support = way * shot
        support, query = emb[:, :n_support], emb[:, n_support:]
        labels = episode_labels(way, shot, emb.device).expand(emb.shape[0], -1)
        return self.head(support, labels, query, way)

    def loss(self, scores: torch.Tensor, emb: torch.Tensor, way: int, shot: int) -> torch.Tensor:
        """The head's episode loss, plus FEAT's contrastive regulariser when the head has one."""
        query = (emb.shape[1] - way * shot) // way
        truth = episode_labels(way, query, emb.device).expand(emb.shape[0], -1)
        loss = self.head.loss(scores, truth)
        if hasattr(self.head, "regularizer") and self.cfg.feat_reg > 0:
            n_support = way * shot
            s_labels = episode_labels(way, shot, emb.device).expand(emb.shape[0], -1)
            loss = loss + self.cfg.feat_reg * self.head.regularizer(emb[:, :n_support], s_labels,
                                                                    emb[:, n_support:], truth, way)
        return loss

    def branch_loss(self, emb: torch.Tensor, way: int, shot: int) -> torch.Tensor:
        """Late fusion: the episode loss of the image half and of the text half of ``emb``, each alone."""
        split = self.image_encoder.out_dim
        total = emb.new_zeros(())
        for keep in (slice(0, split), slice(split, None)):
            part = torch.zeros_like(emb)
            part[..., keep] = emb[..., keep]
            total = total + self.loss(self.scores(part, way, shot), part, way, shot)
        return total

    def spec(self) -> dict:
        """What is needed to rebuild this model (stored beside its weights)."""
        return {"model": asdict(self.cfg), "in_channels": self.in_channels, "image_size": self.image_size,
                "vocab": self.vocab.to_dict() if self.vocab is not None else None}

    @classmethod
    def from_spec(cls, spec: dict) -> FewShotModel:
        vocab = Vocab.from_dict(spec["vocab"]) if spec.get("vocab") else None
        return cls(ModelConfig(**spec["model"]), spec["in_channels"], spec["image_size"], vocab)
