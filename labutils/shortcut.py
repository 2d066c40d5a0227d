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

Class-level patches and torch's extension points are seen too: the route falls back to autograd
while a ``TorchFunctionMode`` or ``TorchDispatchMode`` is active, when ``nn.ReLU.forward``,
``nn.Linear.forward`` (or the forward of the other layers on the way, ``nn.Module.__call__``),
``F.linear``, ``F.relu``, ``torch.flatten``... are not the objects torch defined when labutils was
imported, or when a classifier weight is a tensor subclass. Out of reach (autograd then is the only
proof): a patch made before labutils was imported that keeps torch's function objects, kernels
replaced below Python (``torch.library`` overrides of aten operators), and a forward that reads
global state the route cannot see.

W1s is cached per first Linear (a weak reference to the module, none to its parameters: swap mode,
``load_state_dict(assign=True)``, ``to()`` and ``double()`` work as usual; the entry goes with the
module). An entry is used only while it is provably fresh (``fresh``): the weight is the same tensor
(id, storage, version counter, device, dtype, shape, strides), no optimizer has stepped since
(``torch.optim``'s global step post hook, registered once on first use, follows every optimizer:
fused, foreach, single-tensor, capturable) and a fingerprint, a strided sample of two entries in
every row of W1, is unchanged (tens of microseconds: ``bench/RESULTS.md``). So ``.data`` and numpy
edits, ``torch._foreach_*``, ``nn.init`` and in-place edits under ``no_grad`` or ``inference_mode``
are seen as soon as they change a whole row or tensor. The one change that can go unseen is an edit
behind autograd's back (``.data``, numpy) of entries none of which is sampled, outside any optimizer
step: after one, call ``clear_shortcut_cache()`` (or pass ``shortcut=False``). On a GPU W1s is not
cached at all (summing W1 costs about a tenth of a millisecond there, and proving a cache fresh would
make the host wait for the device). W2 and W3 are neither copied nor cached: each call reads the
model's own weights, and a kept head pass (the explorer's) refuses to serve once any weight of the
head has changed (``Seal``).
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
from torch.optim.optimizer import register_optimizer_step_post_hook

from .errors import LabError
from .hooks import Capture, capture
from .models import get_layer

TORCHVISION_FORWARDS = (torchvision.models.VGG.forward, torchvision.models.AlexNet.forward)
HOOK_DICTS = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
    "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs",
)
F = nn.functional
RUNS = (  # what the head's forward runs, (owner, attribute): each must be the object torch defined at import
    (nn.Module, "__call__"), (nn.Module, "_call_impl"), (nn.Module, "_wrapped_call_impl"),
    (nn.Sequential, "forward"), (nn.ReLU, "forward"), (nn.Linear, "forward"), (nn.Dropout, "forward"),
    (nn.MaxPool2d, "forward"), (nn.AdaptiveAvgPool2d, "forward"),
    (torchvision.models.VGG, "forward"), (torchvision.models.AlexNet, "forward"),
    (F, "linear"), (F, "relu"), (F, "dropout"), (F, "max_pool2d"), (F, "adaptive_avg_pool2d"),
    (F, "_max_pool2d"), (torch, "flatten"), (torch, "relu"), (torch, "relu_"), (torch, "max_pool2d"),
    (torch, "dropout"), (torch._C._nn, "linear"), (torch._C._nn, "adaptive_avg_pool2d"),
)
AT_IMPORT = tuple(getattr(owner, name) for owner, name in RUNS)
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


def patched() -> str | None:
    """What makes torch itself run something else than at import: an active torch function / dispatch mode, or a
    class-level patch of one of the functions the head runs (``RUNS``); None when nothing is seen."""
    if torch._C._len_torch_function_stack() or torch._C._len_torch_dispatch_stack():
        return "a TorchFunctionMode or TorchDispatchMode is active (it may change what every operation computes)"
    for (owner, name), original in zip(RUNS, AT_IMPORT):
        if getattr(owner, name, None) is not original:
            return f"{getattr(owner, '__name__', owner)}.{name} is not the function torch defined"
    return None


def shortcut_route(model: nn.Module, layer: str) -> Route:
    """Decide from the model's code and modules whether the shortcut is exact above ``layer``."""

    def autograd(reason: str) -> Route:
        return Route(False, reason)

    get_layer(model, layer)  # a LayerError if there is no such module
    why = patched()
    if why is not None:
        return autograd(why)
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
    if any(type(p) not in (torch.Tensor, nn.Parameter) for p in classifier.parameters()):
        return autograd("a weight of the classifier is a tensor subclass (its operations may compute anything)")
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


# ---------------------------------------------------------------- proving the weights unchanged

_STEPS = [0]  # optimizer steps taken in this process (any optimizer), counted by ``_count_step``
_STEP_HOOK: list = []  # the handle of the global optimizer step post hook, once registered


def _count_step(optimizer: object, args: tuple, kwargs: dict) -> None:
    _STEPS[0] += 1


def optimizer_steps() -> int:
    """How many optimizer steps ran since labutils first looked (every ``torch.optim.Optimizer``, fused or not)."""
    with _CACHE_LOCK:
        if not _STEP_HOOK:  # registered once, lazily: importing labutils changes nothing in torch
            _STEP_HOOK.append(register_optimizer_step_post_hook(_count_step))
    return _STEPS[0]


def weight_key(weight: torch.Tensor) -> tuple:
    """What identifies the tensor behind ``weight`` and its last known write (no reference to it is kept)."""
    version = None if weight.is_inference() else weight._version  # inference tensors keep no version counter
    return (id(weight), version, weight.data_ptr(), weight.device, weight.dtype, tuple(weight.shape),
            weight.stride(), weight.storage_offset(), optimizer_steps())


def fingerprint(weight: torch.Tensor, per_row: int = 2) -> torch.Tensor:
    """A strided view of ``per_row`` entries in every row of ``weight`` (dim 0), spread over the columns.

    A view, not a copy: ``torch.equal(kept, fingerprint(w))`` reads about 2 x rows values (W1: 8192),
    a whole row or tensor changed through ``.data``, numpy or ``torch._foreach_*`` changes some of them.
    """
    w = weight.detach()
    if w.dim() != 2:
        w = w.reshape(w.shape[0] if w.dim() else 1, -1)
    rows, cols = w.shape
    if rows == 0 or cols == 0:
        return w
    k = min(per_row, cols)
    step = cols // k  # sample j of row i sits at column i * shift + j * step < cols
    shift = (step - 1) // max(rows - 1, 1)
    return w.as_strided((rows, k), (w.stride(0) + shift * w.stride(1), step * w.stride(1)))


@dataclass
class Seal:
    """What the named parameters of a model were at one moment; ``check`` refuses once any of them changed."""

    model: weakref.ref  # the model (a weak reference: nothing here keeps it alive)
    names: tuple[str, ...]
    keys: tuple[tuple, ...]
    samples: tuple[torch.Tensor, ...]  # copies of the fingerprints

    @classmethod
    def of(cls, model: nn.Module, names: list[str] | tuple[str, ...]) -> "Seal":
        weights = [model.get_parameter(n) for n in names]
        return cls(weakref.ref(model), tuple(names), tuple(weight_key(w) for w in weights),
                   tuple(fingerprint(w).clone() for w in weights))

    def changed(self) -> str | None:
        """The first parameter that is not what it was (or why it cannot be told), or None."""
        model = self.model()
        if model is None:
            return "the model is gone"
        if self.keys and self.keys[0][-1] != optimizer_steps():
            return "an optimizer stepped"
        for name, key, sample in zip(self.names, self.keys, self.samples):
            try:
                w = model.get_parameter(name)
            except AttributeError:
                return f"{name} is no longer a parameter of the model"
            if weight_key(w) != key or not torch.equal(fingerprint(w), sample):
                return f"{name} changed"
        return None

    def check(self) -> None:
        why = self.changed()
        if why is not None:
            raise LabError(f"the model's weights changed since this head pass ({why}): run head_pass again "
                           "(the explorer: load the image again)")


# ---------------------------------------------------------------- W1s, cached per model


@dataclass
class _Summed:
    key: tuple  # ``weight_key`` of W1 and the number of channels when W1s was computed
    sample: torch.Tensor  # a copy of W1's fingerprint then
    summed: torch.Tensor  # W1s (out_features, C)


_CACHE: "weakref.WeakKeyDictionary[nn.Module, _Summed]" = weakref.WeakKeyDictionary()  # keyed by W1's module
_CACHE_LOCK = threading.RLock()


def summed_weights(linear: nn.Linear, channels: int) -> torch.Tensor:
    """W1s (out_features, C): W1 summed over each of the C channels' positions; cached on the CPU, never stale."""
    weight = linear.weight
    if linear.in_features % channels:
        raise ValueError(f"{linear.in_features} inputs of the first Linear are not {channels} channels' positions")

    def summed() -> torch.Tensor:
        with torch.no_grad():
            return weight.detach().reshape(weight.shape[0], channels, -1).sum(dim=2, dtype=torch.float32)

    if weight.device.type != "cpu":
        return summed()
    key = (weight_key(weight), channels)
    with _CACHE_LOCK:
        found = _CACHE.get(linear)
        if found is not None and found.key == key and torch.equal(found.sample, fingerprint(weight)):
            return found.summed
        entry = _Summed(key, fingerprint(weight).clone(), summed())
        _CACHE[linear] = entry
        return entry.summed


def clear_shortcut_cache() -> None:
    """Forget every cached W1s: needed only after an edit behind autograd's back (``.data``, numpy) that changed
    none of the sampled entries (see the module's docstring)."""
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
    no ReLU follows it. The weights are the model's own tensors (not copies): a record kept for later
    is used together with a ``Seal`` of them (``cached.head_pass``).
    """

    weights: tuple[torch.Tensor, ...]  # W2 ... Wm
    masks: tuple[torch.Tensor | None, ...]  # D1 ... D_{m-1}
    summed: torch.Tensor  # W1s (out_1, C)
    activations: torch.Tensor  # A^k (N, C, h, w), for Z
    folded: torch.Tensor | None = None  # P (N, in_m, C), after ``fold()``

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
