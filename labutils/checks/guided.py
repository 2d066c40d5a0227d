"""Notebook 04's exercises: the guided ReLU rule, the Guided Grad-CAM product, the counterfactual
map, and the jet overlay of section 5.6."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from torch import nn

from ..exercise import Case, Exercise
from ..gradcam import alpha_weights, combine, normalize, postprocess, upsample
from ..guided import gradient_image, guided_relus
from ._common import compare, diagnosis, pick, randn

NOTEBOOK = "04_guided_and_counterfactual.ipynb"


# ---------------------------------------------------------------- guided_relu


def guided_reference(relu_input: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """The gradient a real ``nn.ReLU`` passes back under labutils' guided rule (``guided.guided_relus``)."""
    relu = nn.ReLU()
    x = relu_input.clone().requires_grad_(True)
    with guided_relus(relu), torch.enable_grad():
        (grad_in,) = torch.autograd.grad(relu(x), x, grad_out)
    return grad_in


def relu_cases(g: Optional[torch.Generator]) -> list[Case]:
    s = [pick(g, 16 + i, 100, 10_000) for i in range(7)]
    h, w = pick(g, 28, 5, 30), pick(g, 20, 5, 30)
    return [
        Case("ReLU input and gradient (1, 512, 14, 14) like VGG-16's features.29",
             (randn(1, 512, 14, 14, seed=s[0]), randn(1, 512, 14, 14, seed=s[1]) * 1e-3)),
        Case(f"a batch of 2 images (2, 64, {h}, {w}) with inputs and gradients exactly 0",
             (randn(2, 64, h, w, seed=s[2]) * (randn(2, 64, h, w, seed=s[3]) > 0),
              randn(2, 64, h, w, seed=s[4]) * (randn(2, 64, h, w, seed=s[5]) > 0))),
        Case("ReLU input exactly 0 everywhere (2, 8, 5, 7)", (torch.zeros(2, 8, 5, 7), randn(2, 8, 5, 7, seed=s[6]))),
    ]  # fmt: skip


def _guided_relu(case: Case, got: object) -> Optional[str]:
    x, grad_out = case.args
    return compare(
        "grad_in", got, guided_reference(x, grad_out),
        mistakes=[
            (lambda: grad_out * (x > 0), "plain ReLU backward: negative gradients still pass; the guided rule also "
             "sets gradients < 0 to 0"),
            (lambda: grad_out.clamp(min=0), "deconvnet rule: you ignored the ReLU input; the guided rule also sets "
             "the gradient to 0 where the input was <= 0"),
            (lambda: grad_out.clamp(min=0) * (x >= 0), "the gradient passes where the input is exactly 0: use "
             "input > 0, as PyTorch's ReLU backward does"),
            (lambda: grad_out.clamp(min=0) * F.relu(x), "you multiplied by the input's value: the rule uses only its "
             "sign, a 0/1 mask (input > 0)"),
            (lambda: (grad_out * (x > 0)).clamp(max=0), "you kept the negative gradients instead of the positive "
             "ones: the guided rule keeps gradients > 0"),
        ],
    )  # fmt: skip


GUIDED_RELU = Exercise(
    "guided_relu", NOTEBOOK, "my_guided_relu", (), relu_cases, diagnosis("my_guided_relu", _guided_relu),
    reference="labutils.guided:guided_relu_gradient",
)


# ---------------------------------------------------------------- guided_gradcam: the product


def product_cases(g: Optional[torch.Generator]) -> list[Case]:
    s = [pick(g, 30 + i, 100, 10_000) for i in range(6)]
    H, W = pick(g, 48, 20, 70), pick(g, 64, 20, 70)
    return [
        Case("1 image × 1 class: guided (1, 1, 3, 224, 224), L^c (1, 1, 14, 14) like VGG-16's",
             (randn(1, 1, 3, 224, 224, seed=s[0]) * 1e-3, randn(1, 1, 14, 14, seed=s[1]).clamp(min=0))),
        Case(f"2 images × 2 classes, non-square: guided (2, 2, 3, {H}, {W}), L^c (2, 2, 5, 7)",
             (randn(2, 2, 3, H, W, seed=s[2]), randn(2, 2, 5, 7, seed=s[3]).clamp(min=0) * torch.tensor([1.0, 30.0])[None, :, None, None])),
        Case("1 image × 2 classes, one of them a flat map: guided (1, 2, 3, 52, 52), L^c (1, 2, 13, 13)",
             (randn(1, 2, 3, 52, 52, seed=s[4]), randn(1, 2, 13, 13, seed=s[5]).clamp(min=0) * torch.tensor([1.0, 0.0])[None, :, None, None])),
    ]  # fmt: skip


def _product(case: Case, got: object) -> Optional[str]:
    guided, raw = case.args
    size = tuple(guided.shape[-2:])
    maps = postprocess(raw, size)[:, :, None]
    return compare(
        "Guided Grad-CAM", got, guided * maps,
        mistakes=[
            (lambda: guided * F.relu(upsample(raw, size))[:, :, None], "you multiplied by the upsampled L^c without "
             "normalizing it: use the post-processed map in [0, 1] (section 5.5), as the figures do"),
            (lambda: gradient_image(guided) * maps, "you multiplied the display image of the gradients "
             "(gradient_image): multiply the gradients themselves"),
            (lambda: guided + maps, "you added the map to the gradients: Guided Grad-CAM multiplies them, pixel by "
             "pixel"),
            (lambda: guided.abs() * maps, "you took |guided|: keep the sign of the guided gradients"),
            (lambda: guided * normalize(F.relu(F.interpolate(raw, size=size, mode="nearest")))[:, :, None],
             "nearest-neighbour upsampling: use section 5.5's bilinear post-processing"),
        ],
    )  # fmt: skip


GUIDED_GRADCAM = Exercise(
    "guided_gradcam", NOTEBOOK, "my_guided_gradcam", ("labutils.equations",), product_cases,
    diagnosis("my_guided_gradcam", _product),
)  # fmt: skip


# ---------------------------------------------------------------- counterfactual


def counterfactual_cases(g: Optional[torch.Generator]) -> list[Case]:
    s = [pick(g, 50 + i, 100, 10_000) for i in range(6)]
    h, w = pick(g, 7, 3, 12), pick(g, 10, 3, 12)
    return [
        Case("A^k and gradients (1, 512, 14, 14) like VGG-16's features.29",
             (randn(1, 512, 14, 14, seed=s[0]).clamp(min=0), randn(1, 512, 14, 14, seed=s[1]) * 1e-3)),
        Case("a conv layer's output with negative values, (1, 256, 13, 13)",
             (randn(1, 256, 13, 13, seed=s[2]), randn(1, 256, 13, 13, seed=s[3]))),
        Case(f"a batch of 2 images × 3 classes, (2, 3, 64, {h}, {w})",
             (randn(2, 3, 64, h, w, seed=s[4]).clamp(min=0), randn(2, 3, 64, h, w, seed=s[5]))),
    ]  # fmt: skip


def _counterfactual(case: Case, got: object) -> Optional[str]:
    a, g = case.args
    alpha = alpha_weights(g)
    return compare(
        "the counterfactual map", got, combine(-alpha, a), nonnegative=True,
        mistakes=[
            (lambda: combine(alpha, a), "this is the Grad-CAM map: the counterfactual map uses the weights "
             "-alpha_k^c"),
            (lambda: -combine(alpha, a), "you negated the Grad-CAM map after its ReLU: negate the weights, "
             "ReLU(sum_k (-alpha_k^c) A^k), so the ReLU keeps the cells that lower y^c"),
            (lambda: (-alpha[..., None, None] * a).sum(dim=-3), "ReLU missing: the counterfactual map is "
             "ReLU(sum_k (-alpha_k^c) A^k)"),
            (lambda: combine(F.relu(-alpha), a), "you clipped the weights with a ReLU: keep every weight -alpha_k^c; "
             "the ReLU comes after the weighted sum"),
            (lambda: combine(-alpha, a.abs()), "you used |A^k|: use the activations as they are"),
        ],
    )  # fmt: skip


COUNTERFACTUAL = Exercise(
    "counterfactual", NOTEBOOK, "my_counterfactual", ("labutils.equations",), counterfactual_cases,
    diagnosis("my_counterfactual", _counterfactual),
)  # fmt: skip


# ---------------------------------------------------------------- overlay: section 5.6


def jet_table() -> torch.Tensor:
    """matplotlib's jet colormap as a (256, 3) table of RGB values in [0, 1]."""
    return torch.tensor(colormaps["jet"](np.arange(256))[:, :3], dtype=torch.float32)


def overlay_reference(image: torch.Tensor, cam_map: torch.Tensor, alpha: float, colors: torch.Tensor,
                      *, mode: str = "bilinear", swap: bool = False, gray: bool = False) -> torch.Tensor:
    """(1 - alpha) * image + alpha * colors[bin of the bilinearly resized map]; the variants are mistakes."""
    size = tuple(image.shape[:2])
    options = {"align_corners": False} if mode == "bilinear" else {}
    resized = F.interpolate(cam_map[None, None], size=size, mode=mode, **options)[0, 0].clamp(0, 1)
    n = colors.shape[0]
    heat = resized[..., None].expand(*size, 3) if gray else colors[(resized * n).long().clamp(max=n - 1)]
    if swap:
        alpha = 1 - alpha
    return (1 - alpha) * image + alpha * heat


def overlay_cases(g: Optional[torch.Generator]) -> list[Case]:
    s = [pick(g, 70 + i, 100, 10_000) for i in range(9)]
    jet = jet_table()

    def image(h: int, w: int, seed: int) -> torch.Tensor:
        return torch.rand(h, w, 3, generator=torch.Generator().manual_seed(seed))

    def cam(h: int, w: int, seed: int) -> torch.Tensor:
        return normalize(randn(h, w, seed=seed).clamp(min=0))

    H, W = pick(g, 60, 20, 90), pick(g, 80, 20, 90)
    return [
        Case("an image of 56 x 56 and a 14 x 14 map, alpha 0.5", (image(56, 56, s[0]), cam(14, 14, s[1]), 0.5, jet)),
        Case(f"a non-square image of {H} x {W} and a 7 x 9 map, alpha 0.3",
             (image(H, W, s[2]), cam(7, 9, s[3]), 0.3, jet)),
        Case("an image of 39 x 52 and a 13 x 13 map, alpha 0.7", (image(39, 52, s[4]), cam(13, 13, s[5]), 0.7, jet)),
        Case("an image of 42 x 42 and a 14 x 14 map whose maximum 1.0 lands exactly on a pixel, alpha 0.5",
             (image(42, 42, s[6]), cam(14, 14, s[7]), 0.5, jet)),
        Case("an image of 21 x 27 and a 7 x 9 map of 1.0 everywhere, alpha 0.5",
             (image(21, 27, s[8]), torch.ones(7, 9), 0.5, jet)),
    ]


def _overlay(case: Case, got: object) -> Optional[str]:
    image, cam_map, alpha, colors = case.args
    return compare(
        "the overlay", got, overlay_reference(image, cam_map, alpha, colors), atol=0.02,  # one colour bin of jet
        mistakes=[
            (lambda: overlay_reference(image, cam_map, alpha, colors, swap=True), f"the weights are swapped: "
             f"(1 - alpha) · image + alpha · colour, with alpha = {alpha} for the colour"),
            (lambda: overlay_reference(image, cam_map, alpha, colors, gray=True), "you blended the map's values "
             "(grey), not their jet colours: look each value up in the colour table"),
            (lambda: overlay_reference(image, cam_map, alpha, colors, mode="nearest"), "nearest-neighbour resizing "
             "of the map: resize it bilinearly (align_corners=False)"),
            (lambda: overlay_reference(image, cam_map, alpha, colors.flip(0)), "the colour table is reversed: value 0 "
             "is colors[0] (dark blue), value 1 is colors[-1] (dark red)"),
        ],
    )  # fmt: skip


OVERLAY = Exercise(
    "overlay", NOTEBOOK, "my_overlay", (), overlay_cases,
    diagnosis("my_overlay", _overlay, errors={
        "IndexError": "a map value of exactly 1.0 falls one bin past the last colour: the table has bins 0 to "
                      "len(colors) - 1; keep every bin index inside it",
    }),
)  # fmt: skip

VERIFIED = {
    "guided_relu": "grad_in matches an nn.ReLU under labutils.guided.guided_relus (gradient passes where input > 0 "
    "and gradient > 0), zeros included, square and non-square maps",
    "guided_gradcam": "guided gradients × post-processed Grad-CAM maps match labutils.guided.guided_times_cam "
    "(1 and 2 images × classes, a non-square size, a flat map)",
    "counterfactual": "ReLU(sum_k (-alpha_k^c) A^k) matches labutils.gradcam(..., counterfactual=True)'s maps on "
    "VGG-16 and AlexNet shapes, a conv layer's output and a non-square batch of 2 images × 3 classes",
    "overlay": "the jet overlay matches section 5.6 (bilinear resize, jet colour, (1 - alpha) · image + alpha · "
    "colour) on square and non-square images, alpha 0.3 to 0.7, and maps whose value 1.0 lands on a pixel",
}
