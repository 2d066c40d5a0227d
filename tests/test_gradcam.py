"""labutils.gradcam: equations (1) and (2) and the post-processing, checked against two independent
implementations (Captum's LayerGradCam for the raw map L^c, pytorch-grad-cam for the final map),
plus the class/target handling and the promise that a call leaves nothing behind."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerGradCam
from conftest import (
    assert_close_rel, assert_model_unchanged, assert_no_hooks, call_and_check, frozen, third_party,
)
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from labutils import default_layer, get_layer, gradcam, normalize
from labutils.errors import ClassError

TWO_CLASSES = [243, 282]  # bull mastiff, tiger cat
# With the seeded random weights, classes 243 and 282 give maps that are positive almost everywhere
# (their counterfactual maps are all zeros, which would prove nothing); classes 9 and 22 give maps
# of mixed sign on both test images, both models and both layers, so that the ReLU, the
# counterfactual and the normalization all have something to do. The tests check this themselves.
MIXED = [9, 22]
CONV_BEFORE_RELU = {"vgg16": "features.28", "alexnet": "features.10"}


def captum_cam(model, layer: str, x: torch.Tensor, target, negate: bool = False) -> torch.Tensor:
    """Captum's Grad-CAM at the layer's resolution, (N, 1, h, w); ``negate`` drives it with -y^c."""
    forward = (lambda t: -model(t)) if negate else model
    with third_party(model):
        return LayerGradCam(forward, get_layer(model, layer)).attribute(
            x.clone(), target=target, relu_attributions=True
        ).detach()


def assert_maps_in_unit_range(maps: torch.Tensor) -> None:
    assert not maps.isnan().any()
    assert maps.min() >= 0 and maps.max() <= 1
    peaks = maps.amax(dim=(-2, -1))
    assert ((peaks == 1) | (peaks == 0)).all(), "each map is scaled so that its peak is 1 (or is all zeros)"


# ---------------------------------------------------------------- the raw map L^c against Captum


@pytest.mark.parametrize(
    "name,layer",
    [("alexnet", None), ("alexnet", "features.10"), ("vgg16", None), ("vgg16", "features.28")],
)
def test_raw_map_equals_captum_layer_gradcam_for_a_batch_with_one_class_per_image(name, layer, models, images):
    model = models[name]
    layer = layer or default_layer(model)
    e = gradcam(model, images, MIXED, layer)
    assert e.layer == layer and e.method == "gradcam"
    assert e.classes.tolist() == [[9], [22]]
    ref = captum_cam(model, layer, images, MIXED)  # (2, 1, h, w)
    assert e.raw.shape == ref.shape
    for i in range(2):  # each image has its own scale; both maps must be nonzero to mean anything
        assert_close_rel(e.raw[i], ref[i], f"{name} {layer} image {i} vs Captum")
    assert e.maps.shape == (2, 1, 224, 224)
    assert_maps_in_unit_range(e.maps)
    assert ((e.raw == 0).any(dim=-1).any(dim=-1)).all(), "the ReLU of equation (2) should cut part of each map"
    # the scores are the logits y^c of each image's class
    with torch.no_grad():
        logits = model(images)
    assert_close_rel(e.scores[:, 0], logits[[0, 1], MIXED], f"{name} scores")


@pytest.mark.parametrize("name", ["alexnet", "vgg16"])
def test_several_classes_of_one_image_equal_one_captum_call_per_class(name, models, images):
    model = models[name]
    x = images[:1]
    e = gradcam(model, x, TWO_CLASSES)  # N == 1: a flat list means K classes of that image
    assert e.classes.tolist() == [TWO_CLASSES] and e.raw.shape[:2] == (1, 2)
    for j, c in enumerate(TWO_CLASSES):
        ref = captum_cam(model, default_layer(model), x, c)
        assert_close_rel(e.raw[0, j], ref[0, 0], f"{name} class {c} of one image vs Captum")
    assert not torch.equal(e.raw[0, 0], e.raw[0, 1]), "two classes gave the same map"


@pytest.mark.parametrize("name", ["alexnet", "vgg16"])
def test_counterfactual_equals_captum_driven_by_the_negated_score(name, models, images):
    model = models[name]
    layer = default_layer(model)
    e = gradcam(model, images, MIXED, counterfactual=True)
    assert e.method == "counterfactual"
    ref = captum_cam(model, layer, images, MIXED, negate=True)
    for i in range(2):
        assert_close_rel(e.raw[i], ref[i], f"{name} counterfactual image {i} vs Captum(-y)")
    assert_maps_in_unit_range(e.maps)


# ---------------------------------------------------------------- the final map against pytorch-grad-cam


@pytest.mark.parametrize("name,n", [("alexnet", 2), ("vgg16", 1)])  # pytorch-grad-cam is slow on VGG: 1 image
def test_final_map_equals_pytorch_grad_cam(name, n, models, images):
    model, x, classes = models[name], images[:n], MIXED[:n]
    e = gradcam(model, x, classes)
    with third_party(model), GradCAM(model=model, target_layers=[get_layer(model, default_layer(model))]) as cam:
        ref = cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(c) for c in classes])
    ref = torch.from_numpy(ref)  # (N, 224, 224): normalize(resize(relu(cam))) with a 1e-7 epsilon
    assert ref.shape == (n, 224, 224) and (ref == 0).any() and ref.amax(dim=(1, 2)).min() > 0.99
    torch.testing.assert_close(e.maps[:, 0], ref, rtol=0, atol=1e-5)
    print(f"[{name} final map vs pytorch-grad-cam] max |error| = {(e.maps[:, 0] - ref).abs().max():.2e}")


# ---------------------------------------------------------------- targets


def test_default_class_is_each_images_top1(alexnet, images):
    e = gradcam(alexnet, images)
    with torch.no_grad():
        top1 = alexnet(images).argmax(dim=1)
    assert e.classes.tolist() == [[int(top1[0])], [int(top1[1])]]


def test_class_names_any_case_equal_their_indices(alexnet, images):
    x = images[:1]
    by_name = gradcam(alexnet, x, ["bull mastiff", "Tiger Cat"])
    by_index = gradcam(alexnet, x, [243, 282])
    assert by_name.classes.tolist() == [[243, 282]]
    assert torch.equal(by_name.raw, by_index.raw)
    assert gradcam(alexnet, x, "BULL MASTIFF").classes.tolist() == [[243]]


def test_one_class_applies_to_every_image_and_lists_of_lists_give_k_per_image(alexnet, images):
    assert gradcam(alexnet, images, 243).classes.tolist() == [[243], [243]]
    classes = [[243, 282], [1, 2]]  # K = 2 classes for each of N = 2 images
    e = gradcam(alexnet, images, classes)
    assert e.classes.tolist() == classes and e.raw.shape[:2] == (2, 2)
    for j in range(2):  # map (i, j) is class classes[i][j] of image i: one Captum call per column
        ref = captum_cam(alexnet, default_layer(alexnet), images, [classes[0][j], classes[1][j]])
        for i in range(2):
            assert_close_rel(e.raw[i, j], ref[i, 0], f"image {i} class {classes[i][j]} (N=2, K=2) vs Captum")


@pytest.mark.parametrize(
    "classes,expected",
    [
        ([243, 282, 1], r"3 classes for a batch of 2 images"),
        ([[243], [282, 1]], r"2 lists of the same non-zero length"),
        ([], r"no class given"),
        ("bull mastif", r"did you mean 'bull mastiff'"),
        (1000, r"out of range.*0\.\.999"),
        (-1, r"out of range.*0\.\.999"),
        ("-1", r"out of range"),
        (True, r"not a class index or name"),
    ],
)
def test_bad_classes_raise_class_error_with_a_clear_message(classes, expected, alexnet, images):
    with pytest.raises(ClassError, match=expected):
        gradcam(alexnet, images, classes)
    assert_no_hooks(alexnet)


# ---------------------------------------------------------------- normalization


def test_flat_maps_normalize_to_zeros_not_nan():
    zeros = normalize(torch.zeros(1, 1, 7, 7))
    assert torch.equal(zeros, torch.zeros(1, 1, 7, 7))
    constant = normalize(torch.full((2, 1, 7, 7), 3.5))
    assert torch.equal(constant, torch.zeros(2, 1, 7, 7))
    mixed = normalize(torch.stack([torch.zeros(7, 7), torch.arange(49.0).reshape(7, 7)])[:, None])
    assert torch.equal(mixed[0], torch.zeros(1, 7, 7))
    assert_close_rel(mixed[1, 0], torch.arange(49.0).reshape(7, 7) / 48, "normalize a ramp")


# ---------------------------------------------------------------- side effects


CALLS = {  # one image, two classes (K = 2): the VGG-16 passes are slow
    "gradcam": lambda m, x: gradcam(m, x, MIXED),
    "counterfactual": lambda m, x: gradcam(m, x, MIXED, counterfactual=True),
    "gradcam-conv-layer": lambda m, x: gradcam(m, x, MIXED, CONV_BEFORE_RELU[m.labutils_name]),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_call_leaves_alexnet_and_input_untouched_and_frozen_alexnet_gives_same_maps(call, alexnet, images, snapshots):
    result = call_and_check(alexnet, snapshots["alexnet"], images[:1], CALLS[call])
    assert result.raw.abs().max() > 0
    with frozen(alexnet):  # requires_grad_(False) on every parameter
        frozen_result = CALLS[call](alexnet, images[:1])
    assert_close_rel(frozen_result.raw, result.raw, f"alexnet {call}: frozen vs trainable parameters", rtol=1e-6)
    assert torch.equal(frozen_result.classes, result.classes)
    assert_model_unchanged(alexnet, snapshots["alexnet"])


def test_calls_leave_vgg16_and_input_untouched(vgg16, images, snapshots):
    """The same checks on VGG-16, the outputs compared once at the end (each pass costs seconds)."""
    results = {name: call_and_check(vgg16, snapshots["vgg16"], images[:1], call, outputs=False)
               for name, call in CALLS.items()}
    assert all(r.raw.abs().max() > 0 for r in results.values())
    with frozen(vgg16):
        frozen_result = CALLS["gradcam"](vgg16, images[:1])
    assert_model_unchanged(vgg16, snapshots["vgg16"])
    assert_close_rel(frozen_result.raw, results["gradcam"].raw, "vgg16 gradcam: frozen vs trainable", rtol=1e-6)


def test_grad_mode_of_the_caller_is_kept(alexnet, images):
    with torch.no_grad():
        inside = gradcam(alexnet, images[:1], 243)
        assert not torch.is_grad_enabled()
    outside = gradcam(alexnet, images[:1], 243)
    assert torch.is_grad_enabled()
    assert torch.equal(inside.raw, outside.raw)


def test_calls_under_inference_mode_give_the_same_maps(alexnet, images):
    """A student may wrap a call in torch.inference_mode() as for predict(): the maps must not change
    (or fail with an obscure autograd error)."""
    from labutils import guided_backprop, guided_gradcam

    x = images[:1]
    expected = {f.__name__: f(alexnet, x, MIXED).raw for f in (gradcam, guided_backprop, guided_gradcam)}
    with torch.inference_mode():
        for f in (gradcam, guided_backprop, guided_gradcam):
            assert_close_rel(f(alexnet, x, MIXED).raw, expected[f.__name__], f"{f.__name__} under inference_mode")
    assert_no_hooks(alexnet)


def test_class_indices_from_numpy_and_torch_are_accepted(alexnet, images):
    """What students get from predict(), argmax() or numpy: indices that are not Python ints."""
    import numpy as np

    x = images[:1]
    expected = gradcam(alexnet, x, [243, 282]).raw
    for classes in (np.int64(243), np.array([243, 282]), [np.int64(243), np.int64(282)], [torch.tensor(243), 282]):
        e = gradcam(alexnet, x, classes)
        assert_close_rel(e.raw, expected[:, : e.raw.shape[1]], f"classes given as {type(classes).__name__}")
    with pytest.raises(ClassError):
        gradcam(alexnet, x, 243.5)
