"""labutils.guided: the guided backpropagation rule checked by hand on a tiny network, against
Captum's GuidedBackprop on AlexNet, and Guided Grad-CAM = guided gradients x upsampled Grad-CAM."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from captum.attr import GuidedBackprop, LayerGradCam
from conftest import (
    assert_close_rel, assert_model_unchanged, assert_no_hooks, call_and_check, frozen, module_facts, third_party,
)
from torch import nn

from labutils import default_layer, get_layer, guided_backprop, guided_gradcam
from labutils.errors import ClassError

MIXED = [9, 22]  # classes whose random-weight Grad-CAM maps have mixed signs (see test_gradcam.py)


# ---------------------------------------------------------------- the rule, by hand


class Tiny(nn.Module):
    """Flatten -> Linear -> ReLU(inplace) [-> Linear -> ReLU(inplace)] -> Linear, on 3x2x2 'images'."""

    def __init__(self, depth: int):
        super().__init__()
        sizes = [12] + [10] * depth
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(depth)
            self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
            self.out = nn.Linear(sizes[-1], 4)
        self.relus = nn.ModuleList(nn.ReLU(inplace=True) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.flatten(x, 1)
        for linear, relu in zip(self.hidden, self.relus):
            h = relu(linear(h))
        return self.out(h)


def guided_by_hand(net: Tiny, x: torch.Tensor, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The input gradient of y^c under the guided rule, and the plain one, from the weights alone:
    going down, at each ReLU keep the gradient only where it is positive (guided) and where the
    ReLU's input was positive (both), then multiply by W^T."""
    with torch.no_grad():
        pre, h = [], torch.flatten(x, 1)[0]
        for linear in net.hidden:
            pre.append(linear.weight @ h + linear.bias)
            h = pre[-1].clamp(min=0)
        guided = plain = net.out.weight[c]
        for linear, z in zip(reversed(net.hidden), reversed(pre)):
            guided = linear.weight.T @ ((z > 0) * guided.clamp(min=0))
            plain = linear.weight.T @ ((z > 0) * plain)
    return guided.reshape(3, 2, 2), plain.reshape(3, 2, 2)


@pytest.mark.parametrize("depth", [1, 2])
def test_guided_rule_by_hand_on_a_tiny_network(depth):
    net = Tiny(depth).eval()
    x = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(10 + depth))
    before = module_facts(net)
    relus = list(net.relus)
    classes = [[0, 1, 2, 3], [3, 2, 1, 0]]
    e = guided_backprop(net, x, classes)
    assert e.raw.shape == (2, 4, 3, 2, 2)
    differs, nonzero = False, 0
    for n in range(2):
        for j, c in enumerate(classes[n]):
            guided, plain = guided_by_hand(net, x[n : n + 1], c)
            if guided.any():
                assert_close_rel(e.raw[n, j], guided, f"depth {depth} image {n} class {c}")
                nonzero += 1
            else:  # every path was cut by the rule: the result must be exactly zero too
                assert torch.equal(e.raw[n, j], guided), f"depth {depth} image {n} class {c}: expected zeros"
            differs |= not torch.allclose(guided, plain)
    assert nonzero >= 4, "too few nonzero guided gradients for the comparison to mean something"
    assert differs, "the guided rule never changed anything: the test would not see it missing"
    # the ReLUs are the same objects, still inplace, and nothing is left on the network
    assert module_facts(net) == before
    assert all(a is b and b.inplace for a, b in zip(relus, net.relus))
    assert_no_hooks(net)
    assert all(p.grad is None for p in net.parameters())


def test_guided_images_for_display_are_in_unit_range(alexnet, images):
    e = guided_backprop(alexnet, images, MIXED)
    assert e.maps.shape == e.raw.shape == (2, 1, 3, 224, 224)
    assert e.maps.min() >= 0 and e.maps.max() <= 1 and not e.maps.isnan().any()
    assert e.method == "guided-backprop" and e.layer is None and e.classes.tolist() == [[9], [22]]


def test_bad_classes_raise_class_error(alexnet, images):
    with pytest.raises(ClassError, match="3 classes for a batch of 2"):
        guided_backprop(alexnet, images, [1, 2, 3])
    with pytest.raises(ClassError, match="did you mean 'bull mastiff'"):
        guided_gradcam(alexnet, images, "bull mastif")
    assert_no_hooks(alexnet)


# ---------------------------------------------------------------- against Captum


def captum_guided(model: nn.Module, x: torch.Tensor, classes: list[int]) -> torch.Tensor:
    # Captum 0.9's GuidedBackprop puts backward hooks on the ReLUs and handles torchvision's
    # inplace=True ReLUs here (checked: same result as on a copy with inplace=False, see below).
    with third_party(model):
        return GuidedBackprop(model).attribute(x.clone(), target=classes).detach()


def upsampled_cam(model: nn.Module, x: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Grad-CAM from Captum, upsampled bilinearly to the image, ReLU, scaled to [0, 1]: (N, H, W)."""
    layer = get_layer(model, default_layer(model))
    with third_party(model):
        cam = LayerGradCam(model, layer).attribute(x.clone(), target=classes, relu_attributions=True).detach()
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False).clamp(min=0)[:, 0]
    low, high = cam.amin(dim=(1, 2), keepdim=True), cam.amax(dim=(1, 2), keepdim=True)
    assert (high > low).all()
    return (cam - low) / (high - low)


def test_guided_backprop_equals_captum_on_alexnet_and_on_its_non_inplace_copy(alexnet, images):
    e = guided_backprop(alexnet, images, MIXED)
    ref = captum_guided(alexnet, images, MIXED)
    for i in range(2):
        assert_close_rel(e.raw[i, 0], ref[i], f"alexnet guided image {i} vs Captum")
    # the guided rule matters: a plain gradient has negative parts the guided one cuts at every ReLU
    x = images.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(alexnet(x).gather(1, torch.tensor(MIXED)[:, None]).sum(), x)
    assert not torch.allclose(plain, e.raw[:, 0], rtol=1e-3, atol=1e-3 * plain.abs().max().item())

    not_inplace = copy.deepcopy(alexnet)
    for m in not_inplace.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    e2 = guided_backprop(not_inplace, images, MIXED)
    assert_close_rel(e2.raw, e.raw, "alexnet guided: inplace=False copy vs inplace original")
    ref2 = captum_guided(not_inplace, images, MIXED)
    assert_close_rel(ref2, ref, "Captum guided: inplace=False copy vs inplace original")


@pytest.mark.parametrize("name,n", [("alexnet", 2), ("vgg16", 1)])  # VGG-16: one image (full backward passes)
def test_guided_gradcam_is_guided_gradients_times_upsampled_gradcam(name, n, models, images, snapshots):
    model, x, classes = models[name], images[:n], MIXED[:n]
    e = call_and_check(model, snapshots[name], x, lambda m, t: guided_gradcam(m, t, classes), outputs=False)
    assert e.method == "guided-gradcam" and e.layer == default_layer(model)
    assert e.raw.shape == (n, 1, 3, 224, 224)
    expected = captum_guided(model, x, classes) * upsampled_cam(model, x, classes)[:, None]
    for i in range(n):
        assert_close_rel(e.raw[i, 0], expected[i], f"{name} guided Grad-CAM image {i}")
    assert e.maps.min() >= 0 and e.maps.max() <= 1
    assert_model_unchanged(model, snapshots[name])


# ---------------------------------------------------------------- side effects


CALLS = {
    "guided_backprop": lambda m, x: guided_backprop(m, x, MIXED),
    "guided_gradcam": lambda m, x: guided_gradcam(m, x, MIXED),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_call_leaves_alexnet_and_input_untouched_and_frozen_alexnet_gives_same_maps(call, alexnet, images, snapshots):
    result = call_and_check(alexnet, snapshots["alexnet"], images[:1], CALLS[call])
    assert result.raw.abs().max() > 0 and result.raw.shape[:2] == (1, 2)
    with frozen(alexnet):
        frozen_result = CALLS[call](alexnet, images[:1])
    assert_close_rel(frozen_result.raw, result.raw, f"alexnet {call}: frozen vs trainable parameters", rtol=1e-6)
    assert_model_unchanged(alexnet, snapshots["alexnet"])
