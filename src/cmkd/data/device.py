"""A dataset resident on the training device, and the model inputs gathered from it.

Images stay uint8 on the device; an episode is an index tensor; gathering, converting and
augmenting happen there (DESIGN.md, speed model). Captions are turned into each model's
encoder input once and kept on the device too.
"""

from __future__ import annotations

import torch

from cmkd.data.augment import random_affine, to_float
from cmkd.data.dataset import FewShotDataset
from cmkd.data.text import CaptionTable


class DeviceData:
    """``dataset`` on ``device``: uint8 images, labels, and per-text-encoder caption tables."""

    def __init__(self, dataset: FewShotDataset, device: torch.device | str = "cpu") -> None:
        self.dataset = dataset
        self.device = torch.device(device)
        self.images = dataset.images.to(self.device)
        self.labels = dataset.labels.to(self.device)
        self._tables: dict[int, CaptionTable] = {}

    def caption_table(self, model: torch.nn.Module) -> CaptionTable:
        """Captions prepared for ``model``'s text encoder (built once per encoder)."""
        encoder = model.text_encoder
        key = id(encoder)
        if key not in self._tables:
            self._tables[key] = CaptionTable.build(self.dataset.captions, encoder.prepare,
                                                   self.dataset.files).to(self.device)
        return self._tables[key]

    def images_for(self, idx: torch.Tensor, augment: bool = False, generator: torch.Generator | None = None,
                   hflip: bool = False) -> torch.Tensor:
        x = to_float(self.images[idx])
        return random_affine(x, generator, hflip=hflip) if augment else x

    def pick_captions(self, model: torch.nn.Module, idx: torch.Tensor,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """One caption id per sample: random when a generator is given, else the first."""
        table = self.caption_table(model)
        return table.random_ids(idx, generator) if generator is not None else table.first_ids(idx)

    def embed(self, model: torch.nn.Module, idx: torch.Tensor, images: torch.Tensor | None = None,
              caption_ids: torch.Tensor | None = None, all_captions: bool = False) -> torch.Tensor:
        """``model``'s embeddings of samples ``idx``.

        Images default to the un-augmented ones; text to the first caption, or with
        ``all_captions`` to the mean over every caption of the sample.
        """
        if model.uses_image and images is None:
            images = self.images_for(idx)
        text = mask = None
        if model.uses_text:
            table = self.caption_table(model)
            if all_captions:
                ids = table.sample_captions[idx]
                mask = ids >= 0
                text = table.inputs[ids.clamp_min(0)]
            else:
                text = table.inputs[caption_ids if caption_ids is not None else table.first_ids(idx)]
        return model.embed(images if model.uses_image else None, text, mask)
