"""The embedded glyph dataset: Unicode letters rendered from real fonts (ships with cmkd).

The text modality of a glyph is its Unicode character name, e.g. "LATIN SMALL LETTER E
WITH CIRCUMFLEX AND ACUTE": it names exactly the detail that separates sibling classes.
Built by :mod:`cmkd.data.formats.glyph_builder`; see ``glyphs/ATTRIBUTION.md``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from cmkd.data.dataset import FewShotDataset


def glyph_dir() -> Path:
    return Path(str(resources.files("cmkd.data") / "glyphs"))


@lru_cache(maxsize=1)
def glyph_manifest() -> dict:
    path = glyph_dir() / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the glyph dataset did not install with cmkd; "
                                "reinstall with `pip install -e .` from the repository")
    return json.loads(path.read_text())


def load_glyphs(size: int = 32) -> FewShotDataset:
    """The glyph dataset at ``size`` x ``size`` (a shipped size), one grey channel."""
    manifest = glyph_manifest()
    if size not in manifest["sizes"]:
        raise ValueError(f"glyphs ship at sizes {manifest['sizes']}, not {size}; set data.image_size "
                         f"to one of them")
    with np.load(glyph_dir() / f"glyphs{size}.npz") as arrays:
        images = torch.from_numpy(arrays["images"]).unsqueeze(1)
        labels = torch.from_numpy(arrays["labels"].astype(np.int64))
    classes = manifest["classes"]
    names = [c["name"] for c in classes]
    captions = [(names[int(c)],) for c in labels]
    return FewShotDataset(
        name="glyphs",
        images=images,
        labels=labels,
        class_names=[f"{c['codepoint']} {c['char']}" for c in classes],
        groups=[c["group"] for c in classes],
        captions=captions,
        splits={k: list(v) for k, v in manifest["splits"].items()},
        meta={"source": "cmkd embedded glyphs", "unicode_version": manifest["unicode_version"],
              "split_seed": manifest["seed"], "image_size": size, "channels": 1},
    )
