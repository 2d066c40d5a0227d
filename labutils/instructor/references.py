"""The instructor's reference solutions, for the copy check only (never shipped to students, never run by a scorer).

The copy check (:mod:`labutils.instructor.similarity`) compares each solution with every source of
its exercise a student could copy from: the registry's ``reference`` (a labutils function), the
labutils functions below in ``LIBRARY`` (the same computation elsewhere in the package), the
instructor's notebooks' solution cells, and the functions of this module, one per exercise that
has no reference in the registry (``REFERENCES``). Each of them passes its exercise's checks
(``tests/test_similarity.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..summary import BYTES_PER_VALUE, MB


def layer_cost(spec: dict, in_shape: tuple) -> tuple[tuple[int, ...], int, float]:
    """(output shape, parameters, MB of the Forward/Backward Pass Size) of one layer, by hand."""
    channels, height, width = in_shape if len(in_shape) == 3 else (None, None, None)
    if spec["kind"] == "linear":
        out, params = (spec["out_features"],), (math.prod(in_shape) + 1) * spec["out_features"]
    elif spec["kind"] in ("conv", "maxpool"):
        kernel = spec["kernel"]
        stride = spec.get("stride", kernel if spec["kind"] == "maxpool" else 1)
        padding = spec.get("padding", 0)
        side = lambda n: math.floor((n + 2 * padding - kernel) / stride) + 1  # noqa: E731
        if spec["kind"] == "conv":
            out = (spec["out_channels"], side(height), side(width))
            params = spec["out_channels"] * channels * kernel * kernel + spec["out_channels"]
        else:
            out, params = (channels, side(height), side(width)), 0
    else:
        out, params = tuple(in_shape), 0
    return out, params, math.prod(out) * BYTES_PER_VALUE * 2 / MB


def layer_sweep(model, x: torch.Tensor, classes, layers, steps) -> torch.Tensor:
    """Pearson correlation (len(layers), N) between the Grad-CAM maps of classes[0] and classes[1] at each layer."""
    result = torch.zeros(len(layers), x.shape[0])
    for i, layer in enumerate(layers):
        first = steps.gradcam(model, x, classes[0], layer).flatten(1)
        second = steps.gradcam(model, x, classes[1], layer).flatten(1)
        first = first - first.mean(1, keepdim=True)
        second = second - second.mean(1, keepdim=True)
        denominator = torch.sqrt((first**2).sum(1) * (second**2).sum(1))
        flat = denominator == 0
        result[i] = torch.where(flat, 0.0, (first * second).sum(1) / torch.where(flat, 1.0, denominator))
    return result


def cam(net, x: torch.Tensor, c: int) -> torch.Tensor:
    """Grad-CAM's L^c (N, h, w) at the end of net.features from CAM's weights w_k^c / Z, no gradient."""
    with torch.no_grad():
        features = net.features(x)
        weights = net.classifier.weight[c] / (features.shape[-2] * features.shape[-1])
        return torch.relu(torch.einsum("k,nkhw->nhw", weights, features))


def guided_gradcam(guided: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """Guided gradients (N, K, 3, H, W) times the post-processed Grad-CAM maps of L^c (N, K, h, w)."""
    height, width = guided.shape[-2:]
    up = F.interpolate(raw.flatten(0, 1)[:, None], size=(height, width), mode="bilinear", align_corners=False)
    up = F.relu(up).reshape(*raw.shape[:2], height, width)
    low, high = up.amin(dim=(-2, -1), keepdim=True), up.amax(dim=(-2, -1), keepdim=True)
    maps = torch.where(high > low, (up - low) / (high - low).clamp(min=1e-30), torch.zeros_like(up))
    return guided * maps.unsqueeze(2)


def counterfactual(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """The counterfactual map ReLU(sum_k (-alpha_k^c) A^k), (..., K, h, w) -> (..., h, w)."""
    alpha = -gradients.mean(dim=(-2, -1))
    return torch.relu((alpha[..., :, None, None] * activations).sum(dim=-3))


def overlay(image: torch.Tensor, cam_map: torch.Tensor, alpha: float, colors: torch.Tensor) -> torch.Tensor:
    """Section 5.6: the map resized to the image (bilinear), coloured with ``colors``, blended: (H, W, 3)."""
    height, width = image.shape[0], image.shape[1]
    resized = F.interpolate(cam_map.reshape(1, 1, *cam_map.shape), size=(height, width), mode="bilinear",
                            align_corners=False).reshape(height, width)
    index = torch.clamp((resized.clamp(0, 1) * colors.shape[0]).long(), 0, colors.shape[0] - 1)
    return image * (1 - alpha) + colors[index] * alpha


REFERENCES = {"layer_cost": layer_cost, "layer_sweep": layer_sweep, "cam": cam, "guided_gradcam": guided_gradcam,
              "counterfactual": counterfactual, "overlay": overlay}  # fmt: skip
LIBRARY = {  # more labutils code a student can read that computes an exercise's answer
    "layer_cost": ("labutils.checks.architectures:layer_cost",),
    "layer_sweep": ("labutils.checks.gradcam_math:correlations",),
    "postprocess": ("labutils.equations:normalize", "labutils.equations:upsample"),
    "guided_gradcam": ("labutils.guided:guided_times_cam",),
    "counterfactual": ("labutils.equations:combine",),
}
