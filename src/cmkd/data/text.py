"""Captions: tokenizer, vocabulary (from training captions only) and the caption table.

Every sample may carry several captions (ten per CUB image). The caption table stores
each distinct caption once, already turned into encoder input (token ids, or cached
sentence embeddings), plus, per sample, the ids of its captions. Training draws one
caption per sample per episode; evaluation averages the embeddings of all of them.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cmkd.errors import DatasetError

PAD, UNK = 0, 1
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def clean_caption(text: str) -> str:
    """Drop U+FFFD replacement characters and collapse whitespace."""
    return " ".join(text.replace("\ufffd", " ").split())


def tokenize(text: str) -> list[str]:
    """Lower-cased words; punctuation and underscores separate words and are dropped (so are U+FFFD and
    runs of whitespace, which ``clean_caption`` would remove)."""
    return _WORD.findall(text.lower())


class Vocab:
    """Word -> id map built from training captions; unseen words map to ``<unk>``."""

    def __init__(self, words: Sequence[str]) -> None:
        self.words = ["<pad>", "<unk>", *[w for w in words if w not in ("<pad>", "<unk>")]]
        self.index = {w: i for i, w in enumerate(self.words)}
        self.key = hashlib.sha256("\n".join(self.words).encode()).hexdigest()  # equal vocabularies, equal keys

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> Vocab:
        """Words of ``captions`` seen at least ``min_count`` times (each distinct caption counted once
        when ``min_count`` is 1, which gives the same vocabulary faster)."""
        if min_count <= 1:
            captions = set(captions)
        counts = Counter(w for c in captions for w in tokenize(c))
        return cls(sorted(w for w, n in counts.items() if n >= min_count))

    def __len__(self) -> int:
        return len(self.words)

    def encode_batch(self, texts: Sequence[str], max_len: int | None = None) -> torch.Tensor:
        """``[len(texts), L]`` word ids, padded; ``L`` is the longest caption unless ``max_len`` is given."""
        get = self.index.get
        rows = [[get(w, UNK) for w in tokenize(t)] for t in texts]
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        width = max_len if max_len is not None else int(lengths.max(initial=1))
        out = np.full((len(rows), width), PAD, dtype=np.int64)
        out[np.arange(width) < np.minimum(lengths, width)[:, None]] = np.fromiter(
            itertools.chain.from_iterable(r[:width] for r in rows), dtype=np.int64)
        return torch.from_numpy(out)

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
                raise DatasetError(f"{names[i] if names else f'sample {i}'} has no caption ({missing} sample(s) lack "
                                 "one); the text modality needs a caption for every image: add the caption "
                                 "files, or train with model.modality=image")
            rows.append([index.setdefault(c, len(index)) for c in caps])
        counts = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        table = np.full((len(rows), int(counts.max())), -1, dtype=np.int64)
        table[np.arange(table.shape[1]) < counts[:, None]] = np.fromiter(itertools.chain.from_iterable(rows),
                                                                         dtype=np.int64, count=int(counts.sum()))
        return cls(prepare(list(index)), torch.from_numpy(table), torch.from_numpy(counts))

    def to(self, device: torch.device | str) -> CaptionTable:
        return CaptionTable(self.inputs.to(device), self.sample_captions.to(device), self.counts.to(device))

    def random_ids(self, samples: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One caption id per sample, uniformly among its captions."""
        counts = self.counts[samples]
        pick = (torch.rand(len(samples), device=counts.device, generator=generator) * counts).long()
        return self.sample_captions[samples, pick]

    def first_ids(self, samples: torch.Tensor) -> torch.Tensor:
        return self.sample_captions[samples, 0]
