"""Grad-CAM from cached feature maps: run the layers below the target layer once, then only the head.

The seed's section 5.1 splits the network in two: the convolutional ``features`` and the fully
connected ``classifier``. Cut it at the target layer instead, and Grad-CAM needs the lower part only
once per image: the feature maps A^k do not depend on the class c. Everything that depends on c,
the score y^c and its gradient dy^c/dA^k, comes from the part *above* the layer, the head::

    A = features_at(model, "features.29", x)                 # the expensive part, once
    gradcam_from_features(model, "features.29", A, 243)     # cheap: the head only
    gradcam_from_features(model, "features.29", A, 282)     # another class, same A

The result is the same ``Explanation`` as ``gradcam(model, x, classes, layer)``. For torchvision's
VGG-16 and AlexNet the head above ``features.i`` is ``features[i+1:]``, ``avgpool``, ``flatten`` and
``classifier``: the model's own modules, not copies of them.

An interactive tool can go one step further and keep the head's forward pass (``head_pass``): a
new class then costs one backward pass through the head (``class_weights``), and equation (2) from
known weights alpha_k^c (``explanation_from_weights``) runs no network at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import LayerError
from .gradcam import (
    ClassSpec, Explanation, alpha_weights, cam_explanation, class_gradients, class_targets, explanation_from_alpha,
    model_input, top_classes,
)
from .models import feature_layers, get_layer, model_name

INPUT_SIZE = (224, 224)  # the input size of the lab's models, the size the maps are upsampled to


# ---------------------------------------------------------------- the two parts of the network


def layer_index(model: nn.Module, layer: str) -> int:
    """``i`` for the layer ``"features.i"`` (a conv or ReLU of ``features``), LayerError otherwise."""
    model_name(model)  # only the lab's AlexNet and VGG-16 have the features / avgpool / classifier split
    get_layer(model, layer)  # an unknown name: LayerError listing the valid ones
    if layer not in feature_layers(model):
        raise LayerError(
            f"layer {layer!r} is not a conv/ReLU layer of features; choose one of: {', '.join(feature_layers(model))}"
        )
    return int(layer.split(".")[1])


def below(model: nn.Module, layer: str) -> nn.Sequential:
    """The part of the network up to and including ``layer``: ``features[:i+1]`` (x -> A^k)."""
    i = layer_index(model, layer)
    return model.features[: i + 1]


def head(model: nn.Module, layer: str) -> nn.Sequential:
    """The part of the network above ``layer``: ``features[i+1:]``, avgpool, flatten, classifier (A^k -> y)."""
    i = layer_index(model, layer)
    return nn.Sequential(*model.features[i + 1 :], model.avgpool, nn.Flatten(1), *model.classifier)


# ---------------------------------------------------------------- Grad-CAM from A^k


def features_at(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The feature maps A^k of ``layer`` for the images ``x``: (N, C, h, w), computed without autograd."""
    with torch.no_grad():
        return below(model, layer)(model_input(model, x))


@dataclass
class HeadPass:
    """One forward pass through the head, with autograd's record of it kept for later backward passes."""

    layer: str
    activations: torch.Tensor  # A^k (N, C, h, w): the leaf the gradients are taken for
    scores: torch.Tensor  # y (N, 1000), computed from A^k by the head


def head_pass(model: nn.Module, layer: str, activations: torch.Tensor) -> HeadPass:
    """Run the head on A^k, recording the graph. ``activations`` itself is not changed."""
    a = activations.detach().requires_grad_(True)
    with torch.enable_grad():
        scores = head(model, layer)(a.clone())  # clone: an inplace ReLU above the layer must not change A^k
    return HeadPass(layer, a, scores)


def gradcam_from_features(
    model: nn.Module,
    layer: str,
    activations: torch.Tensor,
    classes: ClassSpec = None,
    *,
    counterfactual: bool = False,
    size: tuple[int, int] = INPUT_SIZE,
) -> Explanation:
    """``gradcam(model, x, classes, layer)`` from the feature maps ``activations = features_at(model, layer, x)``.

    Only the head runs: one forward and one backward pass for all the classes. ``size``: the input
    size the maps are upsampled to. Neither the model (no hooks, no ``.grad``) nor ``activations``
    are changed.
    """
    run = head_pass(model, layer, activations)
    targets = class_targets(classes, activations.shape[0])
    targets = top_classes(run.scores) if targets is None else targets
    gradients = class_gradients(run.scores, run.activations, targets)
    return cam_explanation(layer, targets, run.scores, run.activations, gradients, tuple(size), counterfactual)


# ---------------------------------------------------------------- for interactive tools: keep the head pass


def class_weights(run: HeadPass, classes: ClassSpec = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Equation (1) by one backward pass through a kept head pass: ``(classes (N, K), alpha_k^c (N, K, C))``.

    The record of the forward pass stays, so other classes can follow.
    """
    targets = class_targets(classes, run.scores.shape[0])
    targets = top_classes(run.scores) if targets is None else targets
    gradients = class_gradients(run.scores, run.activations, targets, retain_graph=True)
    return targets, alpha_weights(gradients)


def explanation_from_weights(
    run: HeadPass,
    classes: torch.Tensor,
    alpha: torch.Tensor,
    *,
    counterfactual: bool = False,
    size: tuple[int, int] = INPUT_SIZE,
) -> Explanation:
    """Equation (2) and section 5.5 for known weights alpha_k^c (N, K, C) of ``classes`` (N, K): no network runs."""
    return explanation_from_alpha(run.layer, classes, run.scores, run.activations, alpha, tuple(size), counterfactual)
