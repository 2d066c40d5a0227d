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

Where the exact shortcut of ``labutils.shortcut`` holds (the seed's layers), the head is cut once
more, at the classifier's first Linear W1: A^k -> y1 = W1 v + b1 runs without autograd, the graph
is recorded from y1 up only, and a new class costs a backward pass from y^c to y1 plus
``alpha_k^c = (W1s^T g1)_k / Z`` (W1s is kept with the head pass, so it always matches it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import LayerError
from .gradcam import (
    ClassSpec, Explanation, alpha_weights, class_gradients, class_targets, explanation_from_alpha, model_input,
    targets_for,
)
from .hooks import explaining, uncompiled
from .models import feature_layers, get_layer, model_name
from .shortcut import shortcut_alpha, shortcut_route, summed_weights

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


def head_at_first_linear(model: nn.Module, layer: str, linear: str) -> tuple[nn.Sequential, nn.Sequential]:
    """The head cut after the classifier's first Linear ``linear``: (A^k -> y1, y1 -> y)."""
    whole, j = head(model, layer), int(linear.split(".")[1])
    cut = len(whole) - len(model.classifier) + j + 1
    return whole[:cut], whole[cut:]


# ---------------------------------------------------------------- Grad-CAM from A^k


def features_at(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The feature maps A^k of ``layer`` for the images ``x``: (N, C, h, w), computed without autograd (eval mode)."""
    model = uncompiled(model)
    with explaining(model), torch.no_grad():
        return below(model, layer)(model_input(model, x))


@dataclass
class HeadPass:
    """One forward pass through the head, with autograd's record of it kept for later backward passes."""

    layer: str
    activations: torch.Tensor  # A^k (N, C, h, w)
    scores: torch.Tensor  # y (N, 1000), computed from A^k by the head
    start: torch.Tensor  # the leaf the gradients are taken for: A^k, or (shortcut) y1, W1's output
    summed: torch.Tensor | None = None  # W1s (shortcut only), as it was for this pass

    @property
    def path(self) -> str:
        return "autograd" if self.summed is None else "shortcut"


def head_pass(model: nn.Module, layer: str, activations: torch.Tensor, *, shortcut: bool = True) -> HeadPass:
    """Run the head on A^k, recording the graph (from y1 up, by the shortcut). ``activations`` is not changed."""
    model = uncompiled(model)
    a = activations.detach()
    with explaining(model):
        route = shortcut_route(model, layer) if shortcut else None
        if route is not None and route.shortcut:
            pooled, top = head_at_first_linear(model, layer, route.linear)
            with torch.no_grad():
                y1 = pooled(a).requires_grad_(True)  # A^k -> max-pool, average pool, flatten, W1 v + b1
            with torch.enable_grad():
                scores = top(y1.clone())  # clone: the inplace ReLU after W1 must not change y1
            return HeadPass(layer, a, scores, y1, summed_weights(get_layer(model, route.linear), a.shape[1]))
        start = a.requires_grad_(True)
        with torch.enable_grad():
            scores = head(model, layer)(start.clone())  # clone: an inplace ReLU above the layer must not change A^k
    return HeadPass(layer, start, scores, start)


def weights_from_pass(run: HeadPass, targets: torch.Tensor, *, retain_graph: bool) -> torch.Tensor:
    """Equation (1) for the classes (N, K) from a head pass: alpha_k^c (N, K, C), by autograd or the shortcut."""
    gradients = class_gradients(run.scores, run.start, targets, retain_graph=retain_graph)
    if run.summed is None:
        return alpha_weights(gradients)  # dy^c/dA^k (N, K, C, h, w) averaged
    return shortcut_alpha(gradients, run.summed, run.activations)  # g1 (N, K, 4096) -> (W1s^T g1) / Z


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
    targets = class_targets(classes, activations.shape[0])
    run = head_pass(model, layer, activations)
    targets = targets_for(run.scores, targets)
    alpha = weights_from_pass(run, targets, retain_graph=False)
    return explanation_from_alpha(layer, targets, run.scores, run.activations, alpha, tuple(size), counterfactual,
                                  run.path)


# ---------------------------------------------------------------- for interactive tools: keep the head pass


def class_weights(run: HeadPass, classes: ClassSpec = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Equation (1) by one backward pass through a kept head pass: ``(classes (N, K), alpha_k^c (N, K, C))``.

    The record of the forward pass stays, so other classes can follow.
    """
    targets = targets_for(run.scores, class_targets(classes, run.scores.shape[0]))
    return targets, weights_from_pass(run, targets, retain_graph=True)


def explanation_from_weights(
    run: HeadPass,
    classes: torch.Tensor,
    alpha: torch.Tensor,
    *,
    counterfactual: bool = False,
    size: tuple[int, int] = INPUT_SIZE,
) -> Explanation:
    """Equation (2) and section 5.5 for known weights alpha_k^c (N, K, C) of ``classes`` (N, K): no network runs."""
    return explanation_from_alpha(run.layer, classes, run.scores, run.activations, alpha, tuple(size), counterfactual,
                                  run.path)
