"""Variational autoencoder with a 2-D latent space (so the space can be drawn and walked)."""

from __future__ import annotations

import torch
from torch import nn

LATENT = 2


class Encoder(nn.Module):
    """Image -> (mean, log-variance) of q(z|x)."""

    def __init__(self, latent: int = LATENT) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),  # 32 x 14 x 14
            nn.Conv2d(32, 32, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),  # 32 x 7 x 7
            nn.Flatten(),  # 1568
            nn.Linear(32 * 7 * 7, 128),
            nn.ReLU(inplace=True),  # 128
        )
        self.mean = nn.Linear(128, latent)
        self.logvar = nn.Linear(128, latent)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(images)
        return self.mean(h), self.logvar(h)


class Decoder(nn.Module):
    """Latent -> Bernoulli means of the 28x28 pixels (in [0, 1])."""

    def __init__(self, latent: int = LATENT) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent, 128),
            nn.ReLU(inplace=True),  # 128
            nn.Linear(128, 32 * 7 * 7),
            nn.ReLU(inplace=True),  # 1568
            nn.Unflatten(1, (32, 7, 7)),  # 32 x 7 x 7
            nn.ConvTranspose2d(32, 32, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),  # 32 x 14 x 14
            nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1),
            nn.Sigmoid(),  # 1 x 28 x 28
        )

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.net(latent)


class VAE(nn.Module):
    def __init__(self, latent: int = LATENT) -> None:
        super().__init__()
        self.encoder = Encoder(latent)
        self.decoder = Decoder(latent)

    def forward(self, images: torch.Tensor):
        mean, logvar = self.encoder(images)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
        return self.decoder(z), mean, logvar


class MeanEncoder(nn.Module):
    """Export view of the encoder: the posterior mean is the deterministic latent code."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)[0]


class MeanReconstruction(nn.Module):
    """Export view of the VAE: reconstruct through the posterior mean (no sampling noise)."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.decoder(self.vae.encoder(images)[0])
