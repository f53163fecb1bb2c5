"""Class splits: base / val / novel, made so that every fine-grained group lies in one split."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cmkd.config import SPLITS
from cmkd.errors import DatasetError


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


def read_json_object(path: Path, what: str) -> dict:
    """A JSON file that must hold one object (``what`` says what it maps, for the message)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path} is not valid JSON ({err}); it should map {what}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path} must hold a JSON object mapping {what}, got {type(data).__name__}")
    return data


def check_splits(data: dict, path: Path) -> dict[str, list[str]]:
    """``{"base": [class, ...], "val": [...], "novel": [...]}``, every name a string."""
    out = {}
    for split, names in data.items():
        if split not in SPLITS:
            raise DatasetError(f"{path}: unknown split {split!r}; use {', '.join(SPLITS)}")
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise DatasetError(f"{path}: split {split!r} must be a list of class names (strings), got {names!r:.80}")
        out[split] = list(names)
    return out


def check_groups(data: dict, path: Path) -> dict[str, str]:
    """``{class: group}`` with every group a non-empty string."""
    for cls, group in data.items():
        if not isinstance(group, str) or not group.strip():
            raise DatasetError(f"{path}: the group of class {cls!r} must be a non-empty string, got {group!r:.80}")
    return dict(data)


def read_split_file(path: str | Path) -> dict[str, list[str]]:
    """Class splits from JSON ``{"base": [...], "val": [...], "novel": [...]}`` or CSV rows ``class,split``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"split file {path} does not exist")
    if path.suffix.lower() == ".json":
        return check_splits(read_json_object(path, '"base"/"val"/"novel" to lists of class names'), path)
    splits: dict[str, list[str]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            if len(row) >= 2 and row[0] != "class":
                splits.setdefault(row[1].strip(), []).append(row[0].strip())
    return check_splits(splits, path)
