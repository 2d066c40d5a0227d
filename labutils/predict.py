"""The network's answer: the top-k ImageNet classes of each image, with their softmax probabilities.

    predict(load_model("vgg16"), load_image("cat_dog.jpg").tensor)
    # [[(243, 'bull mastiff', 0.41), (282, 'tiger cat', 0.11), ...]]   (pretrained weights)

The call is checked and run as every explanation is (``labutils.inputs``): the images are placed on
the model's device and dtype, and the model runs in eval mode, one call at a time.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import ClassError
from .inputs import explaining, model_input, uncompiled
from .models import class_names, output_classes


def predict(model: nn.Module, x: torch.Tensor, k: int = 5) -> list[list[tuple[int, str, float]]]:
    """Top-k ``(class index, name, probability)`` for each image of the batch ``x``, in eval mode
    (as every explanation runs: a model in train mode would answer differently at each call)."""
    model = uncompiled(model)
    images = model_input(model, x)
    outputs = output_classes(model) or len(class_names())
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= outputs:
        raise ClassError(f"k must be a whole number of classes from 1 to {outputs}, got {k!r}")
    with explaining(model), torch.no_grad():
        probs = model(images).softmax(dim=1)
    top = probs.topk(k, dim=1)
    names = class_names()
    return [
        [(int(i), names[int(i)], float(p)) for p, i in zip(ps, idx)] for ps, idx in zip(top.values, top.indices)
    ]
