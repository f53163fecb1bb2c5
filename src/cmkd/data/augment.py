"""Transforms of image tensors: normalisation, label-preserving augmentation (run on the training device)
and the fixed low-resolution view of ``data.low_res``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def to_float(images: torch.Tensor, mean: float = 0.5, std: float = 0.5) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` -> normalised float32."""
    return normalise(images.float() / 255.0, mean, std)


def normalise(images: torch.Tensor, mean: float = 0.5, std: float = 0.5) -> torch.Tensor:
    """Float images in [0, 1] -> what the models take (mean 0.5, std 0.5 for every channel: [-1, 1])."""
    return (images - mean) / std


def random_affine(x: torch.Tensor, generator: torch.Generator | None = None, scale: float = 0.1,
                  rotate_deg: float = 10.0, shift: float = 0.08, hflip: bool = False) -> torch.Tensor:
    """One random affine warp per image (scale, rotation, shift; optional horizontal flip).

    Small warps keep a letter's identity; no flip by default (a mirrored letter is
    another letter). Sampled with ``generator`` so a run is reproducible.
    """
    b = x.shape[0]
    u = torch.rand(b, 4, device=x.device, generator=generator) * 2 - 1
    s = 1 + scale * u[:, 0]
    a = math.radians(rotate_deg) * u[:, 1]
    flip = torch.ones(b, device=x.device)
    if hflip:
        flip = torch.where(torch.rand(b, device=x.device, generator=generator) < 0.5, -flip, flip)
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = torch.cos(a) / s * flip
    theta[:, 0, 1] = -torch.sin(a) / s
    theta[:, 1, 0] = torch.sin(a) / s * flip
    theta[:, 1, 1] = torch.cos(a) / s
    theta[:, 0, 2] = shift * u[:, 2]
    theta[:, 1, 2] = shift * u[:, 3]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    background = x.amin(dim=(1, 2, 3), keepdim=True)
    return F.grid_sample(x - background, grid, align_corners=False, padding_mode="zeros") + background


def low_resolution(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` area-averaged to ``size`` x ``size`` and scaled back up (bilinear) to ``H`` x ``W``:
    the same shape, with the detail of a ``size``-pixel image."""
    h, w = images.shape[-2:]
    parts = []
    for i in range(0, len(images), chunk):
        x = F.interpolate(torch.as_tensor(images[i:i + chunk]).float(), size=(size, size), mode="area")
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        parts.append(x.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(parts)
