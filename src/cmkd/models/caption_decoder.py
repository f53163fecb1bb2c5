"""The caption decoder of language-shaped learning (LSL; Mu, Liang and Goodman, ACL 2020).

During training only, a small recurrent language model must generate a sample's caption from the
student's embedding of that sample; its loss shapes the embedding with language. At test time the
student is used alone: the decoder is not part of the model that is evaluated or exported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cmkd.data.text import PAD, Vocab

#: The decoder's own token ids: 0 pads, 1 is unknown, 2 starts and 3 ends a caption.
BOS, EOS = 2, 3


class CaptionDecoder(nn.Module):
    """GRU language model conditioned on an embedding: ``h_0 = tanh(W e)``, then teacher forcing."""

    def __init__(self, vocab: Vocab, in_dim: int, hidden: int = 200, word_dim: int = 128) -> None:
        super().__init__()
        self.vocab = vocab
        self.init = nn.Linear(in_dim, hidden)
        self.embed = nn.Embedding(len(vocab) + 2, word_dim, padding_idx=PAD)  # + BOS, EOS
        self.gru = nn.GRU(word_dim, hidden, batch_first=True)
        self.out = nn.Linear(hidden, len(vocab) + 2)

    def tokens(self, words: torch.Tensor) -> torch.Tensor:
        """Vocabulary ids ``[B, L]`` (padded with 0) -> decoder ids with BOS first and EOS after the last word."""
        shifted = torch.where(words >= 2, words + 2, words)  # make room for BOS and EOS
        lengths = (words != PAD).sum(1)
        seq = torch.cat([torch.full_like(words[:, :1], BOS), shifted, torch.zeros_like(words[:, :1])], 1)
        seq[torch.arange(len(seq), device=seq.device), lengths + 1] = EOS
        return seq

    def forward(self, emb: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of predicting each next token (and EOS) of ``words`` from ``emb [B, D]``."""
        seq = self.tokens(words)
        inputs, targets = seq[:, :-1], seq[:, 1:]
        h0 = torch.tanh(self.init(emb)).unsqueeze(0)
        out, _ = self.gru(self.embed(inputs), h0)
        logits = self.out(out)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=PAD)
