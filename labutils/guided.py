"""Guided Backpropagation and Guided Grad-CAM (the seed's Figure 1, right-hand branch).

Guided Backpropagation changes one rule of the backward pass: at every ReLU, a gradient passes
only where the ReLU's input was positive (the usual ReLU rule) *and* the gradient itself is
positive. The gradient that reaches the image then shows fine, high-resolution detail, but it is
hardly class-discriminative. Multiplying it elementwise by the (upsampled) Grad-CAM map of a class
keeps the detail inside the regions that matter for that class: Guided Grad-CAM.

The model is not modified: the rule is added with hooks that exist only during the call.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from .gradcam import ClassSpec, Explanation, check_images, class_targets, gradcam


def guided_relu_gradient(grad: torch.Tensor) -> torch.Tensor:
    """The extra guided rule at a ReLU's output: only positive gradients flow back."""
    return grad.clamp(min=0)


@contextmanager
def guided_relus(model: nn.Module) -> Iterator[None]:
    """Inside the block, every ``nn.ReLU`` of ``model`` follows the guided backpropagation rule.

    A forward hook puts ``guided_relu_gradient`` on each ReLU's output; the ReLU's own backward then
    applies the usual mask (input > 0). Works with ``inplace=True`` ReLUs; nothing is replaced.
    """

    def add_rule(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if output.requires_grad:
            output.register_hook(guided_relu_gradient)

    handles = [m.register_forward_hook(add_rule) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def gradient_image(gradients: torch.Tensor) -> torch.Tensor:
    """Map input gradients (…, 3, H, W) to [0, 1] for display: centred on 0.5, 0.1 per standard deviation."""
    dims = (-3, -2, -1)
    centred = gradients - gradients.mean(dim=dims, keepdim=True)
    scaled = centred / (centred.std(dim=dims, keepdim=True) + 1e-5)
    return (scaled * 0.1 + 0.5).clamp(0, 1)


def guided_backprop(model: nn.Module, x: torch.Tensor, classes: ClassSpec = None) -> Explanation:
    """Guided Backpropagation: d y^c / d image with the guided ReLU rule, (N, K, 3, H, W)."""
    check_images(x)
    targets = class_targets(classes, x.shape[0])
    device = next(model.parameters()).device
    image = x.detach().to(device).clone().requires_grad_(True)
    with guided_relus(model), torch.enable_grad():
        scores = model(image)
        if targets is None:
            targets = scores.argmax(dim=1, keepdim=True).cpu()
        y_c = scores.gather(1, targets.to(device))  # (N, K)
        k = y_c.shape[1]
        gradients = [
            torch.autograd.grad(y_c[:, j].sum(), image, retain_graph=j < k - 1)[0] for j in range(k)
        ]  # one backward per class; the forward pass is shared
    raw = torch.stack(gradients, dim=1).cpu()  # (N, K, 3, H, W)
    return Explanation("guided-backprop", None, targets, y_c.detach().cpu(), raw, gradient_image(raw))


def guided_gradcam(
    model: nn.Module, x: torch.Tensor, classes: ClassSpec = None, layer: str | None = None
) -> Explanation:
    """Guided Grad-CAM: Guided Backpropagation times the upsampled Grad-CAM map, (N, K, 3, H, W)."""
    cam = gradcam(model, x, classes, layer)
    guided = guided_backprop(model, x, cam.classes)
    raw = guided.raw * cam.maps[:, :, None]
    return Explanation("guided-gradcam", cam.layer, cam.classes, cam.scores, raw, gradient_image(raw))
