"""The embedded glyph dataset: Unicode letters rendered from real fonts (ships with cmkd).

The text of a glyph is ten generated descriptions of that image (:mod:`glyph_text`): each
names a random subset of what the Unicode database says about the letter and of its font
face, and may leave out the detail that separates sibling classes, as crowd-sourced CUB
captions do. ``captions="names"`` gives the Unicode character name instead ("LATIN SMALL
LETTER E WITH CIRCUMFLEX AND ACUTE"), which names exactly that detail: an oracle.
Built by ``tools/glyph_builder.py`` (a maintainer tool of the source repository, not in this package); see
``glyphs/ATTRIBUTION.md``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from cmkd.data.dataset import FewShotDataset
from cmkd.data.formats.glyph_text import decode_captions
from cmkd.errors import DatasetError


def glyph_dir() -> Path:
    return Path(str(resources.files("cmkd.data") / "glyphs"))


@lru_cache(maxsize=1)
def glyph_manifest() -> dict:
    path = glyph_dir() / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the glyph dataset did not install with cmkd; "
                                "reinstall with `pip install -e .` from the repository")
    return json.loads(path.read_text())


@lru_cache(maxsize=2)
def load_glyphs(size: int = 32, captions: str = "dataset") -> FewShotDataset:
    """The glyph dataset at ``size`` x ``size`` (a shipped size), one grey channel, with the
    generated per-image descriptions (``captions="dataset"``) or the Unicode names (``"names"``).

    Cached per process: treat the returned dataset as read-only."""
    manifest = glyph_manifest()
    if size not in manifest["sizes"]:
        raise DatasetError(f"glyphs ship at sizes {manifest['sizes']}, not {size}; set data.image_size "
                         f"to one of them")
    with np.load(glyph_dir() / f"glyphs{size}.npz") as arrays:
        images = torch.from_numpy(arrays["images"]).unsqueeze(1)
        labels = torch.from_numpy(arrays["labels"].astype(np.int64))
    classes = manifest["classes"]
    if captions == "names":
        names = [c["name"] for c in classes]
        texts: list[tuple[str, ...]] = [(names[int(c)],) for c in labels]
    else:
        with np.load(glyph_dir() / manifest["descriptions"]["file"]) as arrays:
            texts = decode_captions(arrays)
    return FewShotDataset(
        name="glyphs",
        images=images,
        labels=labels,
        class_names=[f"{c['codepoint']} {c['char']}" for c in classes],
        groups=[c["group"] for c in classes],
        captions=texts,
        splits={k: list(v) for k, v in manifest["splits"].items()},
        meta={"source": "cmkd embedded glyphs", "unicode_version": manifest["unicode_version"],
              "split_seed": manifest["seed"], "image_size": size, "channels": 1,
              "captions": "Unicode names" if captions == "names" else "generated descriptions"},
    )
