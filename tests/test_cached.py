"""labutils.cached: Grad-CAM from cached feature maps A^k, the head above the layer run alone.

The reference is ``labutils.gradcam`` on the whole network (itself checked against Captum and
pytorch-grad-cam in test_gradcam.py): the head-only path must give the same Explanation to 1e-6.
"""

from __future__ import annotations

import re

import pytest
import torch
from conftest import assert_model_unchanged, assert_no_grads, assert_no_hooks, smooth_images
from torch import nn

from labutils import gradcam
from labutils.cached import (
    below, class_weights, explanation_from_weights, features_at, gradcam_from_features, head, head_pass,
)
from labutils.errors import LabError, LayerError, ModelError

MIXED = [9, 22]  # classes whose maps have mixed signs on the test images (see test_gradcam.py)


def assert_same_explanation(actual, expected, tol: float = 1e-6) -> None:
    assert actual.method == expected.method and actual.layer == expected.layer
    assert torch.equal(actual.classes, expected.classes)
    for field in ("scores", "raw", "maps"):
        a, e = getattr(actual, field), getattr(expected, field)
        assert a.shape == e.shape, field
        scale = max(e.abs().max().item(), 1e-12)
        torch.testing.assert_close(a, e, rtol=tol, atol=tol * scale, msg=lambda m: f"{field}: {m}")


@pytest.mark.parametrize(
    "name,layer",
    [
        ("alexnet", "features.11"),  # the default: last ReLU
        ("alexnet", "features.10"),  # a conv followed by an inplace ReLU
        ("alexnet", "features.3"),  # low in the network: most of it is "head"
        ("vgg16", "features.29"),
        ("vgg16", "features.28"),
    ],
)
def test_gradcam_from_features_equals_gradcam(name, layer, models, images, snapshots):
    model = models[name]
    classes = [MIXED, [243, 282]]  # two classes for each of the two images
    expected = gradcam(model, images, classes, layer)
    activations = features_at(model, layer, images)
    kept = activations.clone()
    actual = gradcam_from_features(model, layer, activations, classes)
    assert_same_explanation(actual, expected)
    assert expected.raw.amax() > 0 and (expected.maps > 0).any(), "a map of zeros would prove nothing"
    assert torch.equal(activations, kept), "A^k was changed (an inplace ReLU above the layer?)"
    assert_model_unchanged(model, snapshots[name], outputs=False)


def test_counterfactual_and_top1_from_features(alexnet, images, snapshots):
    layer = "features.11"
    activations = features_at(alexnet, layer, images)
    for kwargs in ({"classes": MIXED, "counterfactual": True}, {"classes": None}):
        expected = gradcam(alexnet, images, kwargs["classes"], layer, counterfactual=kwargs.get("counterfactual", False))
        actual = gradcam_from_features(alexnet, layer, activations, kwargs["classes"],
                                       counterfactual=kwargs.get("counterfactual", False))
        assert_same_explanation(actual, expected)
        assert expected.maps.amax() > 0
    assert_model_unchanged(alexnet, snapshots["alexnet"], outputs=False)


def test_features_at_is_the_layer_output(alexnet, images):
    """A^k from the lower part alone equals what a forward hook sees on the whole model."""
    seen = []
    handle = alexnet.features[10].register_forward_hook(lambda m, i, o: seen.append(o.clone()))
    try:
        with torch.no_grad():
            alexnet(images)
    finally:
        handle.remove()
    A = features_at(alexnet, "features.10", images)
    assert torch.equal(A, seen[0])
    assert (A < 0).any(), "a conv output: not yet through the ReLU"
    assert not A.requires_grad


def test_the_two_parts_are_the_models_own_modules(vgg16):
    lower, upper = below(vgg16, "features.29"), head(vgg16, "features.29")
    assert lower[0] is vgg16.features[0] and lower[-1] is vgg16.features[29]
    assert upper[0] is vgg16.features[30] and upper[-1] is vgg16.classifier[-1]
    ptrs = {p.data_ptr() for p in vgg16.parameters()}
    parts = [p.data_ptr() for part in (lower, upper) for p in part.parameters()]
    assert sorted(parts) == sorted(ptrs), "every parameter in exactly one part, none copied"
    with torch.no_grad():
        x = smooth_images(1, seed=5)
        torch.testing.assert_close(upper(lower(x)), vgg16(x), rtol=0, atol=0)


def test_kept_head_pass_gives_the_same_weights_class_by_class(alexnet, images, snapshots):
    """One forward pass through the head, then one backward pass per class (the explorer's way)."""
    layer = "features.11"
    run = head_pass(alexnet, layer, features_at(alexnet, layer, images[:1]))
    expected = gradcam(alexnet, images[:1], [MIXED + [243]], layer)
    for j, c in enumerate(MIXED + [243]):
        targets, alpha = class_weights(run, c)
        assert targets.tolist() == [[c]] and alpha.shape == (1, 1, 256)
        for counterfactual in (False, True):
            e = explanation_from_weights(run, targets, alpha, counterfactual=counterfactual)
            ref = expected if not counterfactual else gradcam(alexnet, images[:1], c, layer, counterfactual=True)
            k = j if not counterfactual else 0
            torch.testing.assert_close(e.raw[0, 0], ref.raw[0, k], rtol=1e-5, atol=1e-5 * ref.raw.abs().max().item())
            torch.testing.assert_close(e.maps[0, 0], ref.maps[0, k], rtol=1e-5, atol=1e-5)
            assert e.scores[0, 0] == pytest.approx(ref.scores[0, k].item(), rel=1e-5)
    del run
    assert_no_hooks(alexnet)
    assert_no_grads(alexnet)


def test_layers_that_are_not_conv_or_relu_of_features_are_refused(vgg16, images):
    for bad in ("features.4", "classifier.0", "features.99", ""):  # a max-pool, a linear layer, no such layers
        with pytest.raises(LayerError, match="features.29"):
            features_at(vgg16, bad, images[:1])
    with pytest.raises(ModelError):
        head(nn.Sequential(nn.Conv2d(3, 3, 1)), "0")


def test_a_kept_autograd_head_pass_refuses_weights_changed_since(alexnet, images):
    """features.10 (a conv) runs autograd: an optimizer step after head_pass made autograd's own
    inplace check fail with a RuntimeError; now one LabError saying what to do."""
    import copy

    model = copy.deepcopy(alexnet)
    run = head_pass(model, "features.10", features_at(model, "features.10", images))
    assert run.path == "autograd"
    with torch.no_grad():
        model.classifier[6].weight.mul_(2)  # what an optimizer step does: an in-place update
    with pytest.raises(LabError, match="weights changed since this head pass .*: run head_pass again"):
        class_weights(run, 3)


def test_the_cached_api_takes_inference_tensors_and_checks_its_inputs(alexnet, images, snapshots):
    expected = gradcam(alexnet, images, MIXED, "features.10")
    with torch.inference_mode():
        kept = features_at(alexnet, "features.10", images)  # an inference tensor
        under = gradcam_from_features(alexnet, "features.10", kept, MIXED)  # called under inference mode too
    assert_same_explanation(gradcam_from_features(alexnet, "features.10", kept, MIXED), expected)
    assert_same_explanation(under, expected)
    assert_same_explanation(gradcam_from_features(alexnet, "features.10", kept.double(), MIXED), expected)
    for bad, fragment in ((kept.numpy(), "got ndarray"), (kept[0], "got (256, 13, 13)")):
        with pytest.raises(LabError, match=re.escape(f"expected the feature maps A^k as a float tensor (N, C, h, w), "
                                                     f"{fragment}")):
            gradcam_from_features(alexnet, "features.10", bad, MIXED)
    run = head_pass(alexnet, "features.11", features_at(alexnet, "features.11", images))
    classes, alpha = class_weights(run, MIXED)
    for bad_classes, bad_alpha in ((classes[:1], alpha[:1]), (classes, alpha[..., :10]), (classes.tolist(), alpha)):
        with pytest.raises(LabError, match="do not fit this head pass of 2 images with 256 feature maps"):
            explanation_from_weights(run, bad_classes, bad_alpha)
    for size in ((0, 0), 224, (224.0, 224)):
        with pytest.raises(LabError, match=re.escape(f"size must be the input's (height, width) in pixels, such as "
                                                     f"(224, 224), got {size!r}")):
            explanation_from_weights(run, classes, alpha, size=size)
    assert_no_hooks(alexnet)
    assert_model_unchanged(alexnet, snapshots["alexnet"], outputs=False)
