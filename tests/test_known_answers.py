"""Known answers: cases where what Grad-CAM must produce is known without running labutils.

a. The paper's section 3.1: on a network that ends in global average pooling and one linear layer,
   Grad-CAM at the last conv layer is CAM, ReLU(sum_k w_k^c A^k), divided by the constant Z = h*w.
b. A small CNN trained here on generated images each holding a red square (A) and a blue disc (B),
   to tell which of the two is larger (a softmax over {A, B}): Grad-CAM for A must point at the
   square, for B at the disc, and the counterfactual map of A (what lowers y^A: removing it would
   make the network surer of A) at the disc. A pointing game on 100 fresh images.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close_rel, assert_no_hooks
from torch import nn

from labutils import gradcam
from labutils.sanity import scenes


class GapNet(nn.Module):
    """conv -> ReLU -> ... -> global average pooling -> one linear layer (CAM's architecture),
    with torchvision's layout: ``features`` (a Sequential), ``avgpool``, flatten, ``classifier``."""

    def __init__(self, n_classes: int, seed: int):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.features = nn.Sequential(
                nn.Conv2d(3, 16, 4, stride=4),
                nn.ReLU(inplace=True),
                nn.Conv2d(16, 16, 3, padding=1),
                nn.ReLU(inplace=True),  # features.3: A^k, at 1/4 of the input resolution
            )
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Linear(16, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


LAYER = "features.3"


# ---------------------------------------------------------------- a. Grad-CAM generalizes CAM


def test_gradcam_at_the_last_conv_layer_of_a_gap_network_is_cam_over_z():
    net = GapNet(n_classes=5, seed=3).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    classes = [[0, 1, 2, 3, 4]] * 2
    e = gradcam(net, x, classes, LAYER)
    cf = gradcam(net, x, classes, LAYER, counterfactual=True)

    with torch.no_grad():
        a = net.features(x)  # A^k: (N, K=16, 8, 8)
    z = a.shape[-2] * a.shape[-1]
    w = net.classifier.weight  # w_k^c: (5, 16)
    cam = torch.einsum("ck,nkij->ncij", w, a).detach()  # sum_k w_k^c A^k: (N, 5, 8, 8)
    assert (cam > 0).any() and (cam < 0).any(), "CAM of mixed sign: the ReLU has work to do"

    assert e.raw.shape == cam.shape
    errors = []
    for n in range(2):
        for c in range(5):  # a map can be all zeros (CAM of one sign): then it must be exactly zero
            errors.append(assert_close_rel(e.raw[n, c], cam[n, c].clamp(min=0) / z, allow_zero=True,
                                           what=f"Grad-CAM == ReLU(CAM)/Z, image {n} class {c}"))
            errors.append(assert_close_rel(cf.raw[n, c], (-cam[n, c]).clamp(min=0) / z, allow_zero=True,
                                           what=f"counterfactual == ReLU(-CAM)/Z, image {n} class {c}"))
    print(f"[CAM equivalence] max relative error over 20 maps: {max(errors):.2e}")
    assert (e.raw.amax(dim=(-2, -1)) > 0).sum() >= 6 and (cf.raw.amax(dim=(-2, -1)) > 0).sum() >= 6

    # after upsampling and scaling to [0, 1] the constant 1/Z is gone: the maps are CAM's
    up = F.interpolate(cam.clamp(min=0), size=(32, 32), mode="bilinear", align_corners=False)
    low, high = up.amin(dim=(-2, -1), keepdim=True), up.amax(dim=(-2, -1), keepdim=True)
    expected = torch.where(high > low, (up - low) / (high - low).clamp(min=1e-30), torch.zeros_like(up))
    assert_close_rel(e.maps, expected, "normalized Grad-CAM == normalized CAM")
    assert (e.maps.amax(dim=(-2, -1)) == 1).sum() >= 6
    assert_no_hooks(net)


# ---------------------------------------------------------------- b. a pointing game on a trained CNN

SIZE = 64
A, B, NEITHER = 0, 1, 2


def draw(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` noisy 3x64x64 images, each with a red square (A) and a blue disc (B) at least 4 pixels apart; the
    label is the larger object. Images, labels (0: A, 1: B) and boxes (N, 2, 4): notebook 06's scenes."""
    return scenes(n, seed)


def pointing_rate(maps: torch.Tensor, boxes: torch.Tensor, tolerance: int) -> float:
    """Fraction of maps (N, H, W) whose maximum lies in the box (N, 4), grown by ``tolerance`` pixels."""
    peak = maps.flatten(1).argmax(dim=1)
    r, c = peak // maps.shape[-1], peak % maps.shape[-1]
    hit = (
        (r >= boxes[:, 0] - tolerance) & (r <= boxes[:, 2] + tolerance)
        & (c >= boxes[:, 1] - tolerance) & (c <= boxes[:, 3] + tolerance)
    )
    return hit.float().mean().item()


@pytest.fixture(scope="module")
def trained() -> GapNet:
    """A GapNet trained with a softmax over {A, B} to tell which object is larger: y^A rises with the
    square's area and falls with the disc's, so the disc is what lowers y^A."""
    x, labels, _ = draw(800, seed=0)
    net = GapNet(n_classes=2, seed=0)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is several times faster on a busy machine
    start = time.process_time()
    try:
        for _ in range(150):
            batch = torch.randint(0, len(x), (64,), generator=g)
            loss = F.cross_entropy(net(x[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    net.zero_grad(set_to_none=True)
    net.eval()
    print(f"[trained GapNet] last loss {loss.item():.4f}, {time.process_time() - start:.1f} s of CPU time")
    return net


def test_the_trained_network_recognizes_the_objects(trained):
    x, labels, _ = draw(150, seed=2)
    with torch.no_grad():
        accuracy = (trained(x).argmax(dim=1) == labels).float().mean().item()
    print(f"[trained GapNet] accuracy on fresh images: {accuracy:.2f}")
    assert accuracy >= 0.95


def test_pointing_game_gradcam_and_counterfactual(trained):
    x, _, boxes = draw(100, seed=3)
    e = gradcam(trained, x, [[A, B]] * 100, LAYER)  # (100, 2, 64, 64)
    cf = gradcam(trained, x, A, LAYER, counterfactual=True)  # what lowers y^A
    tolerance = 4  # one cell of the 16x16 feature map
    rates = {
        "Grad-CAM A -> square": pointing_rate(e.maps[:, 0], boxes[:, A], tolerance),
        "Grad-CAM B -> disc": pointing_rate(e.maps[:, 1], boxes[:, B], tolerance),
        "counterfactual A -> disc": pointing_rate(cf.maps[:, 0], boxes[:, B], tolerance),
    }
    print("[pointing game, 100 images, 4 px tolerance] " + ", ".join(f"{k}: {v:.2f}" for k, v in rates.items()))
    assert all(rate >= 0.9 for rate in rates.values()), rates
    # and not the other way round: the maps of A do not point at the disc
    assert pointing_rate(e.maps[:, 0], boxes[:, B], 0) <= 0.1
    assert pointing_rate(cf.maps[:, 0], boxes[:, A], 0) <= 0.1
    assert_no_hooks(trained)


def test_bfloat16_maps_of_the_trained_network_correlate_with_float32(trained):
    """dtype=torch.bfloat16: the convolutions below the layer in bf16, A^k and the head in float32."""
    x, _, boxes = draw(100, seed=3)
    full = gradcam(trained, x, [[A, B]] * 100, LAYER)
    low = gradcam(trained, x, [[A, B]] * 100, LAYER, dtype=torch.bfloat16)
    assert low.maps.dtype == torch.float32 and not torch.equal(low.raw, full.raw)
    a, b = full.maps.double().flatten(-2), low.maps.double().flatten(-2)
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    r = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=1e-30)
    print(f"[trained GapNet, bf16 vs fp32, 200 maps] Pearson r min {r.min():.6f}, mean {r.mean():.6f}")
    assert r.min() >= 0.99
    assert pointing_rate(low.maps[:, 0], boxes[:, A], 4) >= 0.9 and pointing_rate(low.maps[:, 1], boxes[:, B], 4) >= 0.9
