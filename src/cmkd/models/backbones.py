"""Image backbones."""

from __future__ import annotations

import torch
from torch import nn


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True), nn.MaxPool2d(2))


class Conv4(nn.Module):
    """Conv-4 of Vinyals et al. 2016 / Snell et al. 2017: 4 x [conv3x3 64, BN, ReLU, maxpool 2].

    Gives the flattened final map: 1600-d at 84x84, 256-d at 32x32.
    """

    def __init__(self, in_channels: int = 3, hidden: int = 64, image_size: int = 84) -> None:
        super().__init__()
        self.encoder = nn.Sequential(*[conv_block(in_channels if i == 0 else hidden, hidden) for i in range(4)])
        side = image_size
        for _ in range(4):
            side //= 2
        if side < 1:
            raise ValueError(f"Conv-4 needs images of at least 16x16, got {image_size}")
        self.out_dim = hidden * side * side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).flatten(1)


def build_backbone(name: str, in_channels: int, image_size: int) -> nn.Module:
    if name == "conv4":
        return Conv4(in_channels, image_size=image_size)
    raise ValueError(f"unknown backbone '{name}'; available: conv4")
