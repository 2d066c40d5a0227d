"""Hooks: catch the feature maps A^k of a layer on the way forward and dy^c/dA^k on the way back.

This is the seed's section 5.1: a forward hook saves the activations of the target layer and a
gradient hook, ``save_gradient``, saves the gradient that flows back into them::

    with capture(model, "features.29") as seen:
        scores = model(x)
        scores[0, 243].backward()
    seen.activations, seen.gradients      # A^k and dy^c/dA^k, both (N, K, h, w)

The hooks exist only inside the ``with`` block: they are removed on the way out, also when an
exception is raised, so nothing is left on the model.

Three details make it safe on torchvision's VGG/AlexNet, whose ReLUs are ``inplace=True``:

* The forward hook hands the rest of the network a *clone* of the layer's output. An inplace ReLU
  that follows (e.g. after the conv ``features.28``) then overwrites the clone, never the tensor we
  saved, so A^k stays the conv's output and its gradient is the conv output's gradient.
* With ``cut_graph=True`` the saved A^k is detached and becomes the start of the autograd graph:
  the layers below it run without recording anything (call the model under ``torch.no_grad()``;
  the hook switches recording on from this layer up). Grad-CAM needs no gradient below the target
  layer, so this costs no more than a plain forward pass plus a backward through the head.
* Under ``torch.autocast`` (``gradcam(..., dtype=torch.bfloat16)``) the layers below may compute in
  bfloat16, but the hook hands on A^k in float32 and switches autocast off above the layer: A^k,
  the head and its gradients stay float32.

The hooks act only on the forward pass of the thread that added them. What protects the calls
that use them (one call at a time per model, in eval mode; the model's inputs checked) is in
``labutils.inputs``.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from .errors import LayerError
from .models import feature_layers, get_layer


@dataclass
class Capture:
    """What the hooks saw at one layer of ``model``."""

    layer: str
    model: nn.Module = field(repr=False)
    saved: torch.Tensor | None = None  # A^k, once the layer has run
    gradients: torch.Tensor | None = None  # dy^c / dA^k, (N, K, h, w)

    @property
    def activations(self) -> torch.Tensor:
        """A^k, (N, K, h, w); a LayerError if the layer has not run (it is not in the model's forward pass)."""
        if self.saved is None:
            raise LayerError(f"layer {self.layer!r} did not run in the model's forward pass; "
                             f"choose one of: {', '.join(feature_layers(self.model))}")
        return self.saved


@contextmanager
def capture(
    model: nn.Module, layer: str, *, cut_graph: bool = False, save_gradients: bool = True,
    feature_map: bool = True,
) -> Iterator[Capture]:
    """Save the activations and gradients of ``model``'s module ``layer`` while the block runs.

    ``save_gradients=False`` leaves out the gradient hook, for a caller that takes dy^c/dA^k from
    ``torch.autograd.grad`` itself (``gradcam`` does: a hook cannot keep the K gradients of its
    batched backward pass). ``feature_map=False`` accepts a layer whose output is not (N, K, h, w)
    (the Grad-CAM shortcut captures the output of the classifier's first Linear).
    """
    module = get_layer(model, layer)
    seen = Capture(layer, model)
    owner = threading.get_ident()  # the hooks act on this thread's forward passes only
    device_type = next(model.parameters(), torch.empty(0)).device.type  # where autocast may be on
    autocast_was_on = torch.is_autocast_enabled(device_type)

    def save_gradient(grad: torch.Tensor) -> None:
        seen.gradients = grad

    def save_activations(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if threading.get_ident() != owner:
            return None  # another thread's forward pass on the same model: not ours
        if feature_map and not (isinstance(output, torch.Tensor) and output.dim() == 4):
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise LayerError(
                f"layer {layer!r} ({type(module).__name__}) outputs {shape}, not a 4-D feature map (N, K, h, w); "
                f"choose one of: {', '.join(feature_layers(model))}"
            )
        if torch.is_autocast_enabled(device_type):  # A^k and everything above it in float32
            output = output.float()
            torch.set_autocast_enabled(device_type, False)  # put back by the caller's autocast (or below)
        activations = output.detach().requires_grad_(True) if cut_graph else output
        if cut_graph:
            torch.set_grad_enabled(True)  # record the graph from here up; the caller's no_grad() restores it
        seen.saved = activations
        if activations.requires_grad and save_gradients:
            activations.register_hook(save_gradient)
        return activations.clone()  # what flows on may be changed inplace; A^k may not

    handle = module.register_forward_hook(save_activations)
    grad_mode = torch.is_grad_enabled()
    try:
        yield seen
    finally:
        handle.remove()
        torch.set_grad_enabled(grad_mode)  # cut_graph switched autograd on: switch it back
        torch.set_autocast_enabled(device_type, autocast_was_on)
