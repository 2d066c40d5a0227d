"""Small seeded networks for the exercise checks: torchvision's layout, in miniature.

Each builder takes a seed and returns a network in eval mode whose weights depend on that seed
only (the global random state is left as it was), with torchvision's module names: ``features``
(a Sequential of conv / inplace ReLU / max pooling), ``avgpool``, ``classifier``. A check names a
network as ``Net("labutils.nets:tiny_vgg", seed)`` and the process that calls the student's
function builds it here. Nothing in this module is an answer to an exercise.

- ``tiny_vgg``      3x3 convolutions in blocks closed by 2x2 max pooling, like VGG-16; an input of
                    H x W gives feature maps of H/4 x W/4 at ``features.9`` (its last ReLU)
- ``tiny_alexnet``  a strided 5x5 first convolution and 3x3 / stride 2 pooling, like AlexNet: odd map
                    sizes (112 x 144 -> 13 x 17 at ``features.9``)
- ``gap_net``       CAM's architecture: convolutions, global average pooling, one linear layer
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

N_CLASSES = 20


def _seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` with the global RNG seeded by ``seed`` and restored afterwards; eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    return model.eval()


class _Classifier(nn.Module):
    """features -> avgpool -> flatten -> classifier, as torchvision's VGG and AlexNet."""

    def __init__(self, features: nn.Sequential, avgpool: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.features, self.avgpool, self.classifier = features, avgpool, classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def tiny_vgg(seed: int = 0) -> nn.Module:
    """A VGG in miniature: ``features.8`` is a conv followed by the inplace ReLU ``features.9``."""
    return _seeded(seed, lambda: _Classifier(
        nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(inplace=True),
        ),
        nn.AdaptiveAvgPool2d(4),
        nn.Sequential(nn.Linear(32 * 4 * 4, 64), nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(64, N_CLASSES)),
    ))  # fmt: skip


def tiny_alexnet(seed: int = 0) -> nn.Module:
    """An AlexNet in miniature: strided first convolution, overlapping 3x3 pooling, odd map sizes."""
    return _seeded(seed, lambda: _Classifier(
        nn.Sequential(
            nn.Conv2d(3, 16, 5, stride=2, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(32, 24, 3, padding=1), nn.ReLU(inplace=True),
        ),
        nn.AdaptiveAvgPool2d(3),
        nn.Sequential(nn.Dropout(), nn.Linear(24 * 3 * 3, 64), nn.ReLU(inplace=True), nn.Linear(64, N_CLASSES)),
    ))  # fmt: skip


def gap_net(seed: int = 0) -> nn.Module:
    """CAM's architecture: conv / ReLU layers, global average pooling, one linear layer with weights w_k^c.

    ``features.3`` (the last ReLU) gives A^k at a quarter of the input's resolution.
    """
    return _seeded(seed, lambda: _Classifier(
        nn.Sequential(
            nn.Conv2d(3, 16, 4, stride=4), nn.ReLU(inplace=True),
            nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(inplace=True),
        ),
        nn.AdaptiveAvgPool2d(1),
        nn.Linear(24, N_CLASSES),
    ))  # fmt: skip
