"""Can you trust the map? A network trained in seconds, and the tests of notebook 06.

Untrained weights make every map meaningless. This module trains a small CNN on generated scenes
whose answer is known, so that what a map *should* show is known too, and measures the maps:

- ``scenes``            noisy images, each with a red square (class 0) and a blue disc (class 1) of
                        random sizes; the label is the larger object; the objects' boxes come along
- ``scene_net``, ``train``  a small conv / ReLU / global-average-pooling network, trained
                        deterministically (seeded, one thread) to tell which object is larger
- ``pointing_game``     does a map's maximum fall on the object? (Zhang et al., 2016)
- ``rank_correlation``  Spearman's rank correlation of two maps, ties averaged
- ``randomize_from_top`` cascading model randomization (Adebayo et al., 2018): re-initialize the top
                        layers, one more each step, and see whether the maps change
- ``deletion_curve``    Petsiuk et al. (2018): remove (or insert) the pixels a map ranks highest, and
                        follow the class probability
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

SIZE = 64
SQUARE, DISC = 0, 1
CLASS_NAMES = ("square", "disc")
LAYER = "features.3"  # scene_net's last ReLU: A^k at 1/4 of the input resolution


def scenes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` noisy 3x64x64 images with a red square and a blue disc at least 4 pixels apart.

    Returns the images (n, 3, 64, 64), the labels (n,) (0: the square is larger, 1: the disc; the
    areas differ by at least 25%) and the boxes (n, 2, 4): (top, left, bottom, right), inclusive, of
    the square and of the disc.
    """
    g = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    x = 0.1 * torch.randn(n, 3, SIZE, SIZE, generator=g)
    labels = torch.zeros(n, dtype=torch.long)
    boxes = torch.zeros(n, 2, 4)
    for i in range(n):
        while True:
            half = int(torch.randint(4, 9, (1,), generator=g))  # the square's half side
            radius = int(torch.randint(5, 10, (1,), generator=g))
            ca = torch.randint(half, SIZE - half, (2,), generator=g)
            cb = torch.randint(radius, SIZE - radius, (2,), generator=g)
            square = ((rows - ca[0]).abs() <= half) & ((cols - ca[1]).abs() <= half)
            disc = (rows - cb[0]) ** 2 + (cols - cb[1]) ** 2 <= radius**2
            area_a, area_b = int(square.sum()), int(disc.sum())
            if (ca - cb).abs().max() > half + radius + 4 and max(area_a, area_b) >= 1.25 * min(area_a, area_b):
                break
        labels[i] = SQUARE if area_a > area_b else DISC
        boxes[i, SQUARE] = torch.tensor([ca[0] - half, ca[1] - half, ca[0] + half, ca[1] + half])
        boxes[i, DISC] = torch.tensor([cb[0] - radius, cb[1] - radius, cb[0] + radius, cb[1] + radius])
        x[i, 0][square] += 1.0
        x[i, 1][square] += 0.2
        x[i, 2][disc] += 1.0
        x[i, 1][disc] += 0.5
    return x, labels, boxes


class SceneNet(nn.Module):
    """conv -> ReLU -> conv -> ReLU -> global average pooling -> linear (2 classes),
    with torchvision's layout: ``features``, ``avgpool``, ``classifier``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 4, stride=4), nn.ReLU(inplace=True),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def scene_net(seed: int = 0) -> SceneNet:
    """A SceneNet with seeded initial weights (the global random state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SceneNet()


def train(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int = 150, seed: int = 1) -> list[float]:
    """Adam, batches of 64 drawn with ``seed``, one CPU thread (deterministic, and fastest for tiny
    convolutions); returns the loss of every step. The network is left in eval mode, without .grad."""
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    losses = []
    net.train()
    try:
        with torch.enable_grad():
            for _ in range(steps):
                batch = torch.randint(0, len(images), (64,), generator=g)
                loss = F.cross_entropy(net(images[batch]), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
    finally:
        torch.set_num_threads(threads)
        net.zero_grad(set_to_none=True)
        net.eval()
    return losses


def pointing_game(maps: torch.Tensor, boxes: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """For each map (N, H, W): does its maximum lie in the box (N, 4), grown by ``tolerance`` pixels? (N,) bool."""
    peak = maps.flatten(1).argmax(dim=1)
    r, c = peak // maps.shape[-1], peak % maps.shape[-1]
    return (
        (r >= boxes[:, 0] - tolerance) & (r <= boxes[:, 2] + tolerance)
        & (c >= boxes[:, 1] - tolerance) & (c <= boxes[:, 3] + tolerance)
    )  # fmt: skip


def ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..P of a flat tensor, tied values sharing the average of their ranks (float64)."""
    ordered, order = values.flatten().sort()
    _, group, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
    counts = counts.double()
    average = counts.cumsum(0) - (counts - 1) / 2  # the mean rank of each group of equal values
    out = torch.empty(values.numel(), dtype=torch.float64)
    out[order] = average[group]
    return out


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two maps of the same shape (Pearson's of their ranks); 0 if one is flat."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norms = float(ra.norm() * rb.norm())
    return float(ra @ rb) / norms if norms > 0 else 0.0


def parametrized_layers(net: nn.Module) -> list[str]:
    """Names of the modules that hold weights, from the output back to the input."""
    return [name for name, m in net.named_modules() if list(m.parameters(recurse=False))][::-1]


def randomize_from_top(net: nn.Module, n_layers: int, seed: int = 0) -> nn.Module:
    """A copy of ``net`` whose top ``n_layers`` weighted layers are re-initialized (seeded); the rest is kept."""
    randomized = copy.deepcopy(net)
    modules = dict(randomized.named_modules())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in parametrized_layers(randomized)[:n_layers]:
            modules[name].reset_parameters()
    return randomized.eval()


@torch.no_grad()
def deletion_curve(
    model: nn.Module, x: torch.Tensor, maps: torch.Tensor, classes: torch.Tensor, *, steps: int = 16,
    insertion: bool = False, baseline: torch.Tensor | None = None,
) -> torch.Tensor:
    """The probability of each image's class as the pixels a map ranks highest are removed (or inserted).

    ``x`` (N, 3, H, W), ``maps`` (N, H, W), ``classes`` (N,). Deletion starts from the image and sets the
    top-ranked pixels to ``baseline`` (default: zeros, the data's mean); insertion starts from the
    baseline and puts them back. Returns (N, steps + 1): the softmax probability of the class after
    0, 1/steps, ..., all of the pixels. The area under it: lower is better for deletion, higher for insertion.
    """
    baseline = torch.zeros_like(x) if baseline is None else baseline
    n, pixels = x.shape[0], x.shape[-2] * x.shape[-1]
    order = maps.flatten(1).argsort(dim=1, descending=True)  # (N, P): the most relevant pixel first
    curve = []
    for step in range(steps + 1):
        k = round(step * pixels / steps)
        chosen = torch.zeros(n, pixels, dtype=torch.bool)
        chosen.scatter_(1, order[:, :k], True)
        chosen = chosen.view(n, 1, *x.shape[-2:])
        shown = torch.where(chosen, x, baseline) if insertion else torch.where(chosen, baseline, x)
        probabilities = model(shown).softmax(dim=1)
        curve.append(probabilities.gather(1, classes.view(-1, 1)).squeeze(1))
    return torch.stack(curve, dim=1)
