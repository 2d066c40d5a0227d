"""The explorer's state and computation, without a widget: what ``labutils.explorer`` shows.

An ``Exploration`` holds the current image and model and answers "the map of class c by method m"
fast, because it remembers what does not change:

* the models it loaded (``load_model``, so ``LABUTILS_WEIGHTS`` applies);
* for the current image, model and layer, the feature maps A^k (``cached.features_at``), one
  forward pass through the head above the layer (``cached.head_pass``), and the weights alpha_k^c
  of every class seen so far. The top-10 classes get theirs in one batched backward pass when A^k
  is computed, so switching between them, or to the counterfactual map (-alpha_k^c), runs no
  network at all. Any other class: by the shortcut (``labutils.shortcut``), the first one multiplies
  the head's chain out once (``HeadRecord.fold``, ~150 ms on VGG-16), after which every class is one
  row of W3 times it (~3 ms); elsewhere one backward pass through the head (``cached.class_weights``);
* the Guided Backpropagation picture of the last few classes (it needs a full backward pass).

    state = Exploration()
    state.show_image("cat", load_image(sample_path("cat_dog.jpg")))
    state.compute_features("vgg16", "features.29", new_predictions=True)
    state.explain(state.top()[0], "gradcam")          # an Explanation of 1 image, 1 class
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch import nn

from .cached import HeadPass, class_weights, explanation_from_weights, features_at, head_pass
from .gradcam import Explanation
from .guided import guided_backprop, guided_times_cam
from .images import LabImage
from .models import ARCHITECTURES, class_names, load_model

METHODS = ("gradcam", "counterfactual", "guided-backprop", "guided-gradcam")
TOP = 10  # classes in the class list (the top-10 predictions)
SEARCH_LIMIT = 30  # classes listed for a search
GUIDED_KEPT = 8  # Guided Backpropagation results kept (image, model, class)


@dataclass
class FeatureCache:
    """What is computed once for one (image, model, layer): A^k and the head pass, and alpha_k^c per class seen."""

    key: tuple[str, str, str]  # (image, model, layer)
    run: HeadPass  # A^k (1, C, h, w), the scores y and the record of the head (the shortcut's, or autograd's)
    weights: dict[int, torch.Tensor] = field(default_factory=dict)  # class c -> alpha_k^c, (1, 1, C)


class Exploration:
    """The explorer's current image, model and layer, and what it keeps of them between two pictures.

    ``say`` is told, in a few words, what a long step is about to do (the explorer shows it).
    """

    def __init__(self, models: Mapping[str, nn.Module] | None = None, say: Callable[[str], None] = lambda _: None):
        self.models: dict[str, nn.Module] = dict(models or {})  # loaded models, by name
        self.say = say
        self.image: LabImage | None = None  # the current image and its key in the explorer's image list
        self.image_key = ""
        self.model_name = ""  # the model of the current features
        self.probabilities: torch.Tensor | None = None  # softmax of the current (image, model), on the CPU
        self.features: FeatureCache | None = None
        self.guided: OrderedDict[tuple[str, str, int], Explanation] = OrderedDict()

    def model(self, name: str) -> nn.Module:
        """The model called ``name``, loaded once."""
        if name not in self.models:
            self.say(f"loading {ARCHITECTURES[name].title}…")
            self.models[name] = load_model(name)
        return self.models[name]

    def show_image(self, key: str, image: LabImage) -> None:
        """Make ``image`` (``key`` in the image list) the current image; ``compute_features`` follows."""
        self.image, self.image_key = image, key

    def compute_features(self, model_name: str, layer: str, new_predictions: bool) -> None:
        """A^k at ``layer`` (the only pass through the lower layers), the head pass, top-10 alpha."""
        model = self.model(model_name)
        run = head_pass(model, layer, features_at(model, layer, self.image.tensor))
        self.features = FeatureCache((self.image_key, model_name, layer), run)
        self.model_name = model_name
        if new_predictions or self.probabilities is None:
            self.probabilities = run.scores.detach()[0].softmax(dim=0).cpu()
        self.add_weights(self.top())

    def top(self) -> list[int]:
        """The current image's top-10 classes, most probable first."""
        return self.probabilities.topk(TOP).indices.tolist()

    def add_weights(self, classes: list[int]) -> None:
        """alpha_k^c of ``classes`` from the kept head pass (by the shortcut, or one backward pass)."""
        record = self.features.run.record
        if len(classes) == 1 and record is not None and record.folded is None:
            record.fold()  # the first class outside the top-10: multiply the head's chain out, once per image and layer
        _, alpha = class_weights(self.features.run, [classes])
        for j, c in enumerate(classes):
            self.features.weights[c] = alpha[:, j : j + 1]

    def has_guided(self, c: int) -> bool:
        """Is the Guided Backpropagation picture of class ``c`` kept (for the current image and model)?"""
        return (self.image_key, self.model_name, c) in self.guided

    def gradcam(self, c: int, counterfactual: bool) -> Explanation:
        """Grad-CAM (or its counterfactual) of class ``c`` from the kept head pass: the head at most."""
        if c not in self.features.weights:
            self.add_weights([c])  # the head only: by the shortcut, or one backward pass
        return explanation_from_weights(self.features.run, torch.tensor([[c]]), self.features.weights[c],
                                        counterfactual=counterfactual, size=tuple(self.image.tensor.shape[-2:]))

    def guided_backprop(self, c: int) -> Explanation:
        """Guided Backpropagation of class ``c``: kept for the last ``GUIDED_KEPT`` (image, model, class)."""
        key = (self.image_key, self.model_name, c)
        if key not in self.guided:
            self.say("Guided Backpropagation: a full backward pass to the image…")
            self.guided[key] = guided_backprop(self.models[self.model_name], self.image.tensor, [c])
            while len(self.guided) > GUIDED_KEPT:
                self.guided.popitem(last=False)
        self.guided.move_to_end(key)
        return self.guided[key]

    def explain(self, c: int, method: str) -> Explanation:
        """The explanation of class ``c`` by ``method`` (one of ``METHODS``) for the current image and layer."""
        if method in ("gradcam", "counterfactual"):
            return self.gradcam(c, counterfactual=method == "counterfactual")
        if method == "guided-backprop":
            return self.guided_backprop(c)
        # Guided Grad-CAM: Guided Backpropagation times the upsampled Grad-CAM map (guided.guided_gradcam)
        cam, guided = self.gradcam(c, counterfactual=False), self.guided_backprop(c)
        return guided_times_cam(guided.raw, cam)


def search_classes(query: str, probabilities: torch.Tensor | None = None, limit: int = SEARCH_LIMIT) -> list[int]:
    """Classes whose index is ``query`` or whose name contains it (any case): exact first, then
    names starting with it, then the rest; within each group the most probable first."""
    names = [n.lower() for n in class_names()]
    key = query.strip().lower()
    if not key:
        return []
    rank = (lambda c: -float(probabilities[c])) if probabilities is not None else (lambda c: 0.0)
    exact = [c for c, n in enumerate(names) if n == key or (key.isascii() and key.isdecimal() and c == int(key))]
    starts = [c for c, n in enumerate(names) if n.startswith(key) and c not in exact]
    inside = [c for c, n in enumerate(names) if key in n and not n.startswith(key) and c not in exact]
    return (sorted(exact, key=rank) + sorted(starts, key=rank) + sorted(inside, key=rank))[:limit]
