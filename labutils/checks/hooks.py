"""Notebook 02's exercise: capture A^k and dy^c/dA^k with a forward hook and a gradient hook."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from ..exercise import Case, Exercise, Net
from ..hooks import capture
from ._common import compare, diagnosis, pick, randn

NOTEBOOK = "02_hooks.ipynb"


def _layer_gradient(net: Net, layer: str, x: torch.Tensor, score: Callable) -> tuple[torch.Tensor, torch.Tensor]:
    """A^k (labutils' capture) and d score / dA^k by torch.autograd.grad, on a fresh copy of the network."""
    model = net.build()
    with capture(model, layer) as seen:
        scores = model(x)
        (gradients,) = torch.autograd.grad(score(scores), seen.activations)
    return seen.activations.detach(), gradients


def capture_cases(g: Optional[torch.Generator]) -> list[Case]:
    """Both tiny networks, a ReLU and a conv followed by an inplace ReLU, non-square images, batches."""
    vgg, alex = "labutils.nets:tiny_vgg", "labutils.nets:tiny_alexnet"
    h, w = (48, 64) if g is None else (8 * pick(g, 0, 4, 9), 8 * pick(g, 0, 4, 9))
    specs = [
        (vgg, "features.9", "the last ReLU", 1, (h, w), 7),
        (vgg, "features.9", "the last ReLU", 2, (h, w), 3),
        (vgg, "features.8", "a conv followed by an inplace ReLU", 1, (h, w), 11),
        (alex, "features.9", "the last ReLU", 2, (112, 144), 5),
        (alex, "features.6", "a conv followed by an inplace ReLU", 1, (112, 144), 0),
    ]
    cases = []
    for i, (builder, layer, kind, n, size, c) in enumerate(specs):
        name = builder.split(":")[1]
        seed = pick(g, i, 100, 10_000)
        c = pick(g, c, 0, 20)
        cases.append(Case(
            f"{name}, layer {layer} ({kind}), {n} image{'s' if n > 1 else ''} of {size[0]} x {size[1]}, class {c}",
            (Net(builder, seed), layer, randn(n, 3, *size, seed=seed), c),
        ))  # fmt: skip
    return cases


def _capture(case: Case, result: object) -> Optional[str]:
    net, layer, x, c = case.args
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        size = f" of {len(result)}" if isinstance(result, (tuple, list)) else ""
        return f"wrong type: return a pair (activations, gradients), got {type(result).__name__}{size}"
    got_a, got_g = result
    a, g = _layer_gradient(net, layer, x, lambda s: s[:, c].sum())
    if got_g is None:
        return ("the gradients are None: the gradient hook never ran — register save_gradient on the layer's "
                "output inside the forward hook, then call backward() on y^c")
    if type(got_a) is torch.Tensor and type(got_g) is torch.Tensor and got_a.shape == g.shape:
        if torch.allclose(got_a.detach().double(), g.double(), rtol=1e-4, atol=1e-8) and not torch.equal(a, g):
            return "activations and gradients are swapped: return (activations, gradients)"
    cause = compare(
        "A^k", got_a, a,
        mistakes=[(lambda: torch.relu(a), f"A^k of the conv layer {layer} was overwritten by the inplace ReLU that "
                   "follows it: return output.clone() from your forward hook (see above)")],
    )  # fmt: skip
    if cause:
        return cause
    n = x.shape[0]
    return compare(
        "dy^c/dA^k", got_g, g,
        mistakes=[
            (lambda: _layer_gradient(net, layer, x, lambda s: s[0, c])[1],
             "only image 0 got its gradient: every image's y^c must reach the backward pass (each image's "
             "score depends on that image alone)"),
            (lambda: _layer_gradient(net, layer, x, lambda s: s[:, c].mean())[1],
             f"you backpropagated the batch mean of y^c: each image's gradient is divided by N = {n}; each "
             "image's gradient must be that of its own y^c"),
            (lambda: _layer_gradient(net, layer, x, lambda s: s.sum())[1],
             f"you backpropagated the scores of all classes: only class c = {c}'s score y^c counts"),
            (lambda: _layer_gradient(net, layer, x, lambda s: s.softmax(1)[:, c].sum())[1],
             "you backpropagated the softmax probability: Grad-CAM uses the score y^c (before the softmax)"),
            (lambda: _layer_gradient(net, layer, x, lambda s: s.max(1).values.sum())[1],
             f"you backpropagated the top-1 class's score: the gradient is that of class c = {c}, the one "
             "asked for"),
        ],
    )  # fmt: skip


CAPTURE = Exercise(
    grade_id="capture",
    notebook=NOTEBOOK,
    function="my_capture",
    modules=("labutils.nets", "labutils.models"),
    cases=capture_cases,
    diagnose=diagnosis("my_capture", _capture, hooks_matter=True),
    reference="labutils.steps:activations_and_gradients",
)

VERIFIED = {
    "capture": "A^k matches labutils.capture and dy^c/dA^k torch.autograd.grad on tiny VGG and AlexNet networks "
    "(a ReLU and a conv followed by an inplace ReLU, 1 and 2 non-square images); no hook left on the model",
}
