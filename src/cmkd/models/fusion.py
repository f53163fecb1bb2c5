"""Fusion of image and text embeddings into the teacher's embedding (:data:`cmkd.registry.FUSIONS`)."""

from __future__ import annotations

import torch
from torch import nn


class ConcatFusion(nn.Module):
    """Concatenation followed by a two-layer MLP."""

    def __init__(self, image_dim: int, text_dim: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(image_dim + text_dim, out_dim), nn.ReLU(inplace=True),
                                 nn.Linear(out_dim, out_dim))
        self.out_dim = out_dim

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([image, text], dim=-1))


class GatedFusion(nn.Module):
    """Gated sum: ``g * W_i image + (1 - g) * W_t text`` with a per-feature gate ``g``."""

    def __init__(self, image_dim: int, text_dim: int, out_dim: int) -> None:
        super().__init__()
        self.image = nn.Linear(image_dim, out_dim)
        self.text = nn.Linear(text_dim, out_dim)
        self.gate = nn.Linear(image_dim + text_dim, out_dim)
        self.out_dim = out_dim

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(torch.cat([image, text], dim=-1)))
        return g * self.image(image) + (1 - g) * self.text(text)


class LateFusion(nn.Module):
    """Both embeddings side by side, each scaled by a learned positive weight: for a distance
    head the squared distance is then ``w_i^2 d_image^2 + w_t^2 d_text^2``, a late fusion of
    the two modalities' relation scores (each modality keeps its own space)."""

    def __init__(self, image_dim: int, text_dim: int, out_dim: int | None = None) -> None:
        super().__init__()  # out_dim: the width is image_dim + text_dim, whatever is asked
        self.log_scale = nn.Parameter(torch.zeros(2))
        self.out_dim = image_dim + text_dim

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        w = self.log_scale.exp()
        return torch.cat([w[0] * image, w[1] * text], dim=-1)


class MapFusion(nn.Module):
    """Text joins a feature map (for RelationNet): a projection of the text embedding is tiled
    over the spatial grid, concatenated to the map's channels and mixed by a 1x1 convolution."""

    def __init__(self, map_shape: tuple[int, int, int], text_dim: int, text_channels: int = 64) -> None:
        super().__init__()
        c, _, _ = map_shape
        self.map_shape = map_shape
        self.proj = nn.Linear(text_dim, text_channels)
        self.mix = nn.Sequential(nn.Conv2d(c + text_channels, c, 1), nn.BatchNorm2d(c), nn.ReLU(inplace=True))

    def forward(self, image_map: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        _, h, w = self.map_shape
        tiled = self.proj(text)[:, :, None, None].expand(-1, -1, h, w)
        return self.mix(torch.cat([image_map, tiled], 1))
