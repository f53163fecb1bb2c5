"""Matching Networks (Vinyals et al., NeurIPS 2016)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cmkd.config import ModelConfig


class MatchingNet(nn.Module):
    """Matching Networks (Vinyals et al., NeurIPS 2016).

    Attention over the support set with cosine similarity (times ``scale``); the scores are
    ``log p(c | q) = log sum_s a(q, s) [y_s = c]``. With ``fce=True`` the support is
    re-embedded by a bidirectional LSTM and each query by an attention LSTM over the
    support (full-context embeddings); the BiLSTM reads the support in order, so FCE
    scores depend on the support order, as in the paper.
    """

    wants_maps = False

    def __init__(self, dim: int, fce: bool = False, scale: float = 10.0, steps: int = 3) -> None:
        super().__init__()
        self.fce, self.scale, self.steps = fce, scale, steps
        if fce:
            self.support_lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
            self.query_cell = nn.LSTMCell(2 * dim, dim)

    @classmethod
    def from_config(cls, cfg: ModelConfig, dim: int, map_shape: tuple[int, int, int]) -> MatchingNet:
        return cls(dim, fce=cfg.fce)

    def _contextual(self, support: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, _ = self.support_lstm(support)
        d = support.shape[-1]
        g = support + out[..., :d] + out[..., d:]
        e, q, _ = query.shape
        flat_q = query.reshape(e * q, d)
        h, c = torch.zeros_like(flat_q), torch.zeros_like(flat_q)
        g_rep = g.repeat_interleave(q, dim=0)  # [E*Q, S, D]
        for _ in range(self.steps):
            hq = flat_q + h
            att = torch.softmax((g_rep @ hq.unsqueeze(-1)).squeeze(-1), -1)
            r = (att.unsqueeze(-1) * g_rep).sum(1)
            h, c = self.query_cell(torch.cat([flat_q, r], -1), (h, c))
        return g, (flat_q + h).view(e, q, d)

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                way: int) -> torch.Tensor:
        if self.fce:
            support, query = self._contextual(support, query)
        cos = F.normalize(query, dim=-1) @ F.normalize(support, dim=-1).transpose(1, 2)  # [E, Q, S]
        att = torch.softmax(self.scale * cos, -1)
        onehot = F.one_hot(support_labels, way).to(att.dtype)  # [E, S, way]
        return torch.log((att @ onehot).clamp_min(1e-8))

    loss_name = "nll"  # of the attention probabilities; logged under this name

    @staticmethod
    def loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(scores.reshape(-1, scores.shape[-1]), labels.reshape(-1))
