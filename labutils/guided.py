"""Guided Backpropagation and Guided Grad-CAM (the seed's Figure 1, right-hand branch).

Guided Backpropagation changes one rule of the backward pass: at every ReLU, a gradient passes
only where the ReLU's input was positive (the usual ReLU rule) *and* the gradient itself is
positive. The gradient that reaches the image then shows fine, high-resolution detail, but it is
hardly class-discriminative. Multiplying it elementwise by the (upsampled) Grad-CAM map of a class
keeps the detail inside the regions that matter for that class: Guided Grad-CAM.

The model is not modified: the rule is added with hooks that exist only during the call, and
act only on the forward pass of the thread that added them. As for ``gradcam``, a call runs in eval
mode, one call at a time per model, and its results are on the device of the input.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from .gradcam import Explanation, alpha_weights, class_gradients, explanation_from_alpha
from .hooks import capture
from .inputs import (
    ClassSpec, class_targets, differentiable, explaining, model_input, on_device, targets_for, uncompiled,
)
from .models import default_layer, output_classes
from .shortcut import Route, head_record, recording, shortcut_route


def guided_relu_gradient(grad: torch.Tensor) -> torch.Tensor:
    """The extra guided rule at a ReLU's output: only positive gradients flow back."""
    return grad.clamp(min=0)


@dataclass
class GuidedRule:
    """The switch of the guided rule: while ``on`` is False, backward passes use the ordinary ReLU rule."""

    on: bool = True


@contextmanager
def guided_relus(model: nn.Module) -> Iterator[GuidedRule]:
    """Inside the block, every ``nn.ReLU`` of ``model`` follows the guided backpropagation rule.

    A forward hook puts ``guided_relu_gradient`` on each ReLU's output; the ReLU's own backward then
    applies the usual mask (input > 0). Works with ``inplace=True`` ReLUs; nothing is replaced.
    The block gets the rule's switch: ``guided_gradcam`` turns it off for an ordinary backward pass
    (Grad-CAM) from the same forward pass as the guided one.
    """
    rule = GuidedRule()
    owner = threading.get_ident()  # another thread's forward pass on the model is left alone

    def guided_if_on(grad: torch.Tensor) -> torch.Tensor:
        return guided_relu_gradient(grad) if rule.on else grad

    def add_rule(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if output.requires_grad and threading.get_ident() == owner:
            output.register_hook(guided_if_on)

    handles = [m.register_forward_hook(add_rule) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        yield rule
    finally:
        for handle in handles:
            handle.remove()


def gradient_image(gradients: torch.Tensor) -> torch.Tensor:
    """Map input gradients (…, 3, H, W) to [0, 1] for display: centred on 0.5, 0.1 per standard deviation."""
    dims = (-3, -2, -1)
    centred = gradients - gradients.mean(dim=dims, keepdim=True)
    scaled = centred / (centred.std(dim=dims, keepdim=True) + 1e-5)
    return (scaled * 0.1 + 0.5).clamp(0, 1)


def input_gradients(scores: torch.Tensor, image: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """d y^c / d image for the K classes (N, K) of every image: (N, K, 3, H, W), one backward pass per class."""
    y_c = scores.gather(1, targets.to(scores.device))  # (N, K)
    k = y_c.shape[1]
    gradients = [
        torch.autograd.grad(y_c[:, j].sum(), image, retain_graph=j < k - 1)[0] for j in range(k)
    ]  # the forward pass is shared; the last backward pass frees its graph
    return torch.stack(gradients, dim=1)


@torch.inference_mode(False)
def guided_backprop(model: nn.Module, x: torch.Tensor, classes: ClassSpec = None) -> Explanation:
    """Guided Backpropagation: d y^c / d image with the guided ReLU rule, (N, K, 3, H, W)."""
    model = uncompiled(model)
    differentiable(model)  # guided backprop differentiates the whole network
    image = model_input(model, x).detach().clone().requires_grad_(True)  # checked; the model's device and dtype
    targets = class_targets(classes, x.shape[0], output_classes(model))
    with explaining(model):
        device = image.device
        targets = on_device(targets, device)
        with guided_relus(model), torch.enable_grad():
            scores = model(image)
            targets = targets_for(scores, targets)
            raw = input_gradients(scores, image, targets)
    y_c = scores.detach().gather(1, targets)
    return Explanation("guided-backprop", None, targets, y_c, raw, gradient_image(raw)).to(x.device)


@torch.inference_mode(False)
def guided_gradcam(
    model: nn.Module, x: torch.Tensor, classes: ClassSpec = None, layer: str | None = None, *, shortcut: bool = True
) -> Explanation:
    """Guided Grad-CAM: Guided Backpropagation times the upsampled Grad-CAM map, (N, K, 3, H, W).

    Both come from one forward pass: Grad-CAM by a first backward pass, with the guided rule off,
    that stops at ``layer`` (or, by the shortcut of ``labutils.shortcut``, by hand from the forward
    pass, without a backward pass: ``shortcut=False`` turns that off); then the rule is switched on
    for the backward pass to the image.
    """
    model = uncompiled(model)
    differentiable(model)  # guided backprop differentiates the whole network
    image = model_input(model, x).detach().clone().requires_grad_(True)  # checked; the model's device and dtype
    layer = default_layer(model) if layer is None else layer  # "" is refused, not the default
    targets = class_targets(classes, x.shape[0], output_classes(model))
    with explaining(model):
        device = image.device
        targets = on_device(targets, device)
        route = shortcut_route(model, layer) if shortcut else Route(False, "shortcut=False")
        with capture(model, layer, save_gradients=False) as seen, guided_relus(model) as rule, torch.enable_grad(), \
                recording(model, route) as hidden:
            scores = model(image)
            targets = targets_for(scores, targets)
            if route.shortcut:
                alpha = head_record(model, route, hidden, seen.activations.detach()).alpha(targets)
            else:
                rule.on = False
                alpha = alpha_weights(class_gradients(scores, seen.activations, targets, retain_graph=True))
                rule.on = True
            guided = input_gradients(scores, image, targets)  # (N, K, 3, H, W)
    path = "shortcut" if route.shortcut else "autograd"
    cam = explanation_from_alpha(layer, targets, scores, seen.activations, alpha, tuple(x.shape[-2:]), False, path)
    return guided_times_cam(guided, cam).to(x.device)


def guided_times_cam(guided: torch.Tensor, cam: Explanation) -> Explanation:
    """Guided Grad-CAM from its two halves: guided input gradients (N, K, 3, H, W) times the Grad-CAM maps."""
    raw = guided * cam.maps[:, :, None]
    return Explanation("guided-gradcam", cam.layer, cam.classes, cam.scores, raw, gradient_image(raw), cam.path)
