"""Grad-CAM's two equations and its post-processing, as the seed's sections 2.2 and 5.5 write them.

For a target class c and the feature maps A^k of a conv layer:

    alpha_k^c = 1/Z sum_i sum_j dy^c/dA^k_ij          (1)  global-average-pooled gradients
    L^c       = ReLU( sum_k alpha_k^c A^k )           (2)  weighted sum of the feature maps

then L^c is upsampled bilinearly to the input size and normalized to [0, 1] (section 5.5).
Each function is one formula on tensors, with no model in sight: ``labutils.gradcam`` runs them on a
network (and re-exports them: ``from labutils.gradcam import combine`` works as before).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


# ---------------------------------------------------------------- the two equations


def alpha_weights(gradients: torch.Tensor) -> torch.Tensor:
    """Equation (1): alpha_k^c, the gradients dy^c/dA^k averaged over the Z = h*w positions. (…, K, h, w) -> (…, K)."""
    return gradients.mean(dim=(-2, -1))


def combine(alpha: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """Equation (2): L^c = ReLU(sum_k alpha_k^c A^k). alpha (…, K), A (…, K, h, w) -> (…, h, w)."""
    return F.relu((alpha[..., None, None] * activations).sum(dim=-3))


# ---------------------------------------------------------------- post-processing (section 5.5)


def normalize(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map (last two dims) to [0, 1]; a flat map becomes all zeros, never NaN."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / torch.where(span > 0, span, 1), torch.zeros_like(maps))


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (…, h, w) maps to ``size`` (the input image's height and width)."""
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    return F.interpolate(flat, size=size, mode="bilinear", align_corners=False).reshape(*lead, *size)


def postprocess(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Section 5.5: upsample L^c bilinearly to the input size, keep positive values, normalize to [0, 1]."""
    return normalize(F.relu(upsample(raw, size)))
