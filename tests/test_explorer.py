"""labutils.explorer without a browser: set the controls from code, as a user's clicks would, and check
the picture, its caption, and which parts of the network had to run again.

The models are the session's random-weight AlexNet and VGG-16 (passed in, not loaded again). What
runs is counted with forward hooks on ``features[0]`` (the lower layers) and ``classifier[-1]``
(the head), added by the tests and removed after each."""

from __future__ import annotations

import datetime
import io
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import pytest
import torch
from conftest import assert_no_grads, assert_no_hooks
from ipywidgets.widgets import widget as widget_registry
from PIL import Image
from torch import nn

from labutils import feature_layers, gradcam, guided_backprop, guided_gradcam, predict
from labutils.errors import ImageNotFoundError, ModelError
from labutils.explorer import DISPLAY_SIDE, TOP, Explorer, explore, search_classes
from labutils.images import from_pil
from labutils.models import class_names

NOW = datetime.datetime.now(datetime.timezone.utc)  # an upload's time stamp


def make_picture(seed: int = 3, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A smooth, seeded RGB picture (not a photo: no sample file needed)."""
    g = np.random.default_rng(seed)
    coarse = Image.fromarray(g.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    return coarse.resize(size, Image.Resampling.BICUBIC)


def decode(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.float32)


@contextmanager
def counting(model: nn.Module) -> Iterator[dict[str, int]]:
    """Count the forward calls of the lowest layer and of the last layer while the block runs."""
    counts = {"lower": 0, "head": 0}

    def count(key: str):
        def hook(module, inputs, output):
            counts[key] += 1
        return hook

    handles = [model.features[0].register_forward_hook(count("lower")),
               model.classifier[-1].register_forward_hook(count("head"))]
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


@pytest.fixture
def explorer(models) -> Iterator[Explorer]:
    ex = explore(make_picture(), "alexnet", models=models)
    yield ex
    ex.close()


def caption_text(ex: Explorer) -> str:
    return ex.caption.value


# ---------------------------------------------------------------- what is shown first


def test_first_picture_shows_the_top1_class_with_its_probability(explorer, alexnet):
    x = from_pil(make_picture()).tensor
    top = predict(alexnet, x, k=TOP)[0]  # the full network, independently of the explorer
    assert [v for _, v in explorer.class_choice.options] == [c for c, _, _ in top]
    assert explorer.class_choice.value == top[0][0]
    first_label = explorer.class_choice.options[0][0]
    assert first_label == f"{top[0][0]} {top[0][1]} ({top[0][2]:.2%})"
    label = f"AlexNet · features.11 · {top[0][0]} {top[0][1]} · Grad-CAM"
    assert explorer.label() == label
    assert label in caption_text(explorer) and f"p = {top[0][2]:.2%}" in caption_text(explorer)
    assert "UNTRAINED" in explorer.banner.value  # the session's models have random weights
    assert explorer.layer_choice.value == "features.11"
    assert [v for _, v in explorer.layer_choice.options] == feature_layers(alexnet)
    picture = decode(explorer.picture.value)
    assert picture.shape == (DISPLAY_SIDE * 240 // 320, DISPLAY_SIDE, 3)
    assert explorer.input_caption.value and "input" in explorer.input_caption.value


def test_explanations_are_the_library_results(explorer, alexnet):
    """Every method shows what labutils' own functions compute for that class and layer."""
    x = from_pil(make_picture()).tensor
    c = explorer.class_choice.options[2][1]
    explorer.class_choice.value = c
    explorer.layer_choice.value = "features.8"
    references = {
        "gradcam": gradcam(alexnet, x, c, "features.8"),
        "counterfactual": gradcam(alexnet, x, c, "features.8", counterfactual=True),
        "guided-backprop": guided_backprop(alexnet, x, c),
        "guided-gradcam": guided_gradcam(alexnet, x, c, "features.8"),
    }
    for method, ref in references.items():
        explorer.method_choice.value = method
        shown = explorer.explanation
        assert shown.method == ref.method and shown.layer == ref.layer and shown.classes.tolist() == [[c]]
        assert ref.maps.amax() > 0, f"{method}: an empty reference map proves nothing"
        torch.testing.assert_close(shown.maps, ref.maps, rtol=1e-4, atol=1e-4, msg=lambda m: f"{method}: {m}")
        label = explorer.label()
        assert label.startswith("AlexNet") and class_names()[c] in label
        assert ("features.8" in label) == (method != "guided-backprop")  # guided backprop has no layer
        assert label.endswith({"gradcam": "Grad-CAM", "counterfactual": "Counterfactual Grad-CAM",
                               "guided-backprop": "Guided Backprop", "guided-gradcam": "Guided Grad-CAM"}[method])
    assert explorer.opacity.disabled  # a gradient picture is not blended
    assert_no_hooks(alexnet)
    assert_no_grads(alexnet)


def test_a_class_outside_the_top10_folds_the_head_once_and_shows_gradcam(explorer, alexnet):
    """At the seed's layer (the shortcut): the first new class multiplies the head's chain out, the maps stay exact."""
    x = from_pil(make_picture()).tensor
    assert explorer.layer_choice.value == "features.11"
    record = explorer._features.run.record
    assert record is not None and record.folded is None, "the top-10 need no fold"
    options = [v for _, v in explorer.class_choice.options]
    for outside in [c for c in range(1000) if c not in options][:2]:
        explorer.search.value = str(outside)
        assert explorer.class_choice.value == outside
        assert record.folded is not None
        ref = gradcam(alexnet, x, outside, shortcut=False)
        assert ref.maps.amax() > 0
        torch.testing.assert_close(explorer.explanation.maps, ref.maps, rtol=1e-4, atol=1e-4)
    assert_no_hooks(alexnet)
    assert_no_grads(alexnet)


# ---------------------------------------------------------------- what runs again after a change


def test_class_method_and_opacity_changes_do_not_rerun_the_lower_layers(explorer, alexnet):
    options = [v for _, v in explorer.class_choice.options]
    pictures = [explorer.picture.value]
    with counting(alexnet) as runs:
        explorer.class_choice.value = options[1]  # a top-10 class: its alpha was computed with A^k
        assert runs == {"lower": 0, "head": 0}
        assert f"{options[1]} {class_names()[options[1]]}" in explorer.label()
        pictures.append(explorer.picture.value)

        explorer.method_choice.value = "counterfactual"  # -alpha: nothing runs
        assert runs == {"lower": 0, "head": 0}
        assert explorer.label().endswith("Counterfactual Grad-CAM")
        pictures.append(explorer.picture.value)

        shown = explorer.explanation
        explorer.opacity.value = 0.9  # a re-blend
        assert runs == {"lower": 0, "head": 0} and explorer.explanation is shown
        pictures.append(explorer.picture.value)

        outside = next(c for c in range(1000) if c not in options)
        explorer.search.value = str(outside)  # a class outside the top-10: a backward pass through the head only
        assert explorer.class_choice.value == outside
        assert runs == {"lower": 0, "head": 0}, "a kept head pass needs no forward pass at all"
        assert "head only" in explorer.status.value
        pictures.append(explorer.picture.value)

        explorer.layer_choice.value = "features.8"  # new A^k: the lower layers run once
        assert runs == {"lower": 1, "head": 1}
        assert explorer.label().startswith("AlexNet · features.8 ·")
        assert explorer.class_choice.value == outside  # the class stays
        pictures.append(explorer.picture.value)

        explorer.method_choice.value = "guided-backprop"  # needs the whole network, with the guided rule
        assert runs["lower"] == 2
        explorer.method_choice.value = "guided-gradcam"  # guided backprop of this class is kept
        explorer.method_choice.value = "guided-backprop"
        assert runs["lower"] == 2
    assert len(set(pictures)) == len(pictures), "every change gave a new picture"
    assert_no_hooks(alexnet)
    assert_no_grads(alexnet)


def test_opacity_blends_image_and_heatmap(explorer):
    shown = explorer.explanation
    explorer.opacity.value = 0.0
    plain = decode(explorer.picture.value)
    base = np.asarray(explorer._display_base, dtype=np.float32)
    assert np.abs(plain - base).mean() < 3  # JPEG noise only: the image itself
    explorer.opacity.value = 1.0
    heat = decode(explorer.picture.value)
    explorer.opacity.value = 0.5
    half = decode(explorer.picture.value)
    assert np.abs(half - (plain + heat) / 2).mean() < 3
    assert np.abs(heat - plain).mean() > 20
    assert explorer.explanation is shown


def test_switching_back_shows_the_same_picture_again(explorer):
    first, options = explorer.picture.value, [v for _, v in explorer.class_choice.options]
    explorer.class_choice.value = options[4]
    assert explorer.picture.value != first
    explorer.class_choice.value = options[0]
    assert explorer.picture.value == first


# ---------------------------------------------------------------- the class search box


def test_search_filters_and_selects(explorer):
    explorer.search.value = "tiger cat"
    assert explorer.class_choice.value == 282  # the exact name first
    assert all("tiger" in label.lower() for label, _ in explorer.class_choice.options)
    assert "282 tiger cat" in explorer.label()
    explorer.search.value = "243"
    assert explorer.class_choice.value == 243 and "243 bull mastiff" in explorer.label()
    before = explorer.picture.value
    explorer.search.value = "no such class"
    assert "no ImageNet class matches" in explorer.status.value
    assert explorer.class_choice.value == 243 and explorer.picture.value == before
    explorer.search.value = ""
    values = [v for _, v in explorer.class_choice.options]
    assert len(values) == TOP + 1 and values[-1] == 243  # the top-10, and the class being shown


def test_search_classes_ranks_exact_then_prefix_then_substring():
    found = search_classes("cat")
    names = [class_names()[c].lower() for c in found]
    assert all("cat" in n for n in names)
    starts = [n.startswith("cat") for n in names]
    assert starts == sorted(starts, reverse=True), "names starting with the query come first"
    assert search_classes("TIGER CAT")[0] == 282
    assert search_classes("7")[0] == 7
    assert search_classes("   ") == []
    assert search_classes("²") == [] and search_classes("٣") == []  # digits that are not ASCII: no match, no error


# ---------------------------------------------------------------- images and models


def test_model_switch_lists_the_new_layers(explorer, vgg16):
    explorer.model_choice.value = "vgg16"
    assert explorer.layer_choice.value == "features.29"
    assert [v for _, v in explorer.layer_choice.options] == feature_layers(vgg16)
    assert explorer.label().startswith("VGG-16 · features.29 · ")
    assert explorer.model is vgg16  # the model given to explore(), not a new one


def test_upload_adds_and_shows_the_image(explorer):
    before_input, before = explorer.input_picture.value, explorer.picture.value
    buffer = io.BytesIO()
    make_picture(seed=11, size=(200, 300)).save(buffer, format="PNG")
    explorer.upload.value = ({"name": "mine.png", "type": "image/png", "size": len(buffer.getvalue()),
                              "content": memoryview(buffer.getvalue()), "last_modified": NOW},)
    label, key = explorer.image_choice.options[-1]
    assert label == "upload: mine.png" and explorer.image_choice.value == key
    assert "mine.png" in explorer.input_caption.value
    assert explorer.input_picture.value != before_input and explorer.picture.value != before
    assert decode(explorer.picture.value).shape == (DISPLAY_SIDE, round(DISPLAY_SIDE * 200 / 300), 3)


def test_a_broken_upload_is_reported_and_changes_nothing(explorer):
    options, value, picture = explorer.image_choice.options, explorer.image_choice.value, explorer.picture.value
    explorer.upload.value = ({"name": "notes.txt", "type": "text/plain", "size": 5, "content": memoryview(b"hello"),
                              "last_modified": NOW},)
    assert "notes.txt is not an image" in explorer.status.value
    assert explorer.image_choice.options == options and explorer.image_choice.value == value
    assert explorer.picture.value == picture


def test_sample_images_are_in_the_list(explorer):
    explorer.image_choice.value = "sample:cat_dog.jpg"  # needs LABUTILS_DATA (or data/) holding the samples
    assert "cat_dog.jpg" in explorer.input_caption.value, explorer.status.value
    assert explorer.label().startswith("AlexNet · features.11 · ")


def test_closing_the_explorer_closes_all_its_widgets(models):
    before = len(widget_registry._instances)
    explore(make_picture(), "alexnet", models=models).close()
    assert len(widget_registry._instances) == before


def test_bad_arguments_raise_clear_errors_and_leave_no_widgets(models):
    before = len(widget_registry._instances)
    with pytest.raises(ModelError, match="alexnet"):
        explore(make_picture(), "resnet50", models=models)
    with pytest.raises(ImageNotFoundError):
        explore("no/such/picture.jpg", "alexnet", models=models)
    assert len(widget_registry._instances) == before, "a failed explore() left widgets open"


# ---------------------------------------------------------------- the computation, without a widget


def test_the_exploration_computes_the_library_maps_without_a_widget(alexnet):
    """``Exploration`` alone: A^k and the head pass once; then classes and methods run no forward pass."""
    from labutils.exploring import Exploration

    image = from_pil(make_picture())
    state = Exploration({"alexnet": alexnet})
    state.show_image("given:picture", image)
    with counting(alexnet) as counts:
        state.compute_features("alexnet", "features.8", new_predictions=True)
    assert counts == {"lower": 1, "head": 1}
    top = state.top()
    assert top == [i for i, _, _ in predict(alexnet, image.tensor, k=TOP)[0]]
    cases = [(top[1], "gradcam"), (top[1], "counterfactual"), (top[-1], "gradcam")]
    cases += [next((c, "gradcam") for c in range(1000)  # a class outside the top-10, with a map that is not empty
                   if c not in top and gradcam(alexnet, image.tensor, c, "features.8").maps.amax() > 0)]
    refs = [gradcam(alexnet, image.tensor, c, "features.8", counterfactual=method == "counterfactual")
            for c, method in cases]
    with counting(alexnet) as counts:
        for (c, method), ref in zip(cases, refs):
            shown = state.explain(c, method)
            assert shown.method == ref.method and shown.classes.tolist() == [[c]] and ref.maps.amax() > 0
            torch.testing.assert_close(shown.maps, ref.maps, rtol=1e-4, atol=1e-4)
    assert counts == {"lower": 0, "head": 0}, "a class or method change ran the network forward"
    assert not state.has_guided(top[0])
    with counting(alexnet) as counts:
        first, again = state.explain(top[0], "guided-backprop"), state.explain(top[0], "guided-backprop")
    assert counts == {"lower": 1, "head": 1} and again is first and state.has_guided(top[0])
    torch.testing.assert_close(first.maps, guided_backprop(alexnet, image.tensor, top[0]).maps)
    assert_no_hooks(alexnet)
    assert_no_grads(alexnet)
