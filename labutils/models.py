"""The two networks of the lab, AlexNet and VGG-16, their ImageNet classes and their layers.

``load_model("vgg16")`` returns torchvision's VGG-16 in eval mode with the ImageNet weights the
seed report uses (``vgg16-397923af.pth``), downloaded on first use into the torch hub cache.
``weights="random"`` (or ``LABUTILS_WEIGHTS=random``) builds the same architecture with seeded,
untrained weights: it is only ever used when asked for, and ``is_untrained(model)`` tells every
figure and printout to say so.
"""

from __future__ import annotations

import difflib
import numbers
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn

from . import weights as weight_files
from .errors import ClassError, LayerError, ModelError, WeightsError

RANDOM_SEED = 0


@dataclass(frozen=True)
class Architecture:
    """What the lab needs to know about one network."""

    title: str  # as printed on figures
    build: Callable[..., nn.Module]  # torchvision's builder
    weights: torchvision.models.WeightsEnum  # torchvision's ImageNet weights (URL, classes, accuracy)
    default_layer: str  # the last ReLU of `features`: the paper's relu5 (AlexNet) / relu5_3 (VGG-16)


ARCHITECTURES: dict[str, Architecture] = {
    "alexnet": Architecture(
        "AlexNet", torchvision.models.alexnet, torchvision.models.AlexNet_Weights.IMAGENET1K_V1, "features.11"
    ),
    "vgg16": Architecture(
        "VGG-16", torchvision.models.vgg16, torchvision.models.VGG16_Weights.IMAGENET1K_V1, "features.29"
    ),
}


def architecture(name: str) -> Architecture:
    """Look up ``"alexnet"`` or ``"vgg16"``."""
    try:
        return ARCHITECTURES[name]
    except (KeyError, TypeError):
        raise ModelError(f"unknown model {name!r}: choose one of {', '.join(ARCHITECTURES)}") from None


def load_model(name: str, weights: str | os.PathLike | None = None, *, progress: bool = True) -> nn.Module:
    """Build AlexNet or VGG-16 in eval mode.

    ``weights``: ``"imagenet"`` (the pretrained file, from the torch hub cache or downloaded),
    ``"random"`` (seeded untrained weights: the pipeline runs, the maps mean nothing), or the path
    of a state_dict file for this architecture. ``None`` reads ``LABUTILS_WEIGHTS`` (default
    ``"imagenet"``). The model remembers its name and weights: see ``model_name``, ``is_untrained``.
    """
    arch = architecture(name)
    choice = weights if weights is not None else os.environ.get("LABUTILS_WEIGHTS", "imagenet")
    if not isinstance(choice, (str, os.PathLike)):
        raise WeightsError(f"weights must be 'imagenet', 'random' or the path of a state_dict file, got "
                           f"{type(choice).__name__} {choice!r}")
    choice = os.fspath(choice)
    if choice == "random":
        with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's random state
            torch.manual_seed(RANDOM_SEED)
            model = arch.build(weights=None)
    else:
        with torch.device("meta"):  # the architecture only: the weights come from the file
            model = arch.build(weights=None)
        if choice == "imagenet":
            state_dict = weight_files.pretrained_state_dict(name, progress=progress)
        elif Path(choice).is_file():
            state_dict = weight_files.read_state_dict(Path(choice))
        else:
            raise WeightsError(
                f"weights {choice!r}: no such file; use 'imagenet', 'random' (untrained) or the path of a state_dict file"
            )
        model = model.to_empty(device="cpu")
        weight_files.load_weights_into(model, state_dict, name)
    model.eval()
    model.labutils_name = name
    model.labutils_weights = choice
    return model


def model_name(model: nn.Module) -> str:
    """``"alexnet"`` or ``"vgg16"`` for a model from ``load_model`` (guessed from its class and its
    number of feature layers otherwise: torchvision's VGG-19 or VGG-16-BN is not VGG-16)."""
    name = getattr(model, "labutils_name", None)
    if name is not None:
        return name
    guess = {"AlexNet": ("alexnet", 13), "VGG": ("vgg16", 31)}.get(type(model).__name__)
    features = getattr(model, "features", None)
    if guess is None or not isinstance(features, nn.Sequential) or len(features) != guess[1]:
        layers = f" with {len(features)} feature layers" if isinstance(features, nn.Sequential) else ""
        raise ModelError(f"{type(model).__name__}{layers} is not one of the lab's models (AlexNet, VGG-16): use "
                         "load_model('alexnet' or 'vgg16'), or name the layer to explain")
    return guess[0]


def is_untrained(model: nn.Module) -> bool:
    """True when the model was built with ``weights="random"``: results must say so."""
    return getattr(model, "labutils_weights", None) == "random"


def weights_label(model: nn.Module) -> str:
    """A short description of the weights, for titles and printouts."""
    if is_untrained(model):
        return "UNTRAINED (random) weights: the maps show the pipeline, not what the network learned"
    choice = getattr(model, "labutils_weights", "imagenet")
    return "ImageNet weights" if choice == "imagenet" else f"weights from {Path(choice).name}"


# ---------------------------------------------------------------- ImageNet classes


def class_names() -> list[str]:
    """The 1000 ImageNet class names, from torchvision's weights metadata (243 = 'bull mastiff')."""
    return list(torchvision.models.VGG16_Weights.IMAGENET1K_V1.meta["categories"])


_INDEX = re.compile(r"-?[0-9]+")  # a class index: plain ASCII decimal digits (the minus sign: out of range)


def resolve_class(c: int | str) -> int:
    """A class index from an index (``243``, ``"243"``) or a name (``"bull mastiff"``, any case).

    Only plain ASCII decimal digits are read as an index: ``"+3"``, ``"0x10"``, ``"1e2"``, ``" 7"`` or
    ``"²"`` are refused rather than guessed. A name is matched exactly first (``"Cardigan"`` is the corgi,
    264; ``"cardigan"`` the sweater, 474), then ignoring case; a name that still matches several
    classes is refused with the candidates.
    """
    names = class_names()
    if isinstance(c, bool):
        raise ClassError(f"class {c!r} is not a class index or name")
    if isinstance(c, str) and _INDEX.fullmatch(c):
        c = int(c)
    integer_tensor = isinstance(c, torch.Tensor) and c.numel() == 1 and not c.is_floating_point()
    if isinstance(c, numbers.Integral) or integer_tensor:
        index = int(c)
        if not 0 <= index < len(names):
            raise ClassError(f"class index {index} is out of range: ImageNet classes are 0..{len(names) - 1}")
        return index
    if isinstance(c, str):
        return _class_by_name(c, names)
    raise ClassError(f"class {c!r} is not a class index or name (give a name or an index 0..{len(names) - 1})")


def _class_by_name(name: str, names: list[str]) -> int:
    """The index of the class called ``name``: exact match first, then the only match ignoring case."""
    key = " ".join(name.split())  # surrounding and repeated spaces do not count in a name
    if key in names:
        return names.index(key)
    matches = [i for i, n in enumerate(names) if n.casefold() == key.casefold()]
    if len(matches) == 1:
        return matches[0]
    if matches:
        candidates = ", ".join(f"{i} {names[i]!r}" for i in matches)
        raise ClassError(f"class name {name!r} matches several ImageNet classes ({candidates}): "
                         "give the index, or the name with its exact capitals")
    if any(ch.isdigit() or ch in "+-." for ch in name) and not any(ch.isalpha() and ch not in "eExX" for ch in name):
        raise ClassError(f"class {name!r} is not a class index: write an index as plain decimal digits "
                         f"0..{len(names) - 1} (no sign, spaces, exponent, hex or other digit characters)")
    suggested = similar_classes(key, names)
    hint = f"; did you mean {', '.join(repr(names[i]) for i in suggested)}?" if suggested else ""
    raise ClassError(f"no ImageNet class is named {name!r}{hint} (give a name or an index 0..{len(names) - 1})")


def similar_classes(query: str, names: list[str], limit: int = 5, words: int = 10) -> list[int]:
    """Classes a user may have meant by ``query``: first those whose names hold it as whole words (``cat``: tiger
    cat, Persian cat..., not catamaran; ``cats`` too), up to ``words`` of them, then by spelling up to ``limit``."""
    wanted = query.casefold().split()
    if not wanted:
        return []
    singular = [w[:-1] if len(w) > 3 and w.endswith("s") else w for w in wanted]

    def holds(name: str, terms: list[str]) -> bool:
        parts = re.split(r"[\s\-',.]+", name.casefold())
        return any(parts[i : i + len(terms)] == terms for i in range(len(parts) - len(terms) + 1))

    found = [i for i, n in enumerate(names) if holds(n, wanted) or holds(n, singular)][:words]
    lowered = [n.casefold() for n in names]
    for m in difflib.get_close_matches(query.casefold(), lowered, n=limit, cutoff=0.6):
        if len(found) >= limit:
            break
        if lowered.index(m) not in found:
            found.append(lowered.index(m))
    return found


def class_label(index: int) -> str:
    """``"243 bull mastiff"``: index and name, for titles."""
    return f"{index} {class_names()[index]}"


# ---------------------------------------------------------------- layers


def feature_layers(model: nn.Module) -> list[str]:
    """Names of the conv and ReLU layers whose outputs are feature maps A^k (``features.0`` ...)."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.ReLU)) and n.startswith("features.")]


def default_layer(model: nn.Module) -> str:
    """The seed's target layer: the last ReLU of ``features`` (VGG-16 features.29, AlexNet features.11)."""
    return architecture(model_name(model)).default_layer


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The module called ``name`` (e.g. ``"features.29"``), with the valid names listed if there is none."""
    if isinstance(name, str) and name:
        try:
            return model.get_submodule(name)
        except AttributeError:
            pass
    valid = feature_layers(model)
    raise LayerError(f"model has no layer {name!r}; conv/ReLU layers with feature maps: {', '.join(valid)}")


def output_classes(model: nn.Module) -> int | None:
    """The number of classes ``model`` scores: its classifier's last Linear's outputs (None: no such Linear)."""
    classifier = getattr(model, "classifier", None)
    linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)] if isinstance(classifier, nn.Module) else []
    return linears[-1].out_features if linears else None


# ---------------------------------------------------------------- input size

_SAME_SIZE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Identity,
    nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.LocalResponseNorm, nn.Dropout, nn.Dropout2d,
)
_NO_MORE_MAPS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Linear)


def min_input_size(model: nn.Module) -> int | None:
    """The smallest side (pixels) of a square input the model's feature maps accept, or None if unknown.

    Computed from the layers, not hard-coded: the sizes are followed through ``model.features`` (or the
    model itself, if it is an ``nn.Sequential``) with each conv's and pooling's size formula; every
    feature map must keep at least 1x1 pixels. AlexNet gives 63, VGG-16 32. None for any other layout.
    """
    for side in range(1, 4097):
        fits = input_fits(model, side, side)
        if fits is None:
            return None
        if fits:
            return side
    return None


def input_fits(model: nn.Module, height: int, width: int) -> bool | None:
    """Does a height x width input keep every feature map of the model at least 1x1? None: a layout we cannot follow."""
    layers = getattr(model, "features", None)
    if layers is None:  # a wrapper (DataParallel, nn.Sequential(model, nn.Softmax(1))...): its model's features
        layers = next((m for name, m in model.named_modules() if name.rpartition(".")[2] == "features"), model)
    if not isinstance(layers, nn.Sequential):
        return None
    sizes = [height, width]
    for m in _flat(layers):
        if isinstance(m, _NO_MORE_MAPS):
            break
        if isinstance(m, _SAME_SIZE):
            continue
        if not isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            return None
        for d in range(2):
            sizes[d] = _out_size(m, sizes[d], d)
        if min(sizes) < 1:
            return False
    return True


def _flat(layers: nn.Module) -> list[nn.Module]:
    """The leaf modules of nested ``nn.Sequential`` containers, in order."""
    return [leaf for m in layers for leaf in (_flat(m) if isinstance(m, nn.Sequential) else [m])]


def _out_size(m: nn.Module, size: int, d: int) -> int:
    """The output length along dimension ``d`` of a conv or pooling layer, torch's formula."""
    pair = lambda v: v if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    kernel, stride = pair(m.kernel_size)[d], pair(m.stride or m.kernel_size)[d]
    dilation = pair(getattr(m, "dilation", 1))[d]
    padding = m.padding
    if padding == "same":
        return size
    padding = 0 if padding == "valid" else pair(padding)[d]
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if span < 0:
        return 0
    if not getattr(m, "ceil_mode", False):
        return span // stride + 1
    out = -(-span // stride) + 1
    return out - 1 if (out - 1) * stride >= size + padding else out
