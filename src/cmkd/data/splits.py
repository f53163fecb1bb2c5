"""Class splits: base / val / novel, made so that every fine-grained group lies in one split."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def split_by_group(
    groups: Sequence[str], fractions: tuple[float, float, float], seed: int, rich: int = 5
) -> dict[str, list[int]]:
    """Seeded base/val/novel split of classes in which every group lies in one split.

    Groups with at least ``rich`` classes (those that make fine-grained episodes) are
    shuffled and dealt separately from the rest, so every split gets some of them.
    """
    rng = np.random.default_rng(seed)
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    split: dict[str, list[int]] = {"base": [], "val": [], "novel": []}
    names = list(split)
    for pool in (
        sorted(g for g, m in members.items() if len(m) >= rich),
        sorted(g for g, m in members.items() if len(m) < rich),
    ):
        order = [pool[i] for i in rng.permutation(len(pool))]
        total = sum(len(members[g]) for g in order)
        targets = np.cumsum(fractions) / sum(fractions) * total
        filled = 0
        for g in order:
            k = int(np.searchsorted(targets, filled, side="right"))
            split[names[min(k, 2)]].extend(members[g])
            filled += len(members[g])
    return {k: sorted(v) for k, v in split.items()}
