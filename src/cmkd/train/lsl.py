"""Language-shaped learning (Mu, Liang, Goodman, ACL 2020) as a training-only part of a run: a caption
decoder on the student's embedding, and one sampled caption per training sample to decode."""

from __future__ import annotations

import torch

from cmkd.config import LSLConfig
from cmkd.data.device import DeviceData
from cmkd.models.caption_decoder import CaptionDecoder
from cmkd.models.text_encoders import MAX_TOKENS


class LanguageShaping:
    """The decoder (over the base split's caption vocabulary) and the captions it is trained to generate."""

    def __init__(self, cfg: LSLConfig, data: DeviceData, embed_dim: int) -> None:
        self.data = data
        vocab = data.dataset.base_vocabulary()
        self.decoder = CaptionDecoder(vocab, embed_dim, cfg.hidden, cfg.word_dim).to(data.device)

    def captions(self, flat: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One sampled caption per sample ``flat``, as the decoder's word ids ``[len(flat), L]``."""
        vocab = self.decoder.vocab
        table = self.data.caption_table(f"lsl:{vocab.key}", lambda texts: vocab.encode_batch(texts)[:, :MAX_TOKENS])
        return table.inputs[table.random_ids(flat, generator)]
