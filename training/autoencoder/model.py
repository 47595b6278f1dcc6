"""The classic fully convolutional autoencoder with a 4x4x8 (128-value) bottleneck."""

from __future__ import annotations

import torch
from torch import nn

LATENT = 128


class Encoder(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(inplace=True),  # w x 28 x 28
            nn.MaxPool2d(2),  # w x 14 x 14
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(inplace=True),  # w x 14 x 14
            nn.MaxPool2d(2),  # w x 7 x 7
            nn.Conv2d(width, 8, 3, padding=1),
            nn.ReLU(inplace=True),  # 8 x 7 x 7
            nn.MaxPool2d(2, ceil_mode=True),  # 8 x 4 x 4
            nn.Flatten(),  # 128
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class Decoder(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Unflatten(1, (8, 4, 4)),  # 8 x 4 x 4
            nn.Conv2d(8, width, 3, padding=1),
            nn.ReLU(inplace=True),  # w x 4 x 4
            nn.Upsample(scale_factor=2),  # w x 8 x 8
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(inplace=True),  # w x 8 x 8
            nn.Upsample(scale_factor=2),  # w x 16 x 16
            nn.Conv2d(width, width, 3),
            nn.ReLU(inplace=True),  # w x 14 x 14
            nn.Upsample(scale_factor=2),  # w x 28 x 28
            nn.Conv2d(width, 1, 3, padding=1),
            nn.Sigmoid(),  # 1 x 28 x 28
        )

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.net(latent)


class Autoencoder(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.encoder = Encoder(width)
        self.decoder = Decoder(width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(images))
