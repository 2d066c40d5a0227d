"""Grad-CAM assembled from labutils' steps, for exercises that need the whole pipeline (the layer sweep).

It is kept apart from ``labutils.steps`` so that the exercise that asks you to assemble the pipeline
(``my_gradcam``) is graded where this module cannot be imported.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from .steps import Steps, reference_steps


def gradcam_maps(model: nn.Module, x: torch.Tensor, c: int, layer: str) -> torch.Tensor:
    """Grad-CAM maps (N, H, W) of class ``c`` at ``layer``, from labutils' steps."""
    steps = reference_steps()
    activations, gradients = steps.capture(model, layer, x, c)
    return steps.postprocess(steps.combine(steps.alpha(gradients), activations), tuple(x.shape[-2:]))


def pipeline_steps(seed: int = 0) -> Steps:
    """labutils' steps and the pipeline made of them (``seed`` unused, as for ``reference_steps``)."""
    return replace(reference_steps(), gradcam=gradcam_maps)
