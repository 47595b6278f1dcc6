"""ESPCN (Shi et al. 2016): convolutions at low resolution, then a sub-pixel (pixel-shuffle) layer.

One change from the paper: the network predicts the residual over a fixed bicubic upscale, which
is itself written as a convolution plus the same pixel shuffle (a bicubic x r upscale is r*r
fixed 5x5 polyphase filters). The model stays fully convolutional, exports to plain ONNX
Conv/DepthToSpace, and starts training from bicubic quality instead of from a grey image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel; a = -0.5 as MATLAB's and PIL's bicubic."""
    t = np.abs(t)
    return np.where(
        t <= 1,
        (a + 2) * t**3 - (a + 3) * t**2 + 1,
        np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0),
    )


def bicubic_polyphase(scale: int) -> torch.Tensor:
    """[scale*scale, 1, 5, 5] weights: conv + pixel shuffle(scale) == bicubic upscale (half-pixel grid)."""
    taps = np.zeros((scale, 5))
    for phase in range(scale):
        d = (phase + 0.5) / scale - 0.5  # source offset of this output phase, in LR pixels
        for k in range(-2, 3):  # LR neighbours i-2 .. i+2
            taps[phase, k + 2] = cubic(k - d)
        taps[phase] /= taps[phase].sum()
    w = np.einsum("pi,qj->pqij", taps, taps).reshape(scale * scale, 1, 5, 5)
    return torch.tensor(w, dtype=torch.float32)


class ESPCN(nn.Module):
    def __init__(self, scale: int, features: tuple[int, ...] = (64, 64, 32)) -> None:
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = []
        cin = 1
        for i, cout in enumerate(features):
            k = 5 if i == 0 else 3
            layers += [
                nn.Conv2d(cin, cout, k, padding=k // 2),
                nn.ReLU(inplace=True),
            ]  # cout x H x W
            cin = cout
        layers.append(nn.Conv2d(cin, scale * scale, 3, padding=1))  # r^2 x H x W
        self.body = nn.Sequential(*layers)
        nn.init.zeros_(self.body[-1].weight)  # start exactly at bicubic
        nn.init.zeros_(self.body[-1].bias)
        self.register_buffer("bicubic", bicubic_polyphase(scale), persistent=False)
        self.shuffle = nn.PixelShuffle(scale)  # 1 x rH x rW

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Edge padding matches how bicubic resizers treat borders.
        base = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), self.bicubic)
        return self.shuffle(self.body(x) + base)


class ESPCNForExport(nn.Module):
    """Clamps to the valid [0, 1] range: the service turns the output straight into pixels."""

    def __init__(self, net: ESPCN) -> None:
        super().__init__()
        self.net = net

    def forward(self, low_res: torch.Tensor) -> torch.Tensor:
        return self.net(low_res).clamp(0.0, 1.0)
