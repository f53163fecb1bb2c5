"""Scoring models on fixed evaluation episodes.

Evaluation embeds every sample of the split once (eval mode, no augmentation) and then
scores each episode from those embeddings, so hundreds of episodes cost one pass over
the split. Every method is scored on the same episode list (paired comparison). Under
``torchrun`` each rank scores a contiguous shard of the list and the per-episode results
are gathered back in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Protocol

import numpy as np
import torch

from cmkd import distributed
from cmkd.data.device import DeviceData, upload
from cmkd.data.episodes import EpisodeSampler, EpisodeSetting, episode_labels
from cmkd.models import inputs
from cmkd.models.fewshot import FewShotModel
from cmkd.runtime import autocast


def episode_list(data: DeviceData, split: str, setting: EpisodeSetting, count: int, seed: int) -> np.ndarray:
    """The fixed ``[count, way*(shot+query)]`` episodes of a split and setting."""
    ds = data.dataset
    sampler = EpisodeSampler(ds.labels, ds.split_classes(split), setting.way, setting.shot, setting.query,
                             ds.groups, setting.fine_grained, ds.class_names, split)
    return sampler.fixed(count, seed)


@torch.no_grad()
def embed_indices(model: FewShotModel, data: DeviceData, indices: np.ndarray, all_captions: bool = True,
                  precision: str = "fp32", batch: int | None = None) -> torch.Tensor:
    """Eval-mode float32 embeddings ``[len(indices), D]`` of the given samples (encoders
    run in ``precision``), ``batch`` at a time (default: 2M pixels, at most 1024 images, so
    ResNet-12 at 84 px stays within a few GB)."""
    _, h, w = data.dataset.image_shape
    batch = batch or max(1, min(1024, (1 << 21) // (h * w)))
    was_training = model.training
    model.eval()
    with autocast(precision, data.device):
        out = torch.cat([inputs.embed(data, model, indices[i:i + batch], all_captions=all_captions).float()
                         for i in range(0, len(indices), batch)])
    model.train(was_training)
    return out


class SampleEmbeddings(Protocol):
    """A model's embeddings of a fixed set of samples (``indices``, sorted), looked up by global sample index."""

    indices: np.ndarray

    def rows(self, episodes: np.ndarray) -> torch.Tensor:
        """The embeddings of ``episodes`` (an array of sample indices), shaped ``(*episodes.shape, dim)``."""
        ...


def positions(indices: np.ndarray, episodes: np.ndarray) -> np.ndarray:
    """Where each sample of ``episodes`` sits in the sorted ``indices``; KeyError for one outside them."""
    pos = np.searchsorted(indices, episodes)
    if not np.array_equal(indices[np.minimum(pos, len(indices) - 1)], episodes):
        raise KeyError("an episode uses samples that were not embedded")
    return pos


@dataclass
class Embedded:
    """Embeddings of a sorted set of samples, computed once and kept (``emb``, one row per sample)."""

    indices: np.ndarray
    emb: torch.Tensor

    def rows(self, episodes: np.ndarray) -> torch.Tensor:
        return self.emb[upload(positions(self.indices, episodes), self.emb.device)]


class EmbeddedPerLookup:
    """Embeddings of a sorted set of samples, computed at each lookup from that lookup's samples alone and not
    kept: a lookup costs only its own samples, and gives the same values whatever came before it (so a resumed run
    continues exactly as an uninterrupted one)."""

    def __init__(self, model: FewShotModel, data: DeviceData, indices: np.ndarray, all_captions: bool = True,
                 precision: str = "fp32") -> None:
        self.indices = np.unique(indices)
        self.embed = partial(embed_indices, model, data, all_captions=all_captions, precision=precision)

    def rows(self, episodes: np.ndarray) -> torch.Tensor:
        positions(self.indices, episodes)  # only samples of the set
        return self.embed(episodes.reshape(-1)).view(*episodes.shape, -1)


def embed_samples(model: FewShotModel, data: DeviceData, indices: np.ndarray,
                  all_captions: bool = True, precision: str = "fp32") -> Embedded:
    uniq = np.unique(indices)
    return Embedded(uniq, embed_indices(model, data, uniq, all_captions, precision))


@torch.no_grad()
def accuracy_per_episode(model: FewShotModel, embedded: Embedded, episodes: np.ndarray, way: int, shot: int,
                         chunk: int = 200) -> np.ndarray:
    """Accuracy on each episode (rows of global sample indices) from precomputed embeddings."""
    query = (episodes.shape[1] - way * shot) // way
    truth = episode_labels(way, query, embedded.emb.device)
    accs = []
    for i in range(0, len(episodes), chunk):
        scores = model.scores(embedded.rows(episodes[i:i + chunk]), way, shot)
        accs.append((scores.argmax(-1) == truth).float().mean(-1))
    return torch.cat(accs).cpu().numpy()


def evaluate_lists(model: FewShotModel, data: DeviceData, lists: list[np.ndarray], shapes: list[tuple[int, int]],
                   all_captions: bool = True, precision: str = "fp32") -> list[np.ndarray]:
    """Per-episode accuracies on several episode lists (``shapes`` gives each list's way and
    shot), embedding each needed sample once, in eval mode (no dropout in a head such as FEAT's).
    Sharded over ``torchrun`` ranks."""
    mine = [eps[distributed.shard(len(eps))] for eps in lists]
    needed = np.concatenate([m.ravel() for m in mine])
    was_training = model.training
    model.eval()
    try:
        embedded = embed_samples(model, data, needed, all_captions, precision) if len(needed) else None
        return [distributed.gather(accuracy_per_episode(model, embedded, m, way, shot) if embedded is not None
                                   and len(m)
                                   else np.zeros(0, dtype=np.float32))
                for m, (way, shot) in zip(mine, shapes)]
    finally:
        model.train(was_training)


def evaluate_episodes(model: FewShotModel, data: DeviceData, episodes: np.ndarray, way: int, shot: int,
                      all_captions: bool = True, precision: str = "fp32") -> np.ndarray:
    """Accuracy of ``model`` on each episode, embedding each needed sample once."""
    return evaluate_lists(model, data, [episodes], [(way, shot)], all_captions, precision)[0]
