"""Which episodes each training step draws: a pure function of the seed, the step and the rank.

Step ``t`` of rank ``r`` of ``W`` takes slot ``t * W + r`` of the run's seeded stream, so a resumed
run draws what an uninterrupted one would, ranks draw different episodes, and a one-process run
is the same at any world size of one.
"""

from __future__ import annotations

import math

import numpy as np

from cmkd.config import Config
from cmkd.data.dataset import FewShotDataset
from cmkd.data.episodes import EpisodeSampler
from cmkd.distributed import Ranks
from cmkd.runtime import seed_for


class EpisodeSchedule:
    """The training episodes of a run: ``indices(step)`` is ``[episodes_per_step, way * (shot + query)]``
    global sample indices (support first, class-ordered), drawn fine-grained in a
    ``train.fine_grained_share`` of the steps."""

    def __init__(self, cfg: Config, dataset: FewShotDataset, ranks: Ranks) -> None:
        e, self.train, self.ranks = cfg.episode, cfg.train, ranks
        modes = (False, True) if cfg.train.fine_grained_share > 0 else (False,)  # random, then fine-grained
        self.samplers = [EpisodeSampler(dataset.labels, dataset.split_classes("base"), e.way, e.shot, e.query,
                                        dataset.groups, fine, dataset.class_names, "base") for fine in modes]
        self.steps = math.ceil(cfg.train.episodes / (cfg.train.episodes_per_step * ranks.world))

    def slot(self, step: int) -> int:
        """Where this rank's draws of ``step`` sit in the seeded stream (``step`` for one process)."""
        return step * self.ranks.world + self.ranks.rank

    def seed(self, step: int) -> int:
        """The seed of ``step``'s other draws (augmentation, captions, dropout)."""
        return seed_for(self.train.seed, "step", self.slot(step))

    def episodes(self, step: int) -> int:
        """Training episodes done after ``step`` steps (over all ranks)."""
        return step * self.train.episodes_per_step * self.ranks.world

    def fine(self, step: int) -> bool:
        """Whether ``step``'s episodes are fine-grained (all classes of each from one group)."""
        t = self.train
        return len(self.samplers) > 1 and \
            np.random.default_rng(seed_for(t.seed, "episode kind", self.slot(step))).random() < t.fine_grained_share

    def indices(self, step: int) -> np.ndarray:
        t = self.train
        return self.samplers[int(self.fine(step))].batch(seed_for(t.seed, "episodes"),
                                                         self.slot(step) * t.episodes_per_step, t.episodes_per_step)
