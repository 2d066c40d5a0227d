"""Grad-CAM, as the seed's sections 2.2 and 5 describe it, and its counterfactual variant.

For a target class c and the feature maps A^k of a conv layer:

    alpha_k^c = 1/Z sum_i sum_j dy^c/dA^k_ij          (1)  global-average-pooled gradients
    L^c       = ReLU( sum_k alpha_k^c A^k )           (2)  weighted sum of the feature maps

then L^c is upsampled bilinearly to the input size and normalized to [0, 1] (section 5.5).
The counterfactual map uses negated weights, -alpha_k^c: it shows what, if removed, would make
the network *more* sure of class c.

``gradcam(model, x, classes)`` does all of it for a batch of images and several classes at once:
one forward pass, in which the layers below the target layer run without autograd (they need no
gradient), and one backward pass through the head that carries the K classes' gradients together.
Where the exact shortcut of ``labutils.shortcut`` holds (torchvision's VGG-16 and AlexNet at the
seed's layer), there is no backward pass at all: g1 = dy^c/dy1, the gradient at the output of the
classifier's first Linear, is computed by hand from K rows of the last Linear's weight and the
ReLU masks of the forward pass, and equation (1) is ``(W1s^T g1)_k / Z``, the same alpha_k^c. The
result's ``path`` says which way ran.

The result is on the device of the input ``x`` (as Captum's). Nothing is copied to the host and
nothing waits for the GPU, except the checks of the input. On a GPU, the convolutions use TF32 if
PyTorch's global setting allows it (cuDNN's default; the maps then differ from the CPU's by up to a
few percent of their peak): labutils never changes that process-wide setting, which another thread
may rely on. For maps that match the CPU's, switch it off in your own program first:
``torch.backends.cudnn.allow_tf32 = False`` (and keep ``torch.backends.cuda.matmul.allow_tf32``
False, its default).
"""

from __future__ import annotations

import itertools
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import ContextManager, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ClassError, ImageError, LabError, ModelError
from .hooks import capture, explaining, uncompiled
from .models import default_layer, input_fits, min_input_size, output_classes, resolve_class
from .shortcut import Route, head_record, recording, shortcut_route

ClassSpec = Union[int, str, Sequence[Union[int, str]], Sequence[Sequence[Union[int, str]]], torch.Tensor, None]


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


# ---------------------------------------------------------------- the two equations


def alpha_weights(gradients: torch.Tensor) -> torch.Tensor:
    """Equation (1): alpha_k^c, the gradients dy^c/dA^k averaged over the Z = h*w positions. (…, K, h, w) -> (…, K)."""
    return gradients.mean(dim=(-2, -1))


def combine(alpha: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """Equation (2): L^c = ReLU(sum_k alpha_k^c A^k). alpha (…, K), A (…, K, h, w) -> (…, h, w)."""
    return F.relu((alpha[..., None, None] * activations).sum(dim=-3))


# ---------------------------------------------------------------- post-processing (section 5.5)


def normalize(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map (last two dims) to [0, 1]; a flat map becomes all zeros, never NaN."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / torch.where(span > 0, span, 1), torch.zeros_like(maps))


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (…, h, w) maps to ``size`` (the input image's height and width)."""
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    return F.interpolate(flat, size=size, mode="bilinear", align_corners=False).reshape(*lead, *size)


def postprocess(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Section 5.5: upsample L^c bilinearly to the input size, keep positive values, normalize to [0, 1]."""
    return normalize(F.relu(upsample(raw, size)))


# ---------------------------------------------------------------- targets


def check_images(x: torch.Tensor) -> None:
    """Refuse anything that is not a batch of RGB images (N, 3, H, W) with real, finite values."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        dtype = f" {x.dtype}".replace("torch.", "") if isinstance(x, torch.Tensor) else ""
        raise ImageError(f"expected a float batch of RGB images (N, 3, H, W), got {shape}{dtype}: "
                         "use labutils.load_image")
    if x.shape[0] == 0:
        raise ImageError("the batch of images is empty")
    if x.is_meta:
        raise ImageError("the images are on the meta device: they have a shape but no values; "
                         "make them with labutils.load_image")
    if x.numel() and not torch.isfinite(torch.stack(torch.aminmax(x))).all():  # NaN and +-inf show in min/max
        raise ImageError("the images hold NaN or infinite values: check how the tensor was made")


def model_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` checked against ``model`` and moved to the model's device and dtype (float16 images for a
    float32 model are converted, and the other way round).

    Refuses what is not a batch of finite RGB float images, and images smaller than the model's
    minimum input size (``min_input_size``: 63x63 for AlexNet, 32x32 for VGG-16). A model without
    parameters is placed by its buffers, or else on the CPU.
    """
    check_images(x)
    device, dtype = placement(model)
    height, width = x.shape[-2:]
    if input_fits(model, height, width) is False:
        side = min_input_size(model)
        raise ImageError(f"the images are {height}x{width} pixels, smaller than the {side}x{side} this model needs: "
                         "make them with labutils.load_image (224x224)")
    return x.to(device=device, dtype=dtype)


def placement(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and float dtype of the model's first floating parameter (else buffer; else the CPU, float32)."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    first = next(tensors, None)
    where = first if first is None or first.is_floating_point() else next(
        (t for t in tensors if t.is_floating_point()), first)
    if where is not None and where.is_meta:
        raise ModelError("the model's weights are on the meta device: they have shapes but no values; "
                         "load weights into it (labutils.load_model, or model.to_empty() then load_state_dict)")
    device = where.device if where is not None else torch.device("cpu")
    dtype = where.dtype if where is not None and where.is_floating_point() else torch.float32
    return device, dtype


def class_targets(classes: ClassSpec, n_images: int, outputs: int | None = None) -> torch.Tensor | None:
    """Turn ``classes`` into an (N, K) tensor of class indices (None: each image's top-1 class).

    One class (index or name) applies to every image; a flat list gives one class per image, or K
    classes of the only image when N == 1; a list of N lists gives K classes for every image.
    With ``outputs`` (the model's number of classes, ``output_classes``), indices beyond it are refused.
    """
    if classes is None:
        return None
    classes = classes.tolist() if hasattr(classes, "tolist") else classes  # numpy / torch -> Python
    if isinstance(classes, (int, str)):
        return within(torch.full((n_images, 1), resolve_class(classes), dtype=torch.long), outputs)
    if not isinstance(classes, (list, tuple)):
        raise ClassError(f"class {classes!r} is not a class index or name")
    rows = [r.tolist() if hasattr(r, "tolist") else r for r in classes]
    if not rows:
        raise ClassError("no class given: pass a class index or name, a list of them, or None for the top-1 class")
    odd = [r for r in rows if not isinstance(r, (int, str, list, tuple))]
    if odd:  # 9.5, None, a set...: not "a mix of classes and lists"
        raise ClassError(f"class {odd[0]!r} is not a class index or name")
    if all(isinstance(r, (int, str)) for r in rows):
        if n_images == 1:
            rows = [rows]
        elif len(rows) == n_images:
            rows = [[r] for r in rows]
        else:
            raise ClassError(
                f"got {len(rows)} classes for a batch of {n_images} images: give one class for all, one per image, "
                f"or a list of {n_images} lists (K classes for every image)"
            )
    if not all(isinstance(r, (list, tuple)) for r in rows):
        raise ClassError(
            f"classes {classes!r} mix single classes and lists: give one class for all images, one class per "
            f"image, or a list of {n_images} lists (K classes for every image)"
        )
    if len(rows) != n_images or len({len(r) for r in rows}) != 1 or not rows[0]:
        raise ClassError(f"classes must be {n_images} lists of the same non-zero length, one list per image")
    return within(torch.tensor([[resolve_class(c) for c in r] for r in rows], dtype=torch.long), outputs)


def within(targets: torch.Tensor, outputs: int | None) -> torch.Tensor:
    """``targets`` (on the CPU: nothing waits for a GPU), refused if an index is beyond the model's outputs."""
    largest = int(targets.max())
    if outputs is not None and largest >= outputs:
        raise ClassError(f"class index {largest} is out of range for this model: it has {outputs} outputs "
                         f"(0..{outputs - 1})")
    return targets


# ---------------------------------------------------------------- Grad-CAM


def top_classes(scores: torch.Tensor) -> torch.Tensor:
    """Each image's top-1 class, (N, 1): the class explained when none is given (on the scores' device)."""
    return scores.argmax(dim=1, keepdim=True)


def on_device(targets: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """The class indices on the model's device, copied before the forward pass (so nothing waits for it)."""
    return None if targets is None else targets.to(device, non_blocking=True)


def targets_for(scores: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """The classes (N, K) to explain, on the scores' device: the given ones, or each image's top-1.

    Refuses a model whose output is not class scores (N, classes): a tuple, a dict, a squeezed batch."""
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or (targets is not None and
                                                                     scores.shape[0] != targets.shape[0]):
        got = f"shape {tuple(scores.shape)}" if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ModelError(f"the model's forward returned {got}, not class scores (N images, classes): explain a model "
                         "that returns one (N, classes) tensor (wrap it and pick the scores)")
    return top_classes(scores) if targets is None else targets.to(scores.device)


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


def cam_explanation(
    layer: str,
    targets: torch.Tensor,
    scores: torch.Tensor,
    activations: torch.Tensor,
    gradients: torch.Tensor,
    size: tuple[int, int],
    counterfactual: bool = False,
) -> Explanation:
    """Equations (1) and (2) and section 5.5, from A^k (N, C, h, w) and dy^c/dA^k (N, K, C, h, w)."""
    alpha = alpha_weights(gradients)  # (N, K, C)
    return explanation_from_alpha(layer, targets, scores, activations, alpha, size, counterfactual, "autograd")


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


def lower_precision(device: torch.device, dtype: torch.dtype | None) -> ContextManager:
    """Autocast to ``dtype`` (bfloat16 / float16) for the layers below the target layer; None: float32.

    The capture hook switches autocast off at the layer, so A^k, the head and its gradients are
    float32 (as are equations (1) and (2) and the post-processing).
    """
    if dtype in (None, torch.float32):
        return nullcontext()
    if dtype not in (torch.bfloat16, torch.float16):
        given = f"the string {dtype!r}" if isinstance(dtype, str) else f"{dtype}"
        raise LabError(f"dtype {given} is not supported: use torch.bfloat16, torch.float16 or None (float32)")
    return torch.autocast(device.type, dtype=dtype)


def callers_autocast(device: torch.device, dtype: torch.dtype | None) -> torch.dtype | None:
    """``dtype``, or the caller's ``torch.autocast`` dtype when the call runs inside one (else None)."""
    if dtype is None and torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return dtype


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
    all above in float32. bfloat16 keeps 8 bits of precision, float16 11: over VGG-16's 13 convolutions
    A^k is off by 0.7% against 0.09%, and maps correlate 0.83 to 0.99 with float32 (random weights)
    against 0.995 or more; a map that is a small remainder of cancelling terms moves that much even
    in float32 when A^k is off by 0.7% (bench/RESULTS.md). Prefer float16 where the maps must match.

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
            activations, scores, targets, alpha = alpha_by_autograd(model, layer, images, targets, dtype)
        path = "shortcut" if route is not None and route.shortcut else "autograd"
        size = tuple(x.shape[-2:])
        return explanation_from_alpha(layer, targets, scores, activations, alpha, size, counterfactual, path).to(x.device)
