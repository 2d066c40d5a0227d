"""Showing maps: jet overlays on the original image (section 5.6) and labelled figures.

Every figure says what it shows: model, layer, class and method, and, when the weights are
untrained, a red banner saying that the maps show the pipeline, not what the network learned.
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from .errors import OverlayError
from .gradcam import Explanation
from .models import architecture, class_label, is_untrained, model_name, weights_label

METHOD_TITLES = {
    "gradcam": "Grad-CAM",
    "counterfactual": "Counterfactual Grad-CAM",
    "guided-backprop": "Guided Backprop",
    "guided-gradcam": "Guided Grad-CAM",
}


def as_array(values: torch.Tensor | np.ndarray) -> np.ndarray:
    """A float32 numpy array of a map, wherever the tensor lives (maps stay on the input's device, e.g. a GPU)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu()
    return np.asarray(values, dtype=np.float32)


def one_map(cam_map: torch.Tensor | np.ndarray) -> np.ndarray:
    """``cam_map`` as a (H, W) float32 array, or an OverlayError that says how to pick one map."""
    values = as_array(cam_map)
    if values.ndim != 2 or 0 in values.shape:
        raise OverlayError(f"expected one (H, W) map, got shape {values.shape}: pick image n, class k with "
                           "explanation.maps[n, k]")
    return values


def heatmap(cam_map: torch.Tensor | np.ndarray, colormap: str = "jet") -> np.ndarray:
    """Colour a (H, W) map in [0, 1] with a matplotlib colormap: (H, W, 3) floats in [0, 1]."""
    values = one_map(cam_map)
    if colormap not in colormaps:
        raise OverlayError(f"unknown colormap {colormap!r}: use a matplotlib colormap name such as 'jet' or 'viridis'")
    return colormaps[colormap](np.clip(values, 0, 1))[..., :3].astype(np.float32)


def overlay(image: Image.Image, cam_map: torch.Tensor | np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> Image.Image:
    """Blend the coloured map over the image: (1 - alpha) * image + alpha * heatmap, at the image's size."""
    if not 0.0 <= alpha <= 1.0:
        raise OverlayError(f"alpha must be between 0 and 1, got {alpha}")
    resized = Image.fromarray(one_map(cam_map), mode="F").resize(image.size, Image.BILINEAR)
    base = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    blended = (1 - alpha) * base + alpha * heatmap(np.asarray(resized), colormap)
    return Image.fromarray(np.round(blended * 255).astype(np.uint8))


def check_indices(explanation: Explanation, n: int, k: int | None = None) -> None:
    """Refuse an image index n or class index k (0-based, not negative) that the explanation does not hold."""
    images, classes = explanation.classes.shape
    for name, plural, value, count in (("image", "images", n, images), ("class", "classes", k, classes)):
        if value is not None and (isinstance(value, bool) or not hasattr(value, "__index__")
                                  or not 0 <= value.__index__() < count):  # ints, numpy and 0-d torch integers
            raise OverlayError(f"{name} index {value!r} is not one of 0..{count - 1}: this explanation has {count} "
                               f"{name if count == 1 else plural}")


def explanation_image(image: Image.Image, explanation: Explanation, n: int, k: int, alpha: float = 0.5) -> Image.Image:
    """The picture of image n, class k: a jet overlay for Grad-CAM maps, the gradient image for guided methods."""
    check_indices(explanation, n, k)
    shown = explanation.maps[n, k]
    if shown.dim() == 3:  # guided: (3, H, W) in [0, 1]
        array = np.round(as_array(shown.permute(1, 2, 0)) * 255).astype(np.uint8)
        return Image.fromarray(array).resize(image.size, Image.BILINEAR)
    return overlay(image, shown, alpha)


def title(model: nn.Module, explanation: Explanation, k: int, n: int = 0) -> str:
    """'VGG-16 · features.29 · 243 bull mastiff · Grad-CAM': what a panel shows."""
    parts = [architecture(model_name(model)).title]
    if explanation.layer:
        parts.append(explanation.layer)
    parts += [class_label(int(explanation.classes[n, k])), METHOD_TITLES[explanation.method]]
    return " · ".join(parts)


def untrained_banner(model: nn.Module) -> str | None:
    """The warning to show with any result of an untrained model (None for real weights)."""
    return f"WARNING: {weights_label(model)}" if is_untrained(model) else None


def labelled(picture: Image.Image, caption: str, warning: str | None = None) -> Image.Image:
    """Add a caption strip under a picture (and a red warning line): for PNG files written by the CLI."""
    font = ImageFont.load_default()
    lines = [(caption, (0, 0, 0))] + ([(warning, (200, 0, 0))] if warning else [])
    strip = 16 * len(lines) + 6
    out = Image.new("RGB", (picture.width, picture.height + strip), "white")
    out.paste(picture.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(out)
    for i, (text, colour) in enumerate(lines):
        draw.text((4, picture.height + 3 + 16 * i), text, fill=colour, font=font)
    return out


def figure(
    model: nn.Module, image: Image.Image, explanation: Explanation, n: int = 0, alpha: float = 0.5
) -> Figure:
    """A matplotlib figure: the image, then one labelled panel per class of image n."""
    check_indices(explanation, n)
    k_count = explanation.classes.shape[1]
    fig = Figure(figsize=(4 * (k_count + 1), 4.6), layout="constrained")
    axes = fig.subplots(1, k_count + 1, squeeze=False)[0]
    axes[0].imshow(image)
    axes[0].set_title("input image", fontsize=9)
    for k in range(k_count):
        axes[k + 1].imshow(explanation_image(image, explanation, n, k, alpha))
        axes[k + 1].set_title(title(model, explanation, k, n).replace(" · ", "\n", 1), fontsize=9)
    for ax in axes:
        ax.axis("off")
    banner = untrained_banner(model)
    if banner:
        fig.suptitle(banner, color="red", fontsize=10)
    return fig
