"""An exact shortcut for equation (1): alpha_k^c from the forward pass, without a backward pass.

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
(392 MB). Equation (1) becomes ``alpha_k^c = (W1s^T g1)_k / Z``: nothing goes back through W1, the
pools or A^k. The maps are the same as autograd's, to float rounding.

Above W1 the classifier is a chain of Linears, ReLUs and Dropouts (eval mode: the identity), so
g1 needs no autograd either (``HeadRecord``): dy^c/dx at the last Linear's input is row c of its
weight W3, each ReLU lets through only where its input was positive (the mask D, the signs of the
Linear's output kept by a hook on the way forward), and each Linear multiplies by its weight::

    g1 = D1 W2^T D2 W3[c]^T        (VGG-16 / AlexNet: W3 1000x4096, W2 4096x4096)

so the forward pass runs without autograd and K classes cost K rows of W3 and one product of K rows
with W2. For an interactive tool, ``HeadRecord.fold`` multiplies the chain out once per image,
P = D2 W2 D1 W1s / Z (4096 x C): every class is then one row of W3 times P.

Whether the identity holds is decided from what the model really computes after the layer
(``shortcut_route``): torchvision's own ``VGG.forward`` / ``AlexNet.forward``, plain Sequentials,
only MaxPool2d after the layer in ``features``, an AdaptiveAvgPool2d, Dropout then a Linear in
``classifier`` and after it only Linears, ReLUs and Dropouts, ending with a Linear, and no hooks on any
of them (nor global module hooks). Anything else, a ReLU after the layer (e.g. the conv
``features.28``) included, falls back to autograd.

W1s is cached per model (on its first Linear). The cache follows the weights: it is keyed on the
weight tensor itself, its autograd version counter (bumped by optimizer steps and
``load_state_dict``), its storage, device and dtype, so replaced parameters (``assign=True``,
``linear.weight = nn.Parameter(...)``) and in-place updates are seen. Changes that bypass the
version counter are not: writing through ``weight.data`` or a numpy view of the weight, and
assigning ``weight.data = ...`` (as ``torch.nn.utils.vector_to_parameters`` does; the new storage
may reuse the old one's address). After those, call ``clear_shortcut_cache()`` (or pass
``shortcut=False``). W2 and W3 are neither copied nor cached: each call reads the model's own
weights, and a kept ``HeadRecord`` (the explorer's) refuses to serve once they have changed in place.
"""

from __future__ import annotations

import threading
import weakref
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torchvision
from torch import nn
from torch.nn.modules import module as torch_module
from torch.nn.utils import parametrize

from .errors import LabError
from .hooks import Capture, capture
from .models import get_layer

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
    reason: str  # why it holds, or why autograd runs instead
    linears: tuple[str, ...] = ()  # the classifier's Linears W1, W2, ... bottom up (e.g. "classifier.0"), shortcut only
    relu: tuple[bool, ...] = ()  # relu[i]: a ReLU lies between linears[i] and linears[i + 1]

    @property
    def linear(self) -> str | None:
        """The name of W1's module, when the shortcut holds."""
        return self.linears[0] if self.linears else None

    @property
    def masked(self) -> tuple[str, ...]:
        """The Linears whose output goes through a ReLU: the signs of their outputs are the ReLU masks."""
        return tuple(name for name, relu in zip(self.linears, self.relu) if relu)


# ---------------------------------------------------------------- does the identity hold?


def has_hooks(module: nn.Module) -> bool:
    """Any forward, backward or pre hook on ``module`` itself."""
    return any(getattr(module, attr, None) for attr in HOOK_DICTS)


def shortcut_route(model: nn.Module, layer: str) -> Route:
    """Decide from the model's code and modules whether the shortcut is exact above ``layer``."""

    def autograd(reason: str) -> Route:
        return Route(False, reason)

    get_layer(model, layer)  # a LayerError if there is no such module
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
    for j, m in enumerate(classifier):
        if j > first and type(m) not in (nn.Linear, nn.ReLU, nn.Dropout):
            return autograd(f"classifier.{j} is a {type(m).__name__}: above the first Linear only Linear, ReLU and "
                            "Dropout layers are run backward by hand")
    if type(classifier[-1]) is not nn.Linear:
        return autograd("the classifier does not end with an nn.Linear (the scores y)")
    if any(parametrize.is_parametrized(m) for m in classifier):
        return autograd("a Linear of the classifier is parametrized")
    path = [model, features, *after, avgpool, classifier, *classifier]
    if any(has_hooks(m) for m in path):
        return autograd(f"hooks on the modules above {layer}")
    if any("forward" in vars(m) for m in path):
        return autograd(f"a module above {layer} has a forward of its own (set on the instance)")
    if any(getattr(torch_module, attr) for attr in GLOBAL_HOOKS):
        return autograd("global module hooks are registered (torch.nn.modules.module.register_module_*_hook)")
    linears = [j for j, m in enumerate(classifier) if j >= first and type(m) is nn.Linear]
    if len({id(classifier[j]) for j in linears}) < len(linears):
        return autograd("the same Linear is used twice in the classifier (its hook would see two outputs)")
    relu = [any(type(m) is nn.ReLU for m in classifier[j:k]) for j, k in zip(linears, linears[1:])]
    pools = " + ".join(type(m).__name__ for m in [*after, avgpool])
    return Route(True, f"{layer} -> {pools} -> flatten -> classifier.{first}",
                 tuple(f"classifier.{j}" for j in linears), tuple(relu))


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
    """Forget every cached W1s: needed only after weights changed behind autograd's back (``.data``, numpy,
    ``vector_to_parameters``)."""
    with _CACHE_LOCK:
        _CACHE.clear()


# ---------------------------------------------------------------- equation (1) by the shortcut


def shortcut_alpha(g1: torch.Tensor, summed: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """alpha_k^c = (W1s^T g1)_k / Z from g1 = dy^c/dy1 (N, K, out), W1s (out, C) and A^k (N, C, h, w): (N, K, C)."""
    z = activations.shape[-2] * activations.shape[-1]  # the number of positions of A^k
    return (g1.float() @ summed) / z


@dataclass
class HeadRecord:
    """What one forward pass leaves for computing g1 = dy^c/dy1 by hand, for any class c.

    With the classifier's Linears W1 ... Wm (torchvision: m = 3), ``weights`` holds W2 ... Wm and
    ``masks`` D1 ... D_{m-1}: where the output y_i of Linear i was positive, (N, out_i), or None when
    no ReLU follows it. The weights are the model's own tensors (not copies).
    """

    weights: tuple[torch.Tensor, ...]  # W2 ... Wm
    masks: tuple[torch.Tensor | None, ...]  # D1 ... D_{m-1}
    summed: torch.Tensor  # W1s (out_1, C)
    activations: torch.Tensor  # A^k (N, C, h, w), for Z
    keys: tuple = ()  # the weights' identities when recorded: a later use after they changed is refused
    folded: torch.Tensor | None = None  # P (N, in_m, C), after ``fold()``

    def __post_init__(self) -> None:
        self.keys = tuple(weight_key(w, 0) for w in self.weights)

    def top_rows(self, targets: torch.Tensor) -> torch.Tensor:
        """dy^c/dx at the last Linear's input for the classes (N, K): row c of Wm, (N, K, in_m)."""
        if not self.weights:  # W1 is the last Linear: dy^c/dy1 is one-hot (scatter: no wait for a GPU)
            one_hot = self.summed.new_zeros(*targets.shape, self.summed.shape[0])
            return one_hot.scatter_(-1, targets[..., None], 1.0)
        return self.weights[-1][targets]

    def gradient(self, targets: torch.Tensor) -> torch.Tensor:
        """g1 = dy^c/dy1 for the classes (N, K): (N, K, out_1), top down through the chain."""
        g = self.top_rows(targets)
        for weight, mask in zip(self.weights[-2::-1], self.masks[:0:-1]):  # (W_{m-1}, D_{m-1}) ... (W2, D2)
            g = few_rows_times(through_relu(g, mask), weight)  # dy^c/dx_i, at Linear i's input
        return through_relu(g, self.masks[0]) if self.masks else g

    def alpha(self, targets: torch.Tensor) -> torch.Tensor:
        """Equation (1): alpha_k^c (N, K, C) for the classes (N, K)."""
        if tuple(weight_key(w, 0) for w in self.weights) != self.keys:
            raise LabError("the model's weights changed after this forward pass: run it again (e.g. head_pass)")
        if self.folded is not None:
            return self.top_rows(targets).to(self.folded.dtype) @ self.folded
        return shortcut_alpha(self.gradient(targets), self.summed, self.activations)

    def fold(self) -> torch.Tensor:
        """P = D_{m-1} W_{m-1} ... D1 W1s / Z (N, in_m, C), once: then alpha^c = (row c of Wm) P, for any class."""
        z = self.activations.shape[-2] * self.activations.shape[-1]
        p = (self.summed / z).expand(self.activations.shape[0], *self.summed.shape)  # (N, out_1, C)
        for i, mask in enumerate(self.masks):
            if mask is not None:
                p = p * mask[..., None]  # D_i
            if i + 1 < len(self.weights):
                p = self.weights[i].float() @ p  # W_{i+2} (out, in) @ (N, in, C)
        self.folded = p
        return p


def through_relu(g: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """A ReLU's backward pass: the gradient (N, K, n) where its input was positive (mask (N, n)); None: no ReLU."""
    return g if mask is None else g * mask[:, None]


def few_rows_times(g: torch.Tensor, weight: torch.Tensor, block: int = 64) -> torch.Tensor:
    """``g @ weight`` for a few rows g (N, K, out) and a large weight (out, in).

    On the CPU, MKL's product of 2 to 16 rows with a 4096x4096 matrix first copies ("packs") all of
    the matrix and costs 4 to 5 times the product of one row (AlexNet's W2, 5 rows: ~22 ms against
    ~4.4 ms). Taken ``block`` rows of ``weight`` at a time, what is packed stays in the cache (~10 ms,
    bench/RESULTS.md). One row, many rows or a GPU: one plain product.
    """
    rows = g.reshape(-1, g.shape[-1])
    if g.device.type != "cpu" or not 1 < rows.shape[0] <= 16:
        return g @ weight
    out = rows.new_zeros(rows.shape[0], weight.shape[1])
    for i in range(0, weight.shape[0], block):
        out.addmm_(rows[:, i : i + block], weight[i : i + block])
    return out.reshape(*g.shape[:-1], weight.shape[1])


@contextmanager
def recording(model: nn.Module, route: Route) -> Iterator[list[Capture]]:
    """Hooks that keep the outputs of the Linears that feed a ReLU (``route.masked``) while the block runs."""
    with ExitStack() as hooks:
        yield [hooks.enter_context(capture(model, name, save_gradients=False, feature_map=False))
               for name in route.masked]


def head_record(model: nn.Module, route: Route, seen: list[Capture], activations: torch.Tensor) -> HeadRecord:
    """The ``HeadRecord`` of one forward pass: the masks from what ``recording`` saw, the model's weights, W1s."""
    signs = {c.layer: c.activations.detach() > 0 for c in seen}
    return HeadRecord(
        weights=tuple(get_layer(model, name).weight.detach() for name in route.linears[1:]),
        masks=tuple(signs.get(name) for name in route.linears[:-1]),
        summed=summed_weights(get_layer(model, route.linears[0]), activations.shape[1]),
        activations=activations,
    )
