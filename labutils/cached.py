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

Where the exact shortcut of ``labutils.shortcut`` holds (the seed's layers), the head runs without
autograd and keeps its ``HeadRecord`` (the ReLU masks of the classifier and W1s) instead: a new
class costs one row of the last Linear's weight through the chain, no backward pass. With
``fold=True`` the chain is multiplied out once (``HeadRecord.fold``, about a GEMM of 4096x4096 by
4096xC): a class then costs one row of W3 times a 4096xC matrix, for an interactive tool.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import LabError, LayerError
from .gradcam import Explanation, alpha_weights, class_gradients, explanation_from_alpha
from .inputs import (
    ClassSpec, class_targets, differentiable, explaining, model_input, placement, targets_for, uncompiled,
)
from .models import feature_layers, get_layer, model_name
from .shortcut import HeadRecord, Seal, head_record, recording, shortcut_route

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
    """The feature maps A^k of ``layer`` for the images ``x``: (N, C, h, w), computed without autograd (eval mode)."""
    model = uncompiled(model)
    with explaining(model), torch.no_grad():
        return below(model, layer)(model_input(model, x))


@dataclass
class HeadPass:
    """One forward pass through the head, with what later classes need: autograd's record, or the shortcut's."""

    layer: str
    activations: torch.Tensor  # A^k (N, C, h, w)
    scores: torch.Tensor  # y (N, 1000), computed from A^k by the head
    start: torch.Tensor | None = None  # autograd: the leaf A^k the gradients are taken for
    record: HeadRecord | None = None  # shortcut: the classifier's ReLU masks and W1s, as they were for this pass
    seal: Seal | None = None  # the head's weights as they were for this pass: later classes refuse once they change

    @property
    def path(self) -> str:
        return "autograd" if self.record is None else "shortcut"


def map_size(size: tuple[int, int]) -> tuple[int, int]:
    """``size`` as the (height, width) the maps are upsampled to, or one LabError."""
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and
            all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)):
        raise LabError(f"size must be the input's (height, width) in pixels, such as (224, 224), got {size!r}")
    return tuple(size)


def feature_maps(model: nn.Module, activations: torch.Tensor) -> torch.Tensor:
    """``activations`` checked (a float (N, C, h, w) tensor) and detached, in the model's dtype; an
    inference-mode tensor is copied (autograd cannot record from it)."""
    if not isinstance(activations, torch.Tensor) or activations.dim() != 4 or not activations.is_floating_point():
        shape = tuple(activations.shape) if isinstance(activations, torch.Tensor) else type(activations).__name__
        raise LabError(f"expected the feature maps A^k as a float tensor (N, C, h, w), got {shape}: "
                       "make them with features_at(model, layer, x)")
    a = activations.detach().to(dtype=placement(model)[1])
    return a.clone() if a.is_inference() else a


@torch.inference_mode(False)  # the autograd path records a graph, also when called under torch.inference_mode()
def head_pass(
    model: nn.Module, layer: str, activations: torch.Tensor, *, shortcut: bool = True, fold: bool = False
) -> HeadPass:
    """Run the head on A^k: by the shortcut without autograd, else recording autograd's graph.

    ``fold=True`` (shortcut only) also multiplies out the chain for every later class (``HeadRecord.fold``).
    ``activations`` is not changed.
    """
    model = uncompiled(model)
    a = feature_maps(model, activations)
    with explaining(model):
        route = shortcut_route(model, layer) if shortcut else None
        if route is not None and route.shortcut:
            with recording(model, route) as hidden, torch.no_grad():
                scores = head(model, layer)(a)
            record = head_record(model, route, hidden, a)
            if fold:
                record.fold()
            return HeadPass(layer, a, scores, record=record, seal=Seal.of(model, head_weights(model, layer)))
        differentiable(model)
        start = a.requires_grad_(True)
        with torch.enable_grad():
            scores = head(model, layer)(start.clone())  # clone: an inplace ReLU above the layer must not change A^k
    return HeadPass(layer, start, scores, start=start, seal=Seal.of(model, head_weights(model, layer)))


def head_weights(model: nn.Module, layer: str) -> list[str]:
    """The names of the parameters above ``layer`` (``features`` after it and the classifier): what a head pass used."""
    i = layer_index(model, layer)
    names = [f"features.{j}" for j in range(i + 1, len(model.features))] + ["avgpool", "classifier"]
    return [f"{prefix}.{n}" for prefix in names for n, _ in get_layer(model, prefix).named_parameters()]


def weights_from_pass(run: HeadPass, targets: torch.Tensor, *, retain_graph: bool) -> torch.Tensor:
    """Equation (1) for the classes (N, K) from a head pass: alpha_k^c (N, K, C), by autograd or the shortcut."""
    if run.seal is not None:
        run.seal.check()  # a LabError once any weight of the head changed, optimizer steps of every kind included
    if run.record is not None:
        return run.record.alpha(targets)
    try:
        return alpha_weights(class_gradients(run.scores, run.start, targets, retain_graph=retain_graph))
    except RuntimeError as exc:  # autograd's own check of the tensors it saved, the weights among them
        if "modified by an inplace operation" not in str(exc):
            raise
        raise LabError("the model's weights changed since this head pass (an optimizer step, load_state_dict...): "
                       "run head_pass again") from None


@torch.inference_mode(False)
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
    run = head_pass(model, layer, activations)  # checks A^k
    targets = targets_for(run.scores, class_targets(classes, run.scores.shape[0], run.scores.shape[1]))
    alpha = weights_from_pass(run, targets, retain_graph=False)
    return explanation_from_alpha(layer, targets, run.scores, run.activations, alpha, map_size(size), counterfactual,
                                  run.path)


# ---------------------------------------------------------------- for interactive tools: keep the head pass


@torch.inference_mode(False)
def class_weights(run: HeadPass, classes: ClassSpec = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Equation (1) from a kept head pass: ``(classes (N, K), alpha_k^c (N, K, C))``.

    By the shortcut (the kept ``HeadRecord``, no backward pass), else by one backward pass. The
    record of the forward pass stays, so other classes can follow.
    """
    targets = targets_for(run.scores, class_targets(classes, run.scores.shape[0], run.scores.shape[1]))
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
    n, c = run.activations.shape[:2]
    if not (isinstance(classes, torch.Tensor) and isinstance(alpha, torch.Tensor) and classes.dim() == 2
            and classes.shape[0] == n and alpha.shape == (n, classes.shape[1], c)):
        shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in (classes, alpha)]
        raise LabError(f"classes {shapes[0]} and alpha {shapes[1]} do not fit this head pass of {n} images with {c} "
                       f"feature maps: expected (N, K) = ({n}, K) and ({n}, K, {c}), as class_weights(run) returns")
    return explanation_from_alpha(run.layer, classes, run.scores, run.activations, alpha, map_size(size), counterfactual,
                                  run.path)
