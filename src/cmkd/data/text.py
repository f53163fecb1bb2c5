"""Captions: tokenizer, vocabulary (from training captions only) and the caption table.

Every sample may carry several captions (ten per CUB image). The caption table stores
each distinct caption once, already turned into encoder input (token ids, or cached
sentence embeddings), plus, per sample, the ids of its captions. Training draws one
caption per sample per episode; evaluation averages the embeddings of all of them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

PAD, UNK = 0, 1
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def clean_caption(text: str) -> str:
    """Drop U+FFFD replacement characters and collapse whitespace."""
    return " ".join(text.replace("\ufffd", " ").split())


def tokenize(text: str) -> list[str]:
    """Lower-cased words; punctuation and underscores separate words and are dropped."""
    return _WORD.findall(clean_caption(text).lower())


class Vocab:
    """Word -> id map built from training captions; unseen words map to ``<unk>``."""

    def __init__(self, words: Sequence[str]) -> None:
        self.words = ["<pad>", "<unk>", *[w for w in words if w not in ("<pad>", "<unk>")]]
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> Vocab:
        counts = Counter(w for c in captions for w in tokenize(c))
        return cls(sorted(w for w, n in counts.items() if n >= min_count))

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str, max_len: int) -> list[int]:
        ids = [self.index.get(w, UNK) for w in tokenize(text)][:max_len]
        return ids + [PAD] * (max_len - len(ids))

    def encode_batch(self, texts: Sequence[str], max_len: int | None = None) -> torch.Tensor:
        if max_len is None:
            max_len = max([len(tokenize(t)) for t in texts] + [1])
        return torch.tensor([self.encode(t, max_len) for t in texts], dtype=torch.long)

    def to_dict(self) -> dict:
        return {"words": self.words[2:]}

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        return cls(d["words"])


@dataclass
class CaptionTable:
    """Encoder-ready captions and, per sample, which of them describe it.

    ``inputs[u]`` is the encoder input of distinct caption ``u``; ``sample_captions[i]``
    lists the caption ids of sample ``i`` (padded with -1); ``counts[i]`` how many.
    """

    inputs: torch.Tensor
    sample_captions: torch.Tensor
    counts: torch.Tensor

    @classmethod
    def build(cls, captions: Sequence[tuple[str, ...]], prepare: Callable[[list[str]], torch.Tensor],
              names: Sequence[str] | None = None) -> CaptionTable:
        index: dict[str, int] = {}
        rows = []
        for i, caps in enumerate(captions):
            if not caps:
                missing = sum(1 for c in captions if not c)
                raise ValueError(f"{names[i] if names else f'sample {i}'} has no caption ({missing} sample(s) lack "
                                 "one); the text modality needs a caption for every image: add the caption "
                                 "files, or train with model.modality=image")
            rows.append([index.setdefault(c, len(index)) for c in caps])
        width = max(len(r) for r in rows)
        table = torch.full((len(rows), width), -1, dtype=torch.long)
        for i, r in enumerate(rows):
            table[i, : len(r)] = torch.tensor(r)
        return cls(prepare(list(index)), table, torch.tensor([len(r) for r in rows]))

    def to(self, device: torch.device | str) -> CaptionTable:
        return CaptionTable(self.inputs.to(device), self.sample_captions.to(device), self.counts.to(device))

    def random_ids(self, samples: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One caption id per sample, uniformly among its captions."""
        counts = self.counts[samples]
        pick = (torch.rand(len(samples), device=counts.device, generator=generator) * counts).long()
        return self.sample_captions[samples, pick]

    def first_ids(self, samples: torch.Tensor) -> torch.Tensor:
        return self.sample_captions[samples, 0]
