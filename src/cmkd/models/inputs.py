"""A model's inputs from a placed dataset: images, sampled or all captions, and embeddings.

The data layer (:class:`cmkd.data.device.DeviceData`) holds images and caption tables; this
module knows which inputs a :class:`FewShotModel` needs (its modalities, its text encoder's
input) and gathers them.
"""

from __future__ import annotations

import torch

from cmkd.data.device import DeviceData, Indices
from cmkd.data.text import CaptionTable
from cmkd.models.fewshot import FewShotModel


def caption_table(data: DeviceData, model: FewShotModel) -> CaptionTable:
    """The dataset's captions as ``model``'s text-encoder inputs (built once per kind of input)."""
    encoder = model.text_encoder
    return data.caption_table(getattr(encoder, "input_key", id(encoder)), encoder.prepare)


def pick_captions(data: DeviceData, model: FewShotModel, idx: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """One caption id per sample: uniformly random when a generator is given, else the first."""
    table = caption_table(data, model)
    return table.random_ids(idx, generator) if generator is not None else table.first_ids(idx)


def text_inputs(data: DeviceData, model: FewShotModel, idx: torch.Tensor, caption_ids: torch.Tensor | None = None,
                all_captions: bool = False) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``model``'s text input for samples ``idx`` (None for an image model) and, with
    ``all_captions``, the mask over each sample's captions (their embeddings are averaged)."""
    if not model.uses_text:
        return None, None
    table = caption_table(data, model)
    if all_captions:
        return every_caption(table, idx)
    return table.inputs[caption_ids if caption_ids is not None else table.first_ids(idx)], None


def every_caption(table: CaptionTable, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every caption of samples ``idx`` as encoder inputs ``[len(idx), C, ...]`` and the mask of the real ones
    ``[len(idx), C]`` (:meth:`FewShotModel.embed` averages their embeddings)."""
    ids = table.sample_captions[idx]
    return table.inputs[ids.clamp_min(0)], ids >= 0


def embed(data: DeviceData, model: FewShotModel, idx: Indices, images: torch.Tensor | None = None,
          caption_ids: torch.Tensor | None = None, all_captions: bool = False) -> torch.Tensor:
    """``model``'s embeddings of samples ``idx``: images default to the un-augmented ones, text to
    the first caption, or with ``all_captions`` to the mean over every caption of the sample."""
    if model.uses_image and images is None:
        images = data.images_for(idx)
    text, mask = (text_inputs(data, model, data.upload(idx), caption_ids, all_captions) if model.uses_text
                  else (None, None))
    return model.embed(images if model.uses_image else None, text, mask)
