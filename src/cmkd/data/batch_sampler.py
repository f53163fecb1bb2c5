"""Few-shot episodes for a torch ``DataLoader`` over any map-style dataset.

    sampler = EpisodeBatchSampler(dataset, way=5, shot=1, query=15, episodes=100)
    for images, labels in DataLoader(dataset, batch_sampler=sampler):
        support, query = sampler.split(images)
        support_labels, query_labels = sampler.split(labels)
        logits = model(support, support_labels, query)     # [way * query, way]

Each batch is one episode: ``way * shot`` support indices, class after class, then ``way * query``
query indices in the same class order. Episodes are a pure function of ``(seed, epoch, index)``,
as in :class:`cmkd.data.episodes.EpisodeSampler`, so a run is reproducible and resumable.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import Sampler

from cmkd.data.dataset import plain_label
from cmkd.data.episodes import EpisodeSampler

T = TypeVar("T")


class EpisodeBatchSampler(Sampler[list[int]]):
    """A batch sampler yielding the dataset indices of one episode per batch.

    ``labels``: the label of every item (any hashable, sortable values), or the dataset itself, whose
    ``targets`` attribute is read when it has one and otherwise ``dataset[i][1]`` for every item.
    ``classes``: the label values episodes draw from (default: all). ``set_epoch(e)`` moves to another
    fixed stream of episodes, as :class:`torch.utils.data.DistributedSampler` does.
    """

    def __init__(self, labels: Sequence[Hashable] | Any, way: int, shot: int, query: int, episodes: int,
                 seed: int = 0, classes: Sequence[Hashable] | None = None) -> None:
        values = _labels_of(labels)
        names: list[Any] = sorted(set(values))
        index = {v: k for k, v in enumerate(names)}
        chosen = names if classes is None else list(classes)
        unknown = [c for c in chosen if c not in index]
        if unknown:
            raise ValueError(f"classes {unknown[:5]} have no items; the labels hold {names[:10]}")
        if episodes < 1:
            raise ValueError(f"episodes must be at least 1, got {episodes}")
        self.episodes, self.seed, self.epoch = episodes, seed, 0
        self.way, self.shot, self.query = way, shot, query
        self._sampler = EpisodeSampler(np.array([index[v] for v in values]), [index[c] for c in chosen], way, shot,
                                       query, class_names=[str(n) for n in names], split="dataset")

    def __len__(self) -> int:
        return self.episodes

    def __iter__(self) -> Iterator[list[int]]:
        for i in range(self.episodes):
            yield self._sampler.episode(self.seed, self.epoch * self.episodes + i).indices.tolist()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def split(self, batch: T) -> tuple[T, T]:
        """An episode's collated batch (a tensor or a list with one entry per item) -> (support, query)."""
        n = self.way * self.shot
        return batch[:n], batch[n:]  # type: ignore[index]


def _labels_of(labels: Any) -> list[Hashable]:
    if hasattr(labels, "__getitem__") and hasattr(labels, "__len__") and not isinstance(labels, np.ndarray | list |
                                                                                          tuple | torch.Tensor):
        targets = getattr(labels, "targets", None)
        if targets is None:
            return [plain_label(labels[i][1]) for i in range(len(labels))]
        labels = targets
    return [plain_label(v) for v in labels]
