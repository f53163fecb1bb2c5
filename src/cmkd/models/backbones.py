"""Image backbones: Conv-4, ResNet-12 and ResNet-18 (named in :data:`cmkd.registry.BACKBONES`).

Every backbone is built from ``in_channels``, ``image_size`` and ``dropblock`` (used by
ResNet-12 only) and has ``out_dim`` (the vector width), ``map_shape``, ``forward(x) -> [B,
out_dim]`` and ``feature_map(x) -> [B, C, h, w]`` (for heads that compare maps: RelationNet).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cmkd.errors import ConfigError


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True), nn.MaxPool2d(2))


class Conv4(nn.Module):
    """Conv-4 of Vinyals et al. 2016 / Snell et al. 2017: 4 x [conv3x3 64, BN, ReLU, maxpool 2].

    Gives the flattened final map: 1600-d at 84x84, 256-d at 32x32.
    """

    def __init__(self, in_channels: int = 3, image_size: int = 84, dropblock: float = 0.0, hidden: int = 64) -> None:
        super().__init__()
        self.encoder = nn.Sequential(*[conv_block(in_channels if i == 0 else hidden, hidden) for i in range(4)])
        side = image_size // 16
        if side < 1:
            raise ConfigError(f"data.image_size={image_size}: Conv-4 needs images of at least 16x16")
        self.map_shape = (hidden, side, side)
        self.out_dim = hidden * side * side

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).flatten(1)


class DropBlock(nn.Module):
    """DropBlock (Ghiasi et al., NeurIPS 2018): drops contiguous square regions of a map."""

    def __init__(self, drop_rate: float = 0.1, block_size: int = 5) -> None:
        super().__init__()
        self.drop_rate, self.block_size = drop_rate, block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_rate <= 0:
            return x
        b, c, h, w = x.shape
        k = min(self.block_size, h, w)
        gamma = self.drop_rate * h * w / (k * k) / max((h - k + 1) * (w - k + 1), 1)
        seeds = (torch.rand(b, c, h, w, device=x.device) < gamma).to(x.dtype)
        mask = 1 - F.max_pool2d(seeds, k, stride=1, padding=k // 2)[..., :h, :w]
        return x * mask * mask.numel() / mask.sum().clamp_min(1.0)


class ResBlock12(nn.Module):
    """3 x (conv3x3, BN, LeakyReLU 0.1) + 1x1 shortcut, then maxpool 2 (MetaOptNet/FEAT ResNet-12)."""

    def __init__(self, cin: int, cout: int, drop: float = 0.0) -> None:
        super().__init__()
        layers = []
        for i in range(3):
            layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)]
            if i < 2:
                layers.append(nn.LeakyReLU(0.1))
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.out = nn.Sequential(nn.LeakyReLU(0.1), nn.MaxPool2d(2))
        self.drop = DropBlock(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.out(self.body(x) + self.shortcut(x)))


class ResNet12(nn.Module):
    """ResNet-12 with widths 64-160-320-640 (Lee et al. 2019; Ye et al. 2020); 640-d after pooling."""

    def __init__(self, in_channels: int = 3, image_size: int = 84, widths=(64, 160, 320, 640),
                 dropblock: float = 0.0) -> None:
        super().__init__()
        blocks, cin = [], in_channels
        for i, w in enumerate(widths):
            blocks.append(ResBlock12(cin, w, dropblock if i >= 2 else 0.0))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        side = max(image_size // 16, 1)
        self.map_shape = (widths[-1], side, side)
        self.out_dim = widths[-1]

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).mean((2, 3))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x), inplace=True)


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2016) with a 3x3 stem for small few-shot images; 512-d after pooling."""

    def __init__(self, in_channels: int = 3, image_size: int = 84, dropblock: float = 0.0) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True))
        layers, cin = [], 64
        for i, w in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            layers += [BasicBlock(cin, w, stride), BasicBlock(w, w, 1)]
            cin = w
        self.layers = nn.Sequential(*layers)
        side = max(-(-image_size // 8), 1)
        self.map_shape = (512, side, side)
        self.out_dim = 512

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean((2, 3))
