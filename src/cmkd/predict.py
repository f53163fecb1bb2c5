"""One-shot inference: a trained student classifies new images from a few labelled examples.

    clf = OneShotClassifier.load("runs/demo/image_student_SRL")
    clf.fit(["support/a/1.png", "support/b/1.png"], ["a", "b"])
    clf.predict(["query.png"])            # -> ["a"]

Images may be paths, PIL images, numpy arrays or torch tensors, one convention for all (see
:func:`cmkd.data.images.as_image`): ``H x W``, ``H x W x C`` or ``C x H x W``, uint8 0-255 or float in
[0, 1]; a list of them, or one batch array ``[N, ...]``. Each is converted and resized like an image file.

The student needs no text. A teacher (image+text) checkpoint is refused unless a caption is
given for every image (``texts=``; on the command line, a ``<image stem>.txt`` beside it).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cmkd.checkpoint import load_model
from cmkd.data.formats.folder import class_folders
from cmkd.data.images import ImageLike, as_image, read_caption_file
from cmkd.data.text import CaptionTable
from cmkd.errors import ImageError
from cmkd.models.fewshot import FewShotModel
from cmkd.models.inputs import every_caption

Captions = str | Sequence[str]  # one caption, or several whose embeddings are averaged
Images = Sequence[ImageLike] | np.ndarray | torch.Tensor  # see cmkd.data.images.as_image for one image


class OneShotClassifier:
    """A few-shot model plus the support set it classifies against."""

    def __init__(self, model: FewShotModel, meta: dict) -> None:
        self.model, self.meta = model.eval(), meta
        self.classes: list[Any] = []
        self._support: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu",
             image_encoder: torch.nn.Module | None = None) -> OneShotClassifier:
        """The model of a run folder or checkpoint (``image_encoder``: as for :func:`cmkd.load_model`)."""
        model, meta = load_model(path, device, image_encoder=image_encoder)
        return cls(model, meta)

    @property
    def needs_text(self) -> bool:
        return self.model.uses_text

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _check_text(self, n: int, texts: Sequence[Captions] | None) -> None:
        if self.needs_text and (texts is None or len(texts) != n or any(not t for t in texts)):
            raise ValueError(f"this checkpoint sees '{self.model.cfg.modality}': it needs a caption for every "
                             "image (texts=..., or a <image stem>.txt beside each file); for captions-free "
                             "prediction use a student checkpoint")

    @torch.no_grad()
    def _embed(self, images: Images, texts: Sequence[Captions] | None) -> torch.Tensor:
        images = _image_list(images)
        self._check_text(len(images), texts)
        m = self.model
        x = None
        if m.uses_image:
            arrays = [as_image(img, m.in_channels, m.image_size) for img in images]
            x = m.preprocess(torch.from_numpy(np.stack(arrays)).to(self.device))
        if not m.uses_text or texts is None:
            return m.embed(x)
        caps = [(t,) if isinstance(t, str) else tuple(t) for t in texts]  # several captions: mean embedding
        table = CaptionTable.build(caps, m.text_encoder.prepare).to(self.device)
        text, mask = every_caption(table, torch.arange(len(caps), device=self.device))
        return m.embed(x, text, mask)

    def fit(self, images: Images, labels: Sequence[Hashable],
            texts: Sequence[Captions] | None = None) -> OneShotClassifier:
        """Set the support set: one or more labelled images per class, at least two classes."""
        images = _image_list(images)
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} support images but {len(labels)} labels")
        self.classes = sorted(set(labels))
        if len(self.classes) < 2:
            raise ValueError(f"the support set has {len(self.classes)} class(es); one-shot classification needs "
                             "at least 2 (one folder per class)")
        self._support = self._embed(images, texts)
        self._labels = torch.tensor([self.classes.index(lab) for lab in labels], device=self.device)
        return self

    @torch.no_grad()
    def predict_proba(self, images: Images,
                      texts: Sequence[Captions] | None = None) -> np.ndarray:
        """``[len(images), len(classes)]`` class probabilities (softmax of the head's scores)."""
        if self._support is None or self._labels is None:
            raise RuntimeError("call fit(support_images, labels) before predicting")
        query = self._embed(images, texts)
        scores = self.model.head(self._support[None], self._labels[None], query[None], len(self.classes))[0]
        return torch.softmax(scores.float(), -1).cpu().numpy()

    def predict(self, images: Images, texts: Sequence[Captions] | None = None) -> list[Any]:
        return [self.classes[i] for i in self.predict_proba(images, texts).argmax(1)]


def _image_list(images: Images) -> list[ImageLike]:
    """A list of images, or a batch array/tensor ``[N, ...]`` split into its images."""
    if isinstance(images, str | Path | Image.Image):
        raise TypeError("pass a list of images (one image: [image])")
    if hasattr(images, "shape") and len(images.shape) != 4:
        raise TypeError(f"a batch of images as one array must be [N, H, W, C] or [N, C, H, W], got shape "
                        f"{tuple(images.shape)}; one image: [image]")
    return list(images)


def read_support_folder(root: str | Path) -> tuple[list[Path], list[str]]:
    """``root/<class>/<image>`` -> image paths and class names (caption ``.txt`` files skipped)."""
    root = Path(root)
    dirs = class_folders(root)
    paths, labels = [], []
    for d in dirs:
        files = [f for f in sorted(d.iterdir()) if f.is_file() and not f.name.startswith(".")
                 and f.suffix.lower() != ".txt"]
        if not files:
            raise ImageError(f"class folder {d} has no images; add at least one or remove the folder")
        paths += files
        labels += [d.name] * len(files)
    if len({*labels}) < 2:
        raise ImageError(f"{root} holds {len({*labels})} class folder(s); one-shot classification needs at least 2")
    return paths, labels


def captions_beside(path: Path) -> list[str]:
    """The captions (one per line) in ``<image stem>.txt`` next to an image; [] when absent."""
    txt = path.with_suffix(".txt")
    return read_caption_file(txt) if txt.exists() else []
