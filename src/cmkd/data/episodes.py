"""Episodes: N-way K-shot Q-query tasks drawn from the classes of one split.

Every episode is a pure function of ``(seed, index)``, so training resumes on the same
stream after a kill, and a fixed evaluation list is the same for every method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cmkd.errors import ConfigError


@dataclass(frozen=True)
class EpisodeSetting:
    """The shape of evaluation episodes: ``way`` classes, ``shot`` support and ``query`` queries per class,
    all classes from one group when ``fine_grained``."""

    way: int
    shot: int
    query: int
    fine_grained: bool = False

    def label(self) -> str:
        return f"{self.way}-way {self.shot}-shot{' fine-grained' if self.fine_grained else ''}"


@dataclass(frozen=True)
class Episode:
    """Sample indices of one episode: the support (class-major), then the query (class-major).

    Episode-local labels are implicit: support sample ``i`` has label ``i // shot``, query
    sample ``j`` has label ``j // query``.
    """

    way: int
    shot: int
    query: int
    indices: np.ndarray
    classes: np.ndarray


def episode_labels(way: int, per_class: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Class-major episode-local labels: ``[0]*per_class + [1]*per_class + ...``."""
    return torch.arange(way, device=device).repeat_interleave(per_class)


def local_labels(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Any integer support labels ``[E, S]`` (any values, any order) -> episode-local labels ``[E, S]`` and the
    number of classes per episode ``[E]``. Label ``c`` is the ``c``-th smallest distinct value of its episode,
    so class columns come in ascending label order. Pure tensor ops (no ``unique``): exports to ONNX."""
    same = labels.unsqueeze(-1) == labels.unsqueeze(-2)  # [E, S, S]
    first = ~same.tril(-1).any(-1)  # no earlier sample shares the value
    smaller = labels.unsqueeze(-1) > labels.unsqueeze(-2)
    return (smaller & first.unsqueeze(-2)).sum(-1), first.sum(-1)


_RANDOM_INSTEAD = ("draw random episodes (train.fine_grained_share=0 for training, train.val_fine_grained=false for "
                   "validation, cmkd evaluate without --fine-grained)")


class EpisodeSampler:
    """Draws episodes from the classes of one split.

    With ``fine_grained=True`` all ``way`` classes of an episode come from one group (for
    glyphs: one base letter; for CUB: one bird type), among groups with ``>= way`` classes.
    """

    def __init__(self, labels: np.ndarray | torch.Tensor, classes: Sequence[int], way: int, shot: int,
                 query: int, groups: Sequence[str] | None = None, fine_grained: bool = False,
                 class_names: Sequence[str] | None = None, split: str = "split") -> None:
        labels = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        self.way, self.shot, self.query, self.fine_grained = way, shot, query, fine_grained
        self.classes = np.asarray(sorted(classes))
        names = class_names or [str(c) for c in range(int(labels.max()) + 1 if len(labels) else 0)]
        if way < 2:
            raise ConfigError(f"way must be at least 2, got {way}")
        if shot < 1 or query < 1:
            raise ConfigError(f"shot and query must be at least 1, got shot={shot}, query={query}")
        if way > len(self.classes):
            raise ConfigError(f"way={way} is larger than the {len(self.classes)} classes of the {split} split; "
                             f"lower way to at most {len(self.classes)}")
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(int(labels.max()) + 2 if len(labels) else 1))
        self.pools = {int(c): order[bounds[c]:bounds[c + 1]] for c in self.classes}
        need = shot + query
        short = [(names[c], len(p)) for c, p in self.pools.items() if len(p) < need]
        if short:
            listed = ", ".join(f"'{n}' ({k} images)" for n, k in short[:5])
            raise ConfigError(f"shot+query={need} but {len(short)} class(es) of the {split} split have fewer "
                             f"images: {listed}{' ...' if len(short) > 5 else ''}; lower the shot or the queries "
                             "(training: episode.shot, episode.query; validation: train.val_query; cmkd evaluate: "
                             "--shots, --query)")
        self.group_classes: list[np.ndarray] = []
        if fine_grained:
            if groups is None:
                raise ConfigError("fine-grained episodes need class groups and this dataset has none; "
                                  f"{_RANDOM_INSTEAD}")
            by_group: dict[str, list[int]] = {}
            for c in self.classes:
                by_group.setdefault(groups[c], []).append(int(c))
            self.group_classes = [np.array(v) for _, v in sorted(by_group.items()) if len(v) >= way]
            if not self.group_classes:
                raise ConfigError(f"no group of the {split} split has {way} classes for fine-grained "
                                 f"{way}-way episodes; lower way or {_RANDOM_INSTEAD}")

    def sample(self, rng: np.random.Generator) -> Episode:
        if self.fine_grained:
            pool = self.group_classes[rng.integers(len(self.group_classes))]
            chosen = rng.choice(pool, self.way, replace=False)
        else:
            chosen = rng.choice(self.classes, self.way, replace=False)
        picks = np.stack([rng.choice(self.pools[int(c)], self.shot + self.query, replace=False)
                          for c in chosen])
        indices = np.concatenate([picks[:, : self.shot].ravel(), picks[:, self.shot:].ravel()])
        return Episode(self.way, self.shot, self.query, indices, chosen)

    def episode(self, seed: int, index: int) -> Episode:
        """The ``index``-th episode of the stream ``seed`` (independent of any other call)."""
        return self.sample(np.random.default_rng([seed, index]))

    def batch(self, seed: int, start: int, count: int) -> np.ndarray:
        """Indices of episodes ``start .. start+count-1`` as ``[count, way * (shot + query)]``."""
        return np.stack([self.episode(seed, start + i).indices for i in range(count)])

    def fixed(self, count: int, seed: int) -> np.ndarray:
        """A fixed, seeded list of episodes for evaluation: ``[count, way * (shot + query)]``."""
        return self.batch(seed, 0, count)
