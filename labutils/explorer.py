"""The interactive explorer: pick an image, a model, a class, a method and a layer, and see the map.

``explore()`` in a notebook cell shows ipywidgets controls above a labelled picture::

    from labutils.explorer import explore
    explore()                      # the seed's cat_dog.jpg on VGG-16
    explore("my_photo.jpg", "alexnet")

The picture is a JPEG in a ``widgets.Image`` whose bytes are replaced in place, so it does not
flicker. This module holds the widgets; what they show is computed, and kept between two pictures,
by ``labutils.exploring.Exploration`` (A^k, the head pass, alpha_k^c per class, Guided
Backpropagation), which runs without a widget. The widgets keep the current explanation: moving the
opacity slider only re-blends the overlay.
"""

from __future__ import annotations

import html
import io
import os
import time
from pathlib import Path
from typing import Mapping

import ipywidgets as widgets
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn

from .data import DEFAULT_SAMPLE, sample_images, sample_path
from .errors import ImageError, LabError
from .exploring import GUIDED_KEPT, METHODS, SEARCH_LIMIT, TOP, Exploration, FeatureCache, search_classes  # noqa: F401
from .gradcam import Explanation
from .images import LabImage, from_pil, load_image
from .models import ARCHITECTURES, architecture, class_names, default_layer, feature_layers, get_layer
from .overlay import METHOD_TITLES, explanation_image, title, untrained_banner

DISPLAY_SIDE = 448  # the pictures are shown with this many pixels on their longest side

_COLUMN = dict(align_items="flex-start", margin="0 12px 0 0")  # pictures at their own size, not stretched
ImageSpec = str | os.PathLike | LabImage | Image.Image | None


class Explorer(widgets.VBox):
    """The explorer widget; ``explore()`` makes one. Its controls can also be set from code (tests)."""

    def __init__(self, image: ImageSpec = None, model_name: str = "vgg16", *,
                 models: Mapping[str, nn.Module] | None = None) -> None:
        architecture(model_name)  # an unknown name: ModelError naming the lab's models
        super().__init__()
        self.add_class("labutils-explorer")
        self.state = Exploration(models, say=lambda text: setattr(self.status, "value", _html_line(text, "#555")))
        self.models = self.state.models  # loaded models, by name
        self._images: dict[str, LabImage] = {}  # uploaded or given images, by their key in the image list
        self._display_base: Image.Image | None = None  # the current image's display copy
        self._explanation: Explanation | None = None
        self._busy = False
        self._uploads = 0
        self.updates = 0  # finished updates, numbered in the status line ("update 3: ...")

        samples = _sample_names()
        self.image_choice = self._control(widgets.Dropdown(options=[(n, f"sample:{n}") for n in samples],
                                                           description="image"), "image")
        self.upload = self._control(widgets.FileUpload(accept="image/*", multiple=False, description="upload"),
                                    "upload")
        self.model_choice = self._control(
            widgets.Dropdown(options=[(a.title, n) for n, a in ARCHITECTURES.items()], description="model"), "model")
        self.class_choice = self._control(widgets.Dropdown(description="class"), "class")
        self.search = self._control(widgets.Text(placeholder="search the 1000 ImageNet classes", description="search",
                                                 continuous_update=True), "search")
        self.method_choice = self._control(
            widgets.Dropdown(options=[(METHOD_TITLES[m], m) for m in METHODS], description="method"), "method")
        self.layer_choice = self._control(widgets.Dropdown(description="layer"), "layer")
        self.opacity = self._control(widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="opacity",
                                                         continuous_update=True), "opacity")
        self.banner = self._control(widgets.HTML(), "banner")
        self.input_caption = self._control(widgets.HTML(), "input-caption")
        self.input_picture = self._control(widgets.Image(format="jpeg"), "input-picture")
        self.caption = self._control(widgets.HTML(), "caption")
        self.picture = self._control(widgets.Image(format="jpeg"), "picture")
        self.status = self._control(widgets.HTML(), "status")
        self.children = [
            widgets.HBox([self.image_choice, self.upload, self.model_choice]),
            widgets.HBox([self.class_choice, self.search]),
            widgets.HBox([self.method_choice, self.layer_choice, self.opacity]),
            self.banner,
            widgets.HBox([widgets.VBox([self.input_caption, self.input_picture], layout=_COLUMN),
                          widgets.VBox([self.caption, self.picture], layout=_COLUMN)]),
            self.status,
        ]

        # the first picture; errors here are raised (a bad image path, weights that cannot be loaded)
        self._busy = True
        start = time.perf_counter()
        try:
            self.image_choice.options = self.image_choice.options + self._initial_image(image)
            self.image_choice.value = self._image_key
            self.model_choice.value = model_name
            self._select_model(self.model_choice.value)
            self._compute_features(new_predictions=True)
            self._select_class(None)
            self._compute_explanation()
            self._render()
        except BaseException:
            self.close()  # no half-built widgets left in ipywidgets' registry
            raise
        finally:
            self._busy = False
        self._report(f"ready: A^k at {self.layer_choice.value} and the head pass computed "
                     f"({(time.perf_counter() - start) * 1e3:.0f} ms)")

        self.image_choice.observe(lambda _: self._update("image"), "value")
        self.upload.observe(lambda _: self._update("upload"), "value")
        self.model_choice.observe(lambda _: self._update("model"), "value")
        self.layer_choice.observe(lambda _: self._update("layer"), "value")
        self.class_choice.observe(lambda _: self._update("class"), "value")
        self.search.observe(lambda _: self._update("search"), "value")
        self.method_choice.observe(lambda _: self._update("method"), "value")
        self.opacity.observe(lambda _: self._update("opacity"), "value")

    # ------------------------------------------------------------ what the user sees

    @property
    def model(self) -> nn.Module:
        """The model currently shown."""
        return self.models[self.model_choice.value]

    @property
    def explanation(self) -> Explanation:
        """The explanation currently shown (1 image, 1 class)."""
        return self._explanation

    def close(self) -> None:
        """Close the explorer and every widget inside it."""
        for child in self.children:
            _close_tree(child)
        super().close()
        self.layout.close()

    @property
    def _image_key(self) -> str:
        return self.state.image_key

    @property
    def _probabilities(self) -> torch.Tensor | None:
        return self.state.probabilities

    @property
    def _features(self) -> FeatureCache | None:
        return self.state.features

    def label(self) -> str:
        """'VGG-16 · features.29 · 243 bull mastiff · Grad-CAM': what the picture shows (its caption's first part)."""
        return title(self.model, self._explanation, 0)

    @staticmethod
    def _control(widget: widgets.DOMWidget, name: str) -> widgets.DOMWidget:
        """Give a part of the explorer the CSS class ``labutils-<name>`` (what browser tests look for)."""
        widget.add_class(f"labutils-{name}")
        if isinstance(widget, widgets.widget_description.DescriptionWidget):
            widget.style.description_width = "initial"
        return widget

    # ------------------------------------------------------------ the update after a control changed

    def _update(self, what: str) -> None:
        """Recompute what depends on the control ``what`` and show it; a LabError is shown, not raised."""
        if self._busy:
            return  # a change made by the explorer itself
        self._busy = True
        self.updates += 1
        start = time.perf_counter()
        before = self._settings()
        try:
            self.status.value = _html_line(f"computing ({what} changed)…", "#555")
            done = self._recompute(what)
        except LabError as exc:
            self._restore(before)
            self._report(str(exc), "#b00")
        except Exception as exc:  # a bug: say so in the page too, and let ipywidgets log the traceback
            self._report(f"internal error: {type(exc).__name__}: {exc}", "#b00")
            raise
        else:
            if done is not None:  # None: the status line already says what happened
                self._report(f"{what} changed: {done} ({(time.perf_counter() - start) * 1e3:.0f} ms)")
        finally:
            self._busy = False

    def _report(self, text: str, colour: str = "#555") -> None:
        """The status line after an update: its number, then what happened."""
        self.status.value = _html_line(f"update {self.updates}: {text}", colour)

    def _recompute(self, what: str) -> str | None:
        """The work for one change; returns what had to run (for the status line)."""
        if what == "opacity":
            self._render()
            return "re-blended only"
        if what == "search":
            if not self._apply_search():
                return None
            what = "class"
        ran = "backward pass through the head only"
        if what in ("image", "upload", "model", "layer"):
            if what == "upload":
                self._add_upload()  # selects the new image
            if what in ("image", "upload"):
                self._load_choice(self.image_choice.value)
            if what in ("image", "upload", "model"):
                self._select_model(self.model_choice.value)
            self._compute_features(new_predictions=what != "layer")
            if what != "layer":
                self._select_class(None)  # the new top-1
            ran = f"A^k at {self.layer_choice.value} and the head pass computed"
        elif what == "class" and self.class_choice.value in self._features.weights:
            ran = "cached alpha_k^c, no network"
        elif what == "method":
            ran = "no new A^k"
        if self.method_choice.value.startswith("guided") and not self.state.has_guided(self.class_choice.value):
            ran += "; Guided Backpropagation through the whole network"
        self._compute_explanation()
        self._render()
        return ran

    def _settings(self) -> list[tuple[widgets.ValueWidget, tuple | None, object]]:
        """Each control's list of options (if it has one) and value, to put back if a change fails."""
        controls = (self.image_choice, self.model_choice, self.layer_choice, self.class_choice, self.method_choice,
                    self.search)
        return [(c, getattr(c, "options", None), c.value) for c in controls]

    def _restore(self, settings: list[tuple[widgets.ValueWidget, tuple | None, object]]) -> None:
        """Put the controls back as they were before a change that failed (the picture has not changed)."""
        for control, options, value in settings:
            if options is not None and control.options != options:
                control.options = options
            control.value = value

    # ------------------------------------------------------------ image and model

    def _initial_image(self, image: ImageSpec) -> tuple[tuple[str, str], ...]:
        """Load the image given to ``explore``; return the extra entry it needs in the image list."""
        if image is None:
            self._load_choice(f"sample:{DEFAULT_SAMPLE}")
            return () if DEFAULT_SAMPLE in _sample_names() else ((DEFAULT_SAMPLE, self._image_key),)
        if isinstance(image, (str, os.PathLike)) and not Path(image).exists() and str(image) in _sample_names():
            self._load_choice(f"sample:{image}")
            return ()
        if isinstance(image, LabImage):
            lab_image = image
            if _is_sample(image):  # e.g. load_image(sample_path("cat_dog.jpg")): it is in the list already
                self._images[f"sample:{image.name}"] = image
                self._load_choice(f"sample:{image.name}")
                return ()
        elif isinstance(image, Image.Image):
            lab_image = from_pil(image, Path(image.filename).name if getattr(image, "filename", "") else "image")
        else:
            lab_image = load_image(image)
        key = f"given:{lab_image.name}"
        self._images[key] = lab_image
        self._load_choice(key)
        return ((f"yours: {lab_image.name}", key),)

    def _load_choice(self, key: str) -> None:
        """Make the image with this key in the image list the current one."""
        if key in self._images:
            lab_image = self._images[key]
        else:  # "sample:<name>"
            lab_image = load_image(sample_path(key.removeprefix("sample:")))
        self.state.show_image(key, lab_image)
        self._display_base = _display_copy(lab_image.original)
        self.input_picture.value = _jpeg(self._display_base)
        self.input_caption.value = _html_line(f"input: {lab_image.name}", "#000")

    def _add_upload(self) -> None:
        """Turn the uploaded file into an entry of the image list and select it."""
        if not self.upload.value:
            raise ImageError("no file uploaded")
        upload = self.upload.value[-1]
        name = upload["name"] or "upload"
        try:
            picture = Image.open(io.BytesIO(bytes(upload["content"])))
            picture.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"the upload {name} is not an image PIL can read ({exc}); upload a JPEG or PNG") from exc
        lab_image = from_pil(ImageOps.exif_transpose(picture), name)
        self._uploads += 1
        key = f"upload:{self._uploads}:{name}"
        self._images[key] = lab_image
        self.image_choice.options = self.image_choice.options + ((f"upload: {name}", key),)
        self.image_choice.value = key

    def _select_model(self, name: str) -> None:
        """Load the model (once) and list its layers, selecting the seed's default layer."""
        model = self.state.model(name)
        self.layer_choice.options = [(f"{n} ({type(get_layer(model, n)).__name__})", n) for n in feature_layers(model)]
        self.layer_choice.value = default_layer(model)
        self.banner.value = _html_line(untrained_banner(model) or "", "#c00", bold=True)

    # ------------------------------------------------------------ the computations

    def _compute_features(self, new_predictions: bool) -> None:
        """A^k at the chosen layer, the head pass and the top-10 classes' alpha_k^c (``Exploration``)."""
        self.state.compute_features(self.model_choice.value, self.layer_choice.value, new_predictions)

    def _compute_explanation(self) -> None:
        method = self.method_choice.value
        self._explanation = self.state.explain(self.class_choice.value, method)
        self.opacity.disabled = method.startswith("guided")  # a gradient picture is not blended
        self.layer_choice.disabled = method == "guided-backprop"  # it has no target layer

    def _render(self) -> None:
        """Draw the current explanation into the picture, and write its caption."""
        picture = explanation_image(self._display_base, self._explanation, 0, 0, self.opacity.value)
        self.picture.value = _jpeg(picture)
        c = int(self._explanation.classes[0, 0])
        score = float(self._explanation.scores[0, 0])
        self.caption.value = _html_line(self.label(), "#000", bold=True) + _html_line(
            f"p = {float(self._probabilities[c]):.2%} (softmax), score y^c = {score:.3f}", "#000")

    # ------------------------------------------------------------ the class list and the search box

    def _class_text(self, c: int) -> str:
        return f"{c} {class_names()[c]} ({float(self._probabilities[c]):.2%})"

    def _select_class(self, c: int | None) -> None:
        """List the top-10 classes (plus ``c`` if it is not among them) and select ``c`` (None: the top-1)."""
        top = self.state.top()
        c = top[0] if c is None else c
        self.search.value = ""
        self.class_choice.options = [(self._class_text(i), i) for i in top + ([] if c in top else [c])]
        self.class_choice.value = c

    def _apply_search(self) -> bool:
        """List the classes matching the search box and select the best match; False if there is none."""
        query = self.search.value.strip()
        if not query:
            self._select_class(self.class_choice.value)
            return True
        found = search_classes(query, self._probabilities)
        if not found:
            self._report(f"no ImageNet class matches {query!r}; the picture is unchanged", "#b00")
            return False
        current = self.class_choice.value
        self.class_choice.options = [(self._class_text(i), i) for i in found]
        self.class_choice.value = current if current in found else found[0]
        return True


def explore(image: ImageSpec = None, model_name: str = "vgg16", *,
            models: Mapping[str, nn.Module] | None = None) -> widgets.Widget:
    """The interactive explorer, for a notebook cell.

    ``image``: a sample's name, an image path, a ``LabImage`` or a PIL picture (default: the seed's
    cat_dog.jpg). ``model_name``: ``"vgg16"`` or ``"alexnet"``, loaded with ``load_model`` (so
    ``LABUTILS_WEIGHTS`` applies). ``models``: models already loaded, by name, to reuse.
    """
    return Explorer(image, model_name, models=models)


# ---------------------------------------------------------------- small helpers


def _sample_names() -> list[str]:
    try:
        return [s.name for s in sample_images()]
    except LabError:  # labutils used outside the lab's checkout: no manifest, no samples
        return []


def _close_tree(widget: widgets.Widget) -> None:
    """Close a widget and everything inside it (layouts and styles included)."""
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    for part in ("layout", "style"):
        if isinstance(getattr(widget, part, None), widgets.Widget):
            getattr(widget, part).close()
    widget.close()


def _is_sample(image: LabImage) -> bool:
    """Is ``image`` the lab's sample of that name (the same file)?"""
    if image.path is None or image.name not in _sample_names():
        return False
    try:
        return image.path.resolve() == sample_path(image.name, download=False).resolve()
    except LabError:
        return False


def _display_copy(picture: Image.Image) -> Image.Image:
    """The picture scaled (up or down) to DISPLAY_SIDE pixels on its longest side, for a steady layout."""
    return ImageOps.contain(picture, (DISPLAY_SIDE, DISPLAY_SIDE), Image.Resampling.BILINEAR)


def _jpeg(picture: Image.Image) -> bytes:
    """JPEG bytes for a ``widgets.Image``: encoding takes about 1 ms, PNG 30-40 ms (and 7x the bytes)."""
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def _html_line(text: str, colour: str, bold: bool = False) -> str:
    if not text:
        return ""
    weight = "bold" if bold else "normal"
    return f'<div style="color:{colour};font-weight:{weight}">{html.escape(text)}</div>'
