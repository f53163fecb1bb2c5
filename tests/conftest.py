"""Shared fixtures: a small slice of the shipped glyph dataset and fast configs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from cmkd.config import load_config
from cmkd.data.dataset import FewShotDataset
from cmkd.data.formats.glyphs import load_glyphs

torch.set_num_threads(2)
sys.path.insert(0, str(Path(__file__).parents[1] / "tools"))  # the maintainer tools (glyph and kanji builders)


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as a module (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def subset(ds: FewShotDataset, per_split: dict[str, int], per_class: int | None = None) -> FewShotDataset:
    """The first classes of each split (whole groups kept in their split), re-indexed."""
    keep = []
    for split, n in per_split.items():
        keep += ds.split_classes(split)[:n]
    remap = {c: i for i, c in enumerate(keep)}
    labels = ds.labels.numpy()
    idx = np.flatnonzero(np.isin(labels, keep))
    if per_class is not None:
        idx = np.concatenate([idx[labels[idx] == c][:per_class] for c in keep])
    new_labels = torch.tensor([remap[int(c)] for c in labels[idx]])
    splits = {s: [remap[c] for c in ds.split_classes(s)[:n]] for s, n in per_split.items()}
    return FewShotDataset(ds.name, ds.images[idx], new_labels, [ds.class_names[c] for c in keep],
                          [ds.groups[c] for c in keep], [ds.captions[i] for i in idx], splits, ds.meta)


@pytest.fixture(scope="session")
def glyphs() -> FewShotDataset:
    return load_glyphs(32)


@pytest.fixture(scope="session")
def small(glyphs) -> FewShotDataset:
    return subset(glyphs, {"base": 120, "val": 40, "novel": 60}, per_class=24)


@pytest.fixture
def fast_cfg(tmp_path):
    def make(**overrides):
        base = {"out": str(tmp_path), "name": "run", "train.episodes": 40, "train.val_every": 20,
                "train.val_episodes": 20, "episode.query": 5, "train.threads": 2}
        base.update(overrides)
        return load_config(base=base)
    return make
