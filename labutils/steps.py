"""The steps of Grad-CAM as one bundle of functions, for exercises that build on earlier steps.

``my_gradcam(model, x, c, layer, steps)`` calls ``steps.capture``, ``steps.alpha``, ``steps.combine``
and ``steps.postprocess``: in the notebook you pass your own functions, ``Steps(my_capture, my_alpha,
...)``; the check passes labutils' (``reference_steps()``), so a mistake in an earlier exercise costs
that exercise only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from .equations import alpha_weights, combine, postprocess
from .hooks import capture


@dataclass(frozen=True)
class Steps:
    """Grad-CAM's steps: each a function with the signature of its exercise."""

    capture: Callable  # (model, layer, x, c) -> (A^k, dy^c/dA^k), both (N, K, h, w)
    alpha: Callable  # dy^c/dA^k (…, K, h, w) -> alpha_k^c (…, K)            equation (1)
    combine: Callable  # alpha (…, K), A^k (…, K, h, w) -> L^c (…, h, w)       equation (2)
    postprocess: Callable  # L^c (…, h, w), (H, W) -> maps (…, H, W) in [0, 1]  section 5.5
    gradcam: Optional[Callable] = None  # (model, x, c, layer) -> maps (N, H, W): all of the above (the sweep's)


def activations_and_gradients(model: nn.Module, layer: str, x: torch.Tensor, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A^k of ``layer`` and dy^c/dA^k, y^c summed over the images (each image's score depends on it alone)."""
    with capture(model, layer) as seen:
        scores = model(x)
        (gradients,) = torch.autograd.grad(scores[:, c].sum(), seen.activations)
    return seen.activations.detach(), gradients


def reference_steps(seed: int = 0) -> Steps:
    """labutils' four steps, without the assembled pipeline (``seed`` is unused: the signature of a
    builder that a check can name). ``labutils.pipeline`` adds the pipeline, for the layer sweep."""
    return Steps(activations_and_gradients, alpha_weights, combine, postprocess)
