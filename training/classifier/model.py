"""Fashion-MNIST classifiers: the classic MLP baseline and a small conv/BN/pool CNN."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """Fully connected baseline; logits out."""

    def __init__(self, hidden: tuple[int, ...] = (1024, 512), dropout: float = 0.3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]  # 784
        width = 28 * 28
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]  # h
            width = h
        layers.append(nn.Linear(width, 10))  # 10
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class CNN(nn.Module):
    """Three conv/BN blocks with pooling, then a small head; `features` is the penultimate layer."""

    def __init__(self, width: int = 32, feature_size: int = 256, dropout: float = 0.3) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            *_block(1, w),
            *_block(w, w),  # w x 28 x 28
            nn.MaxPool2d(2),  # w x 14 x 14
            *_block(w, 2 * w),
            *_block(2 * w, 2 * w),  # 2w x 14 x 14
            nn.MaxPool2d(2),  # 2w x 7 x 7
            *_block(2 * w, 4 * w),  # 4w x 7 x 7
            nn.MaxPool2d(2),  # 4w x 3 x 3
            nn.Flatten(),  # 36w
            nn.Dropout(dropout),
            nn.Linear(4 * w * 9, feature_size, bias=False),
            nn.BatchNorm1d(feature_size),
            nn.ReLU(inplace=True),  # feature_size
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_size, 10))  # 10

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def build(arch: str, **kwargs) -> nn.Module:
    if arch == "mlp":
        return MLP(**kwargs)
    if arch == "cnn":
        return CNN(**kwargs)
    raise ValueError(f"unknown classifier arch {arch!r}; expected mlp or cnn")


class ClassifierForExport(nn.Module):
    """Softmax inside the graph (the service returns probabilities); the CNN also emits features."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor):
        if isinstance(self.net, CNN):
            feats = self.net.features(images)
            return torch.softmax(self.net.head(feats), dim=1), feats
        return torch.softmax(self.net(images), dim=1)
