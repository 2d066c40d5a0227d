"""An exact shortcut for equation (1): alpha_k^c without the backward pass through the first Linear.

Equation (1) needs only the *sum* over positions of each gradient map dy^c/dA^k, never the map
itself. On torchvision's VGG-16 and AlexNet, at the seed's layer (the last ReLU: VGG-16
``features.29``, AlexNet ``features.11``), what lies between A^k and the classifier's first Linear
(y1 = W1 v + b1) keeps that sum unchanged on the way back:

* the max-pool (``features.30`` / ``features.12``): each output is the largest input of its window,
  and its backward pass sends that output's gradient to exactly one input position (on a tie, to
  one of them; with overlapping windows a position may collect several). Every output's gradient
  arrives once, nothing else is added: the sum over the inputs is the sum over the outputs.
* the adaptive average pool (``avgpool``, 7x7 / 6x6): output (i, j) is the mean of a window of
  inputs, so its gradient is spread over that window with weights 1/|window|, which sum to 1.
  That holds for every output whatever the input size (windows of different sizes that overlap,
  at 320x256 or 250x333; windows of one position repeated, when the input is smaller than 7x7):
  again the sum over the inputs is the sum over the outputs.
* flatten, and Dropout in eval mode: v holds channel k's P pooled values at k*P ... k*P + P-1.

So with g1 = dy^c/dy1, the gradient at W1's output (N, 4096), and W1^T g1 the gradient at its input::

    sum_ij dy^c/dA^k_ij = sum_p (W1^T g1)_(k*P+p) = (W1s^T g1)_k,    W1s[o, k] = sum_p W1[o, k*P+p]

W1s is W1 summed over each channel's positions: VGG-16 4096x512 (8 MB) instead of 4096x25088
(392 MB). Equation (1) becomes ``alpha_k^c = (W1s^T g1)_k / Z``: the backward pass stops at W1's
output and never reads W1. The maps are the same as autograd's, to float rounding.

Whether the identity holds is decided from what the model really computes after the layer
(``shortcut_route``): torchvision's own ``VGG.forward`` / ``AlexNet.forward``, plain Sequentials,
only MaxPool2d after the layer in ``features``, an AdaptiveAvgPool2d, Dropout then a Linear in
``classifier``, and no hooks on any of them (nor global module hooks). Anything else, a ReLU
after the layer (e.g. the conv ``features.28``) included, falls back to autograd.

W1s is cached per model (on its first Linear). The cache follows the weights: it is keyed on the
weight tensor itself, its autograd version counter (bumped by optimizer steps and
``load_state_dict``), its storage, device and dtype, so replaced parameters (``assign=True``,
``linear.weight = nn.Parameter(...)``) and in-place updates are seen. Changes that bypass the
version counter, writing through ``weight.data`` or a numpy view of the weight, are not: after
those, call ``clear_shortcut_cache()`` (or pass ``shortcut=False``).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch
import torchvision
from torch import nn
from torch.nn.modules import module as torch_module
from torch.nn.utils import parametrize

TORCHVISION_FORWARDS = (torchvision.models.VGG.forward, torchvision.models.AlexNet.forward)
HOOK_DICTS = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
    "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs",
)
GLOBAL_HOOKS = (
    "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks",
    "_global_forward_hooks_always_called",
)


@dataclass(frozen=True)
class Route:
    """Which way equation (1) is computed at one layer, and why."""

    shortcut: bool
    linear: str | None  # the name of W1's module (e.g. "classifier.0"), when the shortcut holds
    reason: str  # why it holds, or why autograd runs instead


# ---------------------------------------------------------------- does the identity hold?


def has_hooks(module: nn.Module) -> bool:
    """Any forward, backward or pre hook on ``module`` itself."""
    return any(getattr(module, attr, None) for attr in HOOK_DICTS)


def shortcut_route(model: nn.Module, layer: str) -> Route:
    """Decide from the model's code and modules whether the shortcut is exact above ``layer``."""

    def autograd(reason: str) -> Route:
        return Route(False, None, reason)

    if type(model).forward not in TORCHVISION_FORWARDS:
        return autograd(f"{type(model).__name__}.forward is not torchvision's VGG/AlexNet forward")
    features, avgpool, classifier = (getattr(model, n, None) for n in ("features", "avgpool", "classifier"))
    for name, part in (("features", features), ("classifier", classifier)):
        if not isinstance(part, nn.Sequential) or type(part).forward is not nn.Sequential.forward:
            return autograd(f"model.{name} is not a plain nn.Sequential")
    if type(avgpool) is not nn.AdaptiveAvgPool2d:
        return autograd("model.avgpool is not an nn.AdaptiveAvgPool2d")
    prefix, _, index = layer.partition(".")
    if prefix != "features" or not index.isdigit() or int(index) >= len(features):
        return autograd(f"layer {layer!r} is not one of the modules of model.features")
    after = list(features[int(index) + 1 :])
    for m in after:
        if type(m) is not nn.MaxPool2d or m.return_indices:
            return autograd(f"a {type(m).__name__} follows {layer} (only max-pools keep the sum of the gradient)")
    first = next((j for j, m in enumerate(classifier) if type(m) is not nn.Dropout), None)
    if first is None or type(classifier[first]) is not nn.Linear:
        return autograd("the classifier does not start with (Dropout and) an nn.Linear")
    linear = classifier[first]
    if parametrize.is_parametrized(linear):
        return autograd("the classifier's first Linear is parametrized")
    path = [model, features, *after, avgpool, classifier, *classifier[: first + 1]]
    if any(has_hooks(m) for m in path):
        return autograd(f"hooks on the modules between {layer} and the first Linear")
    if any(getattr(torch_module, attr) for attr in GLOBAL_HOOKS):
        return autograd("global module hooks are registered (torch.nn.modules.module.register_module_*_hook)")
    pools = " + ".join(type(m).__name__ for m in [*after, avgpool])
    return Route(True, f"classifier.{first}", f"{layer} -> {pools} -> flatten -> classifier.{first}")


# ---------------------------------------------------------------- W1s, cached per model


@dataclass
class _Summed:
    key: tuple  # what the weights were when W1s was computed
    weight: weakref.ref  # the weight tensor itself (a replaced Parameter is another tensor)
    summed: torch.Tensor  # W1s (out_features, C)


_CACHE: "weakref.WeakKeyDictionary[nn.Linear, _Summed]" = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def weight_key(weight: torch.Tensor, channels: int) -> tuple:
    """What identifies the values of ``weight``: version counter, storage, device, dtype, shape."""
    return (weight._version, weight.data_ptr(), weight.device, weight.dtype, tuple(weight.shape), channels)


def summed_weights(linear: nn.Linear, channels: int) -> torch.Tensor:
    """W1s (out_features, C): W1 summed over each of the C channels' positions; cached, never stale."""
    weight = linear.weight
    if linear.in_features % channels:
        raise ValueError(f"{linear.in_features} inputs of the first Linear are not {channels} channels' positions")
    key = weight_key(weight, channels)
    with _CACHE_LOCK:
        found = _CACHE.get(linear)
        if found is not None and found.key == key and found.weight() is weight:
            return found.summed
        with torch.no_grad():
            summed = weight.detach().reshape(weight.shape[0], channels, -1).sum(dim=2, dtype=torch.float32)
        _CACHE[linear] = _Summed(key, weakref.ref(weight), summed)
        return summed


def clear_shortcut_cache() -> None:
    """Forget every cached W1s: needed only after weights changed behind autograd's back (``.data``, numpy)."""
    with _CACHE_LOCK:
        _CACHE.clear()


# ---------------------------------------------------------------- equation (1) by the shortcut


def shortcut_alpha(g1: torch.Tensor, summed: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """alpha_k^c = (W1s^T g1)_k / Z from g1 = dy^c/dy1 (N, K, out), W1s (out, C) and A^k (N, C, h, w): (N, K, C)."""
    z = activations.shape[-2] * activations.shape[-1]  # the number of positions of A^k
    return (g1.float() @ summed) / z
