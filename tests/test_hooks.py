"""labutils.hooks.capture: A^k and dy^c/dA^k (the seed's save_gradient), checked against autograd on
the network split by hand at the layer, and the guarantee that no hook outlives the ``with`` block."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close_rel, assert_model_unchanged, assert_no_hooks
from torch import nn

from labutils import capture, default_layer, get_layer, gradcam, guided_gradcam
from labutils.errors import LayerError

CLASSES = torch.tensor([243, 282])  # one class per image of the batch of 2
# the conv just before an inplace ReLU, and the model's default layer (the last ReLU of features)
LAYERS = {"vgg16": ["features.29", "features.28"], "alexnet": ["features.11", "features.10"]}
CASES = [(m, layer) for m, layers in LAYERS.items() for layer in layers]


def split_reference(
    model: nn.Module, x: torch.Tensor, layer: str, classes: torch.Tensor = CLASSES
) -> tuple[torch.Tensor, torch.Tensor]:
    """A^k and dy^c/dA^k computed without hooks: run features[:i+1], then the rest as torchvision's
    forward does (features, avgpool, flatten, classifier), and ask autograd for the gradient."""
    i = int(layer.split(".")[1])
    with torch.enable_grad():
        a = model.features[: i + 1](x)
        rest = model.features[i + 1 :](a.clone())  # clone: the next ReLU is inplace, A^k must stay intact
        scores = model.classifier(torch.flatten(model.avgpool(rest), 1))
        y_c = scores.gather(1, classes[:, None]).sum()
        (grad,) = torch.autograd.grad(y_c, a)
    return a.detach(), grad


@pytest.mark.parametrize("name,layer", CASES)
def test_captured_activations_and_gradients_equal_autograd_on_the_split_network(
    name, layer, models, images, snapshots
):
    model = models[name]
    a_ref, grad_ref = split_reference(model, images, layer)

    x = images.clone().requires_grad_(True)
    with capture(model, layer) as seen:
        scores = model(x)
        # the seed's way: backward from the class scores; inputs=[x] keeps .grad off the parameters
        scores.gather(1, CLASSES[:, None]).sum().backward(inputs=[x])

    assert seen.layer == layer
    assert seen.activations.shape == a_ref.shape == seen.gradients.shape
    assert_close_rel(seen.activations, a_ref, f"{name} {layer} activations")
    assert_close_rel(seen.gradients, grad_ref, f"{name} {layer} gradients")
    assert (grad_ref != 0).any()
    if isinstance(get_layer(model, layer), nn.Conv2d):
        # the conv's own output, before the inplace ReLU that follows it, and its gradient, which the
        # ReLU's backward has zeroed wherever the conv output was negative
        assert (seen.activations < 0).any(), "captured activations were overwritten by the inplace ReLU"
        assert (seen.gradients[seen.activations < 0] == 0).all()
    else:
        assert (seen.activations >= 0).all()
    assert_model_unchanged(model, snapshots[name])


def test_cut_graph_gives_the_same_gradients_under_no_grad(alexnet, images, snapshots):
    """cut_graph=True (what gradcam uses): layers below run without autograd, same A^k and gradients."""
    layer = "features.10"
    a_ref, grad_ref = split_reference(alexnet, images, layer)
    with capture(alexnet, layer, cut_graph=True) as seen, torch.no_grad():
        scores = alexnet(images)
        (grad,) = torch.autograd.grad(scores.gather(1, CLASSES[:, None]).sum(), seen.activations)
    assert torch.is_grad_enabled()
    assert seen.activations.grad_fn is None  # the graph starts at A^k
    assert_close_rel(seen.activations, a_ref, "cut_graph activations")
    assert_close_rel(seen.gradients, grad_ref, "cut_graph gradients")
    assert torch.equal(grad, seen.gradients)
    assert_model_unchanged(alexnet, snapshots["alexnet"])


def test_hooks_removed_after_an_exception_in_the_block(alexnet, images, snapshots):
    with pytest.raises(RuntimeError, match="raised inside the block"):
        with capture(alexnet, default_layer(alexnet)) as seen:
            alexnet(images[:1])
            assert seen.activations is not None
            raise RuntimeError("raised inside the block")
    assert_model_unchanged(alexnet, snapshots["alexnet"])


@pytest.mark.parametrize("name", ["alexnet", "vgg16"])
def test_layer_without_feature_maps_raises_layer_error_listing_valid_layers(name, models, images, snapshots):
    model = models[name]
    # AlexNet: classifier.1 is a Linear; VGG-16: classifier.1 is a ReLU on a (N, 4096) vector
    with pytest.raises(LayerError) as info:
        with capture(model, "classifier.1"):
            model(images[:1])
    message = str(info.value)
    assert "classifier.1" in message and "4-D" in message
    assert "features.0" in message and default_layer(model) in message
    assert_model_unchanged(model, snapshots[name])


@pytest.mark.parametrize("layer", ["features.99", "conv5_3", "", None])
def test_unknown_layer_raises_layer_error_listing_conv_and_relu_names(layer, vgg16):
    with pytest.raises(LayerError) as info:
        with capture(vgg16, layer):
            pytest.fail("the block must not run for an unknown layer")
    message = str(info.value)
    assert repr(layer) in message
    for valid in ("features.0", "features.1", "features.28", "features.29"):
        assert valid in message
    assert "classifier" not in message and "features.30" not in message  # only conv/ReLU layers
    assert_no_hooks(vgg16)


def test_cut_graph_does_not_leave_grad_mode_switched_on(alexnet, images):
    """cut_graph=True switches autograd on inside the forward pass; after the block the caller's
    grad mode must be back, also inside the caller's own no_grad() block (no state outlives a call)."""
    with torch.no_grad():
        with capture(alexnet, "features.11", cut_graph=True) as seen:
            alexnet(images[:1])
        assert seen.activations.requires_grad
        assert not torch.is_grad_enabled(), "capture(cut_graph=True) left autograd switched on"
    assert_no_hooks(alexnet)


@pytest.mark.parametrize("layer", ["classifier.1", "features.99"])
@pytest.mark.parametrize("explain", [gradcam, guided_gradcam])
def test_explanations_at_a_bad_layer_raise_layer_error_and_leave_nothing(explain, layer, alexnet, images, snapshots):
    with torch.no_grad():
        with pytest.raises(LayerError, match="features.11"):
            explain(alexnet, images[:1], 243, layer)
        assert not torch.is_grad_enabled()
    assert_model_unchanged(alexnet, snapshots["alexnet"])
