"""Grad-CAM, as the seed's sections 2.2 and 5 describe it, and its counterfactual variant.

For a target class c and the feature maps A^k of a conv layer:

    alpha_k^c = 1/Z sum_i sum_j dy^c/dA^k_ij          (1)  global-average-pooled gradients
    L^c       = ReLU( sum_k alpha_k^c A^k )           (2)  weighted sum of the feature maps

then L^c is upsampled bilinearly to the input size and normalized to [0, 1] (section 5.5). These
formulas are ``labutils.equations``; this module runs them on a network. The counterfactual map
uses negated weights, -alpha_k^c: it shows what, if removed, would make the network *more* sure of
class c.

``gradcam(model, x, classes)`` does all of it for a batch of images and several classes at once:
one forward pass, in which the layers below the target layer run without autograd (they need no
gradient), and one backward pass through the head that carries the K classes' gradients together.
Where the exact shortcut of ``labutils.shortcut`` holds (torchvision's VGG-16 and AlexNet at the
seed's layer), equation (1) is computed from the forward pass alone, with no backward pass. The
result's ``path`` says which way ran. The checks of the input, the classes and the precision are in
``labutils.inputs``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .equations import alpha_weights, combine, normalize, postprocess, upsample  # noqa: F401  (importable from here)
from .hooks import capture
from .inputs import (
    ClassSpec, callers_autocast, class_targets, explaining, lower_precision, model_input, on_device, targets_for,
    uncompiled,
)
from .inputs import check_images, placement, top_classes, within  # noqa: F401  (still importable from here)
from .inputs import differentiable
from .models import default_layer, output_classes
from .shortcut import Route, head_record, recording, shortcut_route


@dataclass
class Explanation:
    """The result of one explanation call, for N images and K classes each."""

    method: str  # "gradcam", "counterfactual", "guided-backprop" or "guided-gradcam"
    layer: str | None  # the target layer (None for guided backprop alone)
    classes: torch.Tensor  # (N, K) class indices c
    scores: torch.Tensor  # (N, K) class scores y^c (logits)
    raw: torch.Tensor  # (N, K, h, w): L^c at the layer's resolution; guided: (N, K, 3, H, W) input gradients
    maps: torch.Tensor  # (N, K, H, W) in [0, 1]; guided: (N, K, 3, H, W) in [0, 1] for display
    path: str | None = None  # how equation (1) ran: "shortcut" (labutils.shortcut) or "autograd"

    def to(self, device: torch.device | str) -> "Explanation":
        """The same explanation with its tensors on ``device`` (e.g. ``"cpu"`` before ``.numpy()``)."""
        return replace(self, classes=self.classes.to(device), scores=self.scores.to(device),
                       raw=self.raw.to(device), maps=self.maps.to(device))


# ---------------------------------------------------------------- dy^c/dA^k for K classes, one backward pass


def one_hot_seeds(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Where the backward pass starts, dy^c/dy for K classes: (K, N, 1000), seed j is 1 at image i's class c_ij."""
    seeds = torch.zeros(targets.shape[1], *scores.shape, dtype=scores.dtype, device=scores.device)
    return seeds.scatter_(2, targets.T[..., None].to(scores.device), 1.0)


def class_gradients(
    scores: torch.Tensor, activations: torch.Tensor, targets: torch.Tensor, *, retain_graph: bool = False
) -> torch.Tensor:
    """dy^c/dA^k for the K classes (N, K) of every image: (N, K, C, h, w), from ONE backward pass.

    One class: a plain backward pass from y^c. K classes: the backward pass carries the K one-hot
    seeds together (autograd's ``is_grads_batched``): each layer of the head multiplies its weights
    with all K gradients at once, and the forward pass that produced ``scores`` is shared by all
    classes. (``activations`` may be any tensor of the head's graph: the shortcut passes W1's output.)
    Under ``torch.autograd.set_detect_anomaly(True)``, whose checks cannot run batched, one backward
    pass per class.
    """
    seeds = one_hot_seeds(scores, targets)  # (K, N, 1000)
    if seeds.shape[0] == 1 or torch.is_anomaly_enabled():
        last = seeds.shape[0] - 1
        return torch.stack([torch.autograd.grad(scores, activations, seed, retain_graph=retain_graph or k < last)[0]
                            for k, seed in enumerate(seeds)], dim=1)  # (N, K, C, h, w)
    (gradients,) = torch.autograd.grad(
        scores, activations, seeds, retain_graph=retain_graph, is_grads_batched=True
    )  # (K, N, C, h, w)
    return gradients.transpose(0, 1)


# ---------------------------------------------------------------- Grad-CAM


def explanation_from_alpha(
    layer: str,
    targets: torch.Tensor,
    scores: torch.Tensor,
    activations: torch.Tensor,
    alpha: torch.Tensor,
    size: tuple[int, int],
    counterfactual: bool = False,
    path: str = "autograd",
) -> Explanation:
    """Equation (2) and section 5.5, from A^k (N, C, h, w) and the weights alpha_k^c (N, K, C)."""
    if counterfactual:
        alpha = -alpha  # the seed's counterfactual weights
    raw = combine(alpha, activations.detach().float()[:, None])  # (N, K, h, w)
    targets = targets.to(scores.device)
    return Explanation(
        method="counterfactual" if counterfactual else "gradcam",
        layer=layer,
        classes=targets,
        scores=scores.detach().float().gather(1, targets),  # (N, K): y^c
        raw=raw,
        maps=postprocess(raw, size),
        path=path,
    )


def alpha_by_autograd(
    model: nn.Module, layer: str, images: torch.Tensor, targets: torch.Tensor | None, dtype: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Equation (1) from dy^c/dA^k: the backward pass runs through the whole head, down to A^k.

    Returns A^k (N, C, h, w), the scores y (N, 1000), the classes (N, K) and alpha_k^c (N, K, C).
    """
    with capture(model, layer, cut_graph=True, save_gradients=False) as seen, torch.no_grad():
        with lower_precision(images.device, dtype):
            scores = model(images)  # (N, 1000); autograd records only the layers above `layer`
        targets = targets_for(scores, targets)
        gradients = class_gradients(scores, seen.activations, targets)  # (N, K, C, h, w)
    return seen.activations, scores, targets, alpha_weights(gradients)


def alpha_by_shortcut(
    model: nn.Module, layer: str, route: Route, images: torch.Tensor, targets: torch.Tensor | None,
    dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Equation (1) by the shortcut (``labutils.shortcut``): one forward pass without autograd, no backward pass.

    Hooks keep A^k and the signs of the classifier's hidden layers (its ReLU masks), from which
    g1 = dy^c/dy1 is computed by hand. Same returns as ``alpha_by_autograd``.
    """
    with capture(model, layer, save_gradients=False) as seen, recording(model, route) as hidden, torch.no_grad():
        with lower_precision(images.device, dtype):
            scores = model(images)
        targets = targets_for(scores, targets)
        alpha = head_record(model, route, hidden, seen.activations).alpha(targets)
    return seen.activations, scores, targets, alpha


@torch.inference_mode(False)  # gradients are needed, also when called under torch.inference_mode()
def gradcam(
    model: nn.Module,
    x: torch.Tensor,
    classes: ClassSpec = None,
    layer: str | None = None,
    *,
    counterfactual: bool = False,
    shortcut: bool = True,
    dtype: torch.dtype | None = None,
) -> Explanation:
    """Grad-CAM maps of ``classes`` for the images ``x`` (N, 3, H, W) at ``layer`` (default: last ReLU).

    ``counterfactual=True`` uses the seed's negated weights -alpha_k^c. ``shortcut=True`` computes
    equation (1) by the exact shortcut of ``labutils.shortcut`` where it holds, by autograd
    elsewhere (the result's ``path`` says which); ``shortcut=False`` always uses autograd.
    ``dtype=torch.bfloat16`` or ``torch.float16``: the layers below ``layer`` run under autocast; A^k and
    all above in float32 (how far the maps move: ``labutils.inputs.lower_precision``).

    The result is on the device of ``x``. The call runs in eval mode and is thread-safe; the model
    (its hooks, modes, BatchNorm statistics, parameters' ``.grad``) and ``x`` are left exactly as
    they were. A ``torch.compile``d model is explained through the module it wraps.
    """
    model = uncompiled(model)
    images = model_input(model, x)  # checked; on the model's device, in its dtype; fits its input size
    layer = default_layer(model) if layer is None else layer  # "" is refused, not the default
    targets = class_targets(classes, x.shape[0], output_classes(model))
    device = images.device
    dtype = callers_autocast(device, dtype)
    lower_precision(device, dtype)  # an unsupported dtype: LabError before anything runs
    with explaining(model), torch.autocast(device.type, enabled=False):  # only the layers below `layer` autocast
        targets = on_device(targets, device)
        route = shortcut_route(model, layer) if shortcut else None
        if route is not None and route.shortcut:
            activations, scores, targets, alpha = alpha_by_shortcut(model, layer, route, images, targets, dtype)
        else:
            differentiable(model)
            activations, scores, targets, alpha = alpha_by_autograd(model, layer, images, targets, dtype)
        path = "shortcut" if route is not None and route.shortcut else "autograd"
        size = tuple(x.shape[-2:])
        return explanation_from_alpha(layer, targets, scores, activations, alpha, size, counterfactual, path).to(x.device)
