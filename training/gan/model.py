"""DCGAN (Radford et al. 2015) sized for 28x28 images, and its class-conditional variant.

Generators end in tanh: images in [-1, 1], i.e. pixel = (out * 0.5 + 0.5) * 255.
"""

from __future__ import annotations

import torch
from torch import nn

NUM_CLASSES = 10


def init_weights(m: nn.Module) -> None:
    """DCGAN's N(0, 0.02) initialisation."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """latent [B, Z] (+ class label [B, 1] when conditional) -> images [B, 1, 28, 28]."""

    def __init__(
        self, latent: int = 64, width: int = 64, conditional: bool = False, embed: int = 16
    ) -> None:
        super().__init__()
        self.conditional = conditional
        self.embedding = nn.Embedding(NUM_CLASSES, embed) if conditional else None
        cin = latent + (embed if conditional else 0)
        self.net = nn.Sequential(
            nn.Linear(cin, 2 * width * 7 * 7, bias=False),
            nn.BatchNorm1d(2 * width * 7 * 7),
            nn.ReLU(inplace=True),
            nn.Unflatten(1, (2 * width, 7, 7)),  # 2w x 7 x 7
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),  # w x 14 x 14
            nn.ConvTranspose2d(width, 1, 4, 2, 1),
            nn.Tanh(),  # 1 x 28 x 28
        )

    def forward(
        self, latent: torch.Tensor, class_label: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.conditional:
            latent = torch.cat([latent, self.embedding(class_label.reshape(-1))], dim=1)
        return self.net(latent)


class Discriminator(nn.Module):
    """images (+ labels as a projection term when conditional) -> real/fake logit."""

    def __init__(self, width: int = 64, conditional: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 4, 2, 1),
            nn.LeakyReLU(0.2, inplace=True),  # w x 14 x 14
            nn.Conv2d(width, 2 * width, 4, 2, 1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2, inplace=True),  # 2w x 7 x 7
            nn.Flatten(),  # 98w
        )
        self.out = nn.Linear(2 * width * 7 * 7, 1)
        # Projection discriminator (Miyato & Koyama 2018): logit += <embed(y), features>.
        self.embedding = nn.Embedding(NUM_CLASSES, 2 * width * 7 * 7) if conditional else None

    def reset_projection(self) -> None:
        """Zero the projection so training starts unconditional (random N(0, 1) rows swamp the logit)."""
        if self.embedding is not None:
            nn.init.zeros_(self.embedding.weight)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.net(images)
        logit = self.out(h).squeeze(1)
        if self.embedding is not None:
            logit = logit + (self.embedding(labels) * h).sum(1)
        return logit
