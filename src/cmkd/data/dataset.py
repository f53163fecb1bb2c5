"""The in-memory few-shot dataset: one uint8 image tensor, labels, captions and splits."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cmkd.config import SPLITS
from cmkd.data.images import ImageLike, as_image
from cmkd.data.splits import split_by_group
from cmkd.data.text import CaptionTable, Vocab
from cmkd.errors import DatasetError


def plain_label(value: Any) -> Hashable:
    """A label as a plain hashable (a 0-d tensor or numpy scalar -> a Python number)."""
    return value.item() if hasattr(value, "item") else value


@dataclass
class FewShotDataset:
    """Every sample of a dataset, held as tensors that move to the training device once.

    ``images`` is uint8 ``[N, C, H, W]``; ``labels`` int64 ``[N]`` (global class index);
    ``captions[i]`` the text descriptions of sample ``i`` (ten per image for CUB and for
    the glyphs' generated descriptions); ``groups[c]`` the fine-grained group of class ``c``;
    ``splits`` maps 'base'/'val'/'novel' to class indices.

    What is derived from the content (digest, base vocabulary, caption tables) is computed once per
    dataset object: treat a dataset as read-only and make a changed one with :func:`dataclasses.replace`.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    groups: list[str]
    captions: list[tuple[str, ...]]
    splits: dict[str, list[int]]
    meta: dict = field(default_factory=dict)
    files: list[str] | None = None  # where each sample came from, for messages
    _digest: str | None = field(default=None, init=False, repr=False, compare=False)
    _vocab: Vocab | None = field(default=None, init=False, repr=False, compare=False)
    _tables: dict[str, CaptionTable] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DatasetError(f"{self.name}: images must be uint8 [N, C, H, W], got {tuple(self.images.shape)} "
                             f"{self.images.dtype}")
        if len(self.images) != n or len(self.captions) != n:
            raise DatasetError(f"{self.name}: {len(self.images)} images, {n} labels and {len(self.captions)} "
                             "caption lists must match")
        if len(self.groups) != len(self.class_names):
            raise DatasetError(f"{self.name}: one group per class expected")
        for split, classes in self.splits.items():
            bad = [c for c in classes if not 0 <= c < len(self.class_names)]
            if bad:
                raise DatasetError(f"{self.name}: split '{split}' names unknown class indices {bad[:5]}")

    @classmethod
    def from_samples(cls, images: Sequence[ImageLike], labels: Sequence[Hashable],
                     captions: Sequence[str | Sequence[str]] | None = None, *, name: str = "samples",
                     size: int = 84, channels: int = 3, groups: Mapping[Hashable, str] | None = None,
                     splits: Mapping[Hashable, str] | None = None, seed: int = 0) -> FewShotDataset:
        """A dataset from images in memory or on disk (anything :func:`cmkd.data.images.as_image` takes), their
        labels (any sortable values; classes in ascending order) and captions (one or several per image).

        ``groups`` maps a label to its fine-grained group (default: its own); ``splits`` a label to
        base/val/novel (default: seeded fractions 0.6/0.2/0.2, whole groups at a time)."""
        if len(images) != len(labels) or (captions is not None and len(captions) != len(images)):
            given = len(captions) if captions is not None else "no"
            raise DatasetError(f"{name}: {len(images)} images, {len(labels)} labels and {given} captions; give one "
                               "of each per image")
        classes: list[Any] = sorted(set(labels))
        index = {c: k for k, c in enumerate(classes)}
        group = [str((groups or {}).get(c, c)) for c in classes]
        if splits is None:
            split_of = split_by_group(group, (0.6, 0.2, 0.2), seed)
        else:
            unknown = sorted({str(v) for v in splits.values()} - set(SPLITS))
            missing = [c for c in classes if c not in splits]
            if unknown or missing:
                raise DatasetError(f"{name}: splits must map every label to one of {', '.join(SPLITS)} (unknown "
                                   f"splits {unknown[:3]}, labels without a split {missing[:3]})")
            split_of = {s: [index[c] for c in classes if splits[c] == s] for s in SPLITS}
        caps: list[tuple[str, ...]] = ([(c,) if isinstance(c, str) else tuple(c) for c in captions]
                                       if captions is not None else [()] * len(images))
        arrays = np.stack([as_image(img, channels, size) for img in images])
        return cls(name, torch.from_numpy(arrays), torch.tensor([index[c] for c in labels]),
                   [str(c) for c in classes], group, caps, split_of, meta={"source": "samples"})

    @classmethod
    def from_torch(cls, dataset: Any, captions: Sequence[str | Sequence[str]] | None = None,
                   **options: Any) -> FewShotDataset:
        """A dataset from a map-style torch ``Dataset`` whose items are ``(image, label)`` (or ``(image, label,
        captions)``); ``options`` as for :meth:`from_samples`."""
        items = [dataset[i] for i in range(len(dataset))]
        if captions is None and items and len(items[0]) > 2:
            captions = [item[2] for item in items]
        labels = [plain_label(item[1]) for item in items]
        return cls.from_samples([item[0] for item in items], labels, captions, **options)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """Sample ``i`` as (uint8 image ``[C, H, W]``, class index): a map-style torch dataset."""
        return self.images[i], int(self.labels[i])

    @property
    def targets(self) -> list[int]:
        """The class index of every sample (what :class:`cmkd.EpisodeBatchSampler` reads)."""
        return self.labels.tolist()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def split_classes(self, split: str) -> list[int]:
        if split not in self.splits:
            raise KeyError(f"{self.name} has no split '{split}'; it has {', '.join(self.splits)}")
        return self.splits[split]

    def split_indices(self, split: str) -> np.ndarray:
        """Sample indices of the classes of a split, ascending."""
        mask = np.isin(self.labels.numpy(), self.split_classes(split))
        return np.flatnonzero(mask)

    def base_vocabulary(self) -> Vocab:
        """The words of the base split's captions: what a text model may learn (val and novel text unseen)."""
        if self._vocab is None:
            base = set(self.split_classes("base"))
            labels = self.labels.tolist()
            self._vocab = Vocab.build(c for i, caps in enumerate(self.captions) if labels[i] in base for c in caps)
        return self._vocab

    def caption_table(self, key: str, prepare: Callable[[list[str]], torch.Tensor]) -> CaptionTable:
        """The captions turned into encoder inputs by ``prepare``, built once per ``key`` (encoders with equal
        keys take equal inputs) and kept for the next model on this dataset; the last two kinds are kept."""
        if key not in self._tables:
            if len(self._tables) >= 2:
                del self._tables[next(iter(self._tables))]
            self._tables[key] = CaptionTable.build(self.captions, prepare, self.files)
        return self._tables[key]

    def with_class_name_captions(self) -> FewShotDataset:
        """A copy whose only caption per sample is its class name ("001.Black_footed_Albatross" ->
        "black footed albatross"): text that names the class, the oracle setting."""
        names = [re.sub(r"^\d+[.\s_-]*", "", n).replace("_", " ").lower() for n in self.class_names]
        return dataclasses.replace(self, captions=[(names[c],) for c in self.labels.tolist()],
                                   meta={**self.meta, "captions": "class names"})

    def content_digest(self) -> str:
        """SHA-256 of what a model learns from: classes, splits, labels, captions and every image's pixels.
        Stored in checkpoints, so a dataset re-prepared with other content under the same name is noticed.
        Computed once per dataset object (treat a dataset as read-only)."""
        if self._digest is not None:
            return self._digest
        h = hashlib.sha256()
        h.update(json.dumps([self.class_names, self.groups, self.splits, self.captions]).encode())
        h.update(np.ascontiguousarray(self.labels.numpy()).data)
        images = np.ascontiguousarray(self.images.numpy())
        for start in range(0, len(images), 4096):
            h.update(images[start:start + 4096].data)
        self._digest = h.hexdigest()
        return self._digest

    def summary(self) -> dict:
        counts = np.bincount(self.labels.numpy(), minlength=self.num_classes)
        captioned = sum(1 for c in self.captions if c)
        return {
            "name": self.name,
            "classes": self.num_classes,
            "images": len(self.labels),
            "image_shape": list(self.image_shape),
            "images_per_class": {"min": int(counts.min()), "median": float(np.median(counts)),
                                 "max": int(counts.max())},
            "groups": len(set(self.groups)),
            "splits": {k: len(v) for k, v in self.splits.items()},
            "captioned_images": captioned,
            "caption_coverage": captioned / max(len(self.captions), 1),
        }
