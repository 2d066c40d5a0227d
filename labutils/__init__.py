"""labutils: the reference implementation of the Grad-CAM lab (AlexNet and VGG-16).

Read it next to the notebooks, one module per idea:

- ``models``   the networks, their ImageNet classes and layers
- ``weights``  the pretrained weight files (cache, download, safe loading)
- ``images``   image file -> normalized 1x3x224x224 tensor
- ``data``     the sample images (manifest, checksums, fetch)
- ``inputs``   what protects the method: input checks, placement, class targets, precision
- ``hooks``    forward and gradient hooks: A^k and dy^c/dA^k (section 5.1)
- ``equations`` equations (1) and (2) and the post-processing of section 5.5, on tensors
- ``gradcam``  Grad-CAM and counterfactual maps of a network: the equations run on a model
- ``guided``   Guided Backpropagation and Guided Grad-CAM
- ``shortcut`` the exact shortcut for equation (1) through VGG-16's / AlexNet's head (W1s^T g1)
- ``predict``  the top-k classes of each image
- ``overlay``  jet overlays and labelled figures
- ``summary``  the architecture tables (the seed's Tables 1 and 2)

The Grad-CAM itself is in ``hooks``, ``equations``, ``gradcam`` and ``guided``: start there (``shortcut`` after). Around it:

- ``cached``   Grad-CAM from kept feature maps: only the head is recomputed (for the explorer)
- ``explorer`` the interactive ipywidgets explorer of the results notebook (``exploring``: its computation)
- ``checks``   the exercise checks of notebooks 02-04
- ``status``   the environment check of notebook 00
- ``exercise`` what an exercise is: the contract between the checks and the grader
- ``instructor`` the instructor's tools (not needed by students): student versions, sandboxed grading
- ``cli``      ``python -m labutils ...``
"""

from .errors import LabError
from .gradcam import Explanation, alpha_weights, combine, gradcam, normalize, postprocess, upsample
from .guided import guided_backprop, guided_gradcam
from .hooks import Capture, capture
from .shortcut import clear_shortcut_cache, shortcut_route
from .models import (
    class_label,
    class_names,
    default_layer,
    feature_layers,
    get_layer,
    is_untrained,
    load_model,
    resolve_class,
)
from .predict import predict

__all__ = [
    "Capture",
    "Explanation",
    "LabError",
    "alpha_weights",
    "capture",
    "clear_shortcut_cache",
    "class_label",
    "class_names",
    "combine",
    "default_layer",
    "feature_layers",
    "get_layer",
    "gradcam",
    "guided_backprop",
    "guided_gradcam",
    "is_untrained",
    "load_model",
    "normalize",
    "postprocess",
    "predict",
    "resolve_class",
    "shortcut_route",
    "upsample",
]
