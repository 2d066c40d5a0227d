"""What protects the method: every explanation call checks and places its inputs here first.

Grad-CAM itself (``hooks``, ``gradcam``, ``guided``, ``shortcut``) assumes a batch of finite RGB
images on the model's device, class indices the model has, and a model that is an eager
``nn.Module`` in eval mode that no other call is using. This module makes that true, or refuses
with one clear ``LabError`` before anything runs:

- ``check_images``, ``model_input``, ``placement``: a float (N, 3, H, W) batch of finite values, large
  enough for the model, moved to the model's device and dtype;
- ``ClassSpec``, ``class_targets``, ``within``: the five shapes a class specification may take
  (one class, one per image, K for the only image, N lists of K, None for the top-1), turned into an
  (N, K) tensor of indices the model has;
- ``on_device``, ``targets_for``, ``top_classes``: the class indices where the scores are, and a model
  whose forward does not return (N, classes) scores refused;
- ``lower_precision``, ``callers_autocast``: the autocast policy of ``gradcam(..., dtype=...)``;
- ``explaining``, ``uncompiled``: one call at a time per model, in eval mode, on the eager module.

The result of an explanation is on the device of the input ``x`` (as Captum's). Nothing is copied
to the host and nothing waits for the GPU, except the checks of the input. On a GPU, the
convolutions use TF32 if PyTorch's global setting allows it (cuDNN's default; the maps then differ
from the CPU's by up to a few percent of their peak): labutils never changes that process-wide
setting, which another thread may rely on. For maps that match the CPU's, switch it off in your own
program first: ``torch.backends.cudnn.allow_tf32 = False`` (and keep
``torch.backends.cuda.matmul.allow_tf32`` False, its default).
"""

from __future__ import annotations

import itertools
import sys
import threading
import weakref
from contextlib import contextmanager, nullcontext
from typing import ContextManager, Iterator, Sequence, Union

import torch
from torch import nn

from .errors import ClassError, ImageError, LabError, ModelError
from .models import input_fits, min_input_size, resolve_class

ClassSpec = Union[int, str, Sequence[Union[int, str]], Sequence[Sequence[Union[int, str]]], torch.Tensor, None]


# ---------------------------------------------------------------- the images


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


def differentiable(model: nn.Module) -> None:
    """Refuse, as one ModelError, weights autograd cannot differentiate through: inference tensors (a model built or
    loaded under ``torch.inference_mode()``). The shortcut needs no autograd; every other path does."""
    if any(p.is_inference() for p in model.parameters()):
        raise ModelError("the model's weights were made under torch.inference_mode(): autograd cannot run through "
                         "them (only the shortcut at the lab's layers can); build or load the model outside "
                         "inference mode (torch.no_grad() is fine), or copy it: model.load_state_dict("
                         "{k: v.clone() for k, v in model.state_dict().items()}, assign=True)")


# ---------------------------------------------------------------- the classes


def class_targets(classes: ClassSpec, n_images: int, outputs: int | None = None) -> torch.Tensor | None:
    """Turn ``classes`` into an (N, K) tensor of class indices (None: each image's top-1 class).

    One class (index or name) applies to every image; a flat list gives one class per image, or K
    classes of the only image when N == 1; a list of N lists gives K classes for every image.
    With ``outputs`` (the model's number of classes, ``output_classes``), indices beyond it are refused.
    """
    if classes is None:
        return None
    if isinstance(classes, torch.Tensor) and classes.device.type == "meta":
        raise ClassError(f"the classes tensor {tuple(classes.shape)} is on the meta device: it has a shape but no "
                         "values; give the class indices as a tensor on the CPU (or the images' device), or a list")
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


# ---------------------------------------------------------------- precision


def lower_precision(device: torch.device, dtype: torch.dtype | None) -> ContextManager:
    """Autocast to ``dtype`` (bfloat16 / float16) for the layers below the target layer; None: float32.

    The capture hook switches autocast off at the layer, so A^k, the head and its gradients are
    float32 (as are equations (1) and (2) and the post-processing). bfloat16 keeps 8 bits of
    precision, float16 11: over VGG-16's 13 convolutions A^k is off by 0.7% against 0.09%, and maps
    correlate 0.83 to 0.99 with float32 (random weights) against 0.995 or more; a map that is a small
    remainder of cancelling terms moves that much even in float32 when A^k is off by 0.7%
    (bench/RESULTS.md). Prefer float16 where the maps must match.
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


# ---------------------------------------------------------------- the model: one call at a time, in eval mode
#
# Every explanation call goes through ``explaining(model)``: one call at a time per model (a lock),
# in eval mode (Dropout off, BatchNorm neither uses nor updates batch statistics), the modes put back
# afterwards. The hooks themselves act only on the forward pass of the thread that added them: a
# forward pass that another thread runs on the same model at the same time is not hooked. The modes,
# though, belong to the modules: while a model in train mode is explained, another thread's own
# forward passes on it run in eval mode too; share a model between threads in eval mode.

_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
# Held while a call runs a train-mode model in eval mode: the same modules may be reached through
# another handle (a wrapper, DataParallel), whose lock is not the model's.
_SWITCHING = threading.RLock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock of ``model`` (made on first use, forgotten with the model)."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(model, threading.RLock())


@contextmanager
def explaining(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, ``model`` serves this thread's explanation only, in eval mode.

    A model in train mode would give a different map at each call (Dropout) and update the running
    statistics of its BatchNorm layers: an explanation must do neither. Each module's mode is put
    back on the way out. The lock makes a second thread's explanation on the same model wait, so
    that it cannot see this call's hooks or modes (PyTorch modules are not thread-safe to modify).
    """
    with model_lock(model):
        with _SWITCHING:  # a call that runs these modules in eval mode holds it: wait until they are put back
            in_eval = not any(m.training for m in model.modules())
        if in_eval:  # a model already in eval mode is left alone
            yield model
            return
        with _SWITCHING:
            modes = [(m, m.training) for m in model.modules()]
            model.eval()
            try:
                yield model
            finally:
                for m, training in modes:
                    m.training = training


def uncompiled(model: nn.Module) -> nn.Module:
    """The module that ``torch.compile(model)`` wraps (the same weights), or ``model`` itself.

    Hooks and per-call switches act on the eager module: the explanation runs it without compiling.
    What hooks cannot explain is refused: not a module, or TorchScript (its compiled graph runs no
    Python hooks: Guided Backpropagation's rule would silently not apply).
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got {type(model).__name__}: use labutils.load_model")
    if isinstance(model, torch.jit.ScriptModule):
        raise ModelError("TorchScript models (torch.jit.script / trace) run no Python hooks: explain the nn.Module "
                         "you scripted or traced instead")
    dynamo = sys.modules.get("torch._dynamo")  # not imported: nothing can be compiled
    if dynamo is not None and isinstance(model, dynamo.eval_frame.OptimizedModule):
        return model._orig_mod
    return model
