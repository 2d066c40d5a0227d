"""The lab's errors: each says what is wrong and how to fix it, in one line.

Every error labutils raises on bad input is a ``LabError``; the command line prints
its message as one line and exits non-zero. Each class also derives from the
built-in exception a Python programmer would expect (``ValueError``,
``FileNotFoundError``...), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class LabError(Exception):
    """Base class: a problem with the user's input, not a bug in labutils."""


class ModelError(LabError, ValueError):
    """A model name that is not one of the lab's (``alexnet``, ``vgg16``)."""


class ImageError(LabError, ValueError):
    """An image file that cannot be used (missing, not an image, truncated, too small...)."""


class ImageNotFoundError(ImageError, FileNotFoundError):
    """An image path that does not exist."""


class ClassError(LabError, ValueError):
    """An ImageNet class that does not exist, or classes that do not fit the batch."""


class LayerError(LabError, ValueError):
    """A layer name that does not exist, or whose output is not a 4-D feature map."""


class OverlayError(LabError, ValueError):
    """Overlay settings that cannot be drawn: alpha outside [0, 1], an unknown colormap, a map that is not (H, W)."""


class WeightsError(LabError, RuntimeError):
    """Weights that are missing, broken, of the wrong architecture, or unsafe to load."""


class DownloadError(LabError, OSError):
    """A download that failed or whose checksum did not match."""
