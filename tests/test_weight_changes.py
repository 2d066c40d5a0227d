"""Issue 22: no silent wrong map after the weights change, whatever changed them.

A matrix of weight changes (optimizer steps of every kind, load_state_dict modes, nn.init, in-place
edits under no_grad / inference_mode, ``.data``, numpy views, ``torch._foreach_*``, a replaced
Linear) x {Grad-CAM, counterfactual, Guided Grad-CAM, the cached API the explorer keeps}: after
each change, the shortcut (which caches W1s) must give autograd's maps (``shortcut=False``), and a
head pass kept from before the change must refuse to serve. The breadth runs on a small network of
torchvision's AlexNet class (the shortcut's route holds: same head structure, 10 classes), the
issue's own reproductions on AlexNet and VGG-16. Then what must never block PyTorch (swap mode,
``assign=True``, ``to()``, ``double()``), state that must not outlive a model, inference-mode
models, and the route's fall-back under class-level patches and torch function / dispatch modes.
"""

from __future__ import annotations

import copy
import gc
import weakref

import numpy as np
import pytest
import torch
import torchvision
from conftest import assert_close_rel, assert_no_hooks
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import labutils
from labutils import gradcam, guided_gradcam
from labutils import shortcut as shortcut_module
from labutils.errors import ModelError
from labutils.cached import class_weights, explanation_from_weights, features_at, gradcam_from_features, head_pass
from labutils.shortcut import fingerprint, shortcut_route, summed_weights

LAYER = "features.4"  # the small network's last ReLU: a max-pool, the adaptive pool, then the classifier
CLASSES = [[1, 7], [3, 0]]  # K = 2 classes of N = 2 images


def small_alexnet(seed: int = 0) -> nn.Module:
    """torchvision's AlexNet class (its forward: the shortcut's route holds) with small layers, 10 classes."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.AlexNet.__new__(torchvision.models.AlexNet)
        nn.Module.__init__(model)
        model.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
        model.avgpool = nn.AdaptiveAvgPool2d(3)
        model.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(32 * 9, 64), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(64, 48), nn.ReLU(inplace=True), nn.Linear(48, 10))
    model.labutils_name = "alexnet"  # what load_model sets: the cached API splits it at features.i as AlexNet's
    return model.eval()


@pytest.fixture
def x() -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    return nn.functional.interpolate(torch.randn(2, 3, 8, 8, generator=g), size=(40, 40), mode="bilinear")


def train_steps(optimizer_class, steps: int = 1, params=lambda m: m.classifier.parameters(), target: int = 3,
                lr: float = 0.05, **options):
    def change(model: nn.Module, x: torch.Tensor) -> None:
        optimizer = optimizer_class(params(model), lr=lr, **options)
        model.train()
        for _ in range(steps):
            (-model(x)[:, target].sum()).backward()  # make the class more likely
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        model.eval()
    return change


def noise_like(w: torch.Tensor, seed: int = 2) -> torch.Tensor:
    """Noise of the weight's scale, for every entry (whole rows change)."""
    noise = torch.randn(w.shape, generator=torch.Generator().manual_seed(seed)).to(w.device, w.dtype)
    return 0.7 * w.detach().std() * noise


def other_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v + noise_like(v, seed=3) if v.is_floating_point() else v for k, v in model.state_dict().items()}


def w1(model: nn.Module) -> nn.Parameter:
    return model.classifier[1].weight


def data_assignment(model, x):
    w1(model).data = w1(model).detach() + noise_like(w1(model))


def numpy_view(model, x):
    array = w1(model).detach().numpy()  # shares memory with the weight: autograd's version counter never moves
    array += noise_like(w1(model)).numpy()


def foreach_edit(model, x):
    params = [p for p in model.classifier.parameters()]
    with torch.no_grad():
        torch._foreach_add_(params, [noise_like(p) for p in params])


def inference_mode_edit(model, x):
    with torch.inference_mode():
        w1(model).add_(noise_like(w1(model)))


def replaced_linear(model, x):
    old = model.classifier[1]
    new = nn.Linear(old.in_features, old.out_features)
    with torch.no_grad():
        new.weight.copy_(old.weight + noise_like(old.weight))
        new.bias.copy_(old.bias)
    model.classifier[1] = new


CHANGES = {
    "SGD, single-tensor": train_steps(torch.optim.SGD, foreach=False),
    "SGD, foreach": train_steps(torch.optim.SGD, momentum=0.9, foreach=True),
    "SGD, fused": train_steps(torch.optim.SGD, fused=True),
    "Adam, fused, 5 steps": train_steps(torch.optim.Adam, steps=5, fused=True),
    "AdamW, fused": train_steps(torch.optim.AdamW, fused=True),
    "Adagrad, fused": train_steps(torch.optim.Adagrad, fused=True),
    "Adam, fused, on W1 only": train_steps(torch.optim.Adam, fused=True, params=lambda m: [w1(m)]),
    "load_state_dict": lambda m, x: m.load_state_dict(other_state(m)),
    "load_state_dict(assign=True)": lambda m, x: m.load_state_dict(other_state(m), assign=True),
    "load_state_dict(strict=False)": lambda m, x: m.load_state_dict(
        {"classifier.1.weight": other_state(m)["classifier.1.weight"]}, strict=False),
    "nn.init": lambda m, x: nn.init.kaiming_uniform_(w1(m), generator=torch.Generator().manual_seed(4)),
    "no_grad in-place edit": lambda m, x: torch.no_grad()(lambda: w1(m).add_(noise_like(w1(m))))(),
    "inference_mode in-place edit": inference_mode_edit,
    ".data assignment": data_assignment,
    ".data edit": lambda m, x: w1(m).data.add_(noise_like(w1(m))),
    ".data edit of one row per channel block": lambda m, x: w1(m).data[5].mul_(-3),
    "numpy view edit": numpy_view,
    "torch._foreach_add_": foreach_edit,
    "a replaced Linear": replaced_linear,
}


def assert_same(fast, slow, what: str) -> None:
    assert fast.path == "shortcut" and slow.path == "autograd", what
    peak = slow.raw.abs().max()
    assert peak > 0, f"{what}: all maps zero, the comparison would prove nothing"
    torch.testing.assert_close(fast.raw.double(), slow.raw.double(), rtol=1e-5, atol=1e-5 * peak.item(),
                               msg=lambda m: f"{what}: {m}")
    torch.testing.assert_close(fast.scores, slow.scores, rtol=1e-5, atol=1e-5)


def every_method(model: nn.Module, x: torch.Tensor, what: str, layer: str = LAYER, classes=CLASSES) -> torch.Tensor:
    """Grad-CAM, counterfactual, Guided Grad-CAM and the cached API, each by the shortcut against autograd."""
    fast, slow = gradcam(model, x, classes, layer), gradcam(model, x, classes, layer, shortcut=False)
    assert_same(fast, slow, f"{what}: gradcam")
    assert_same(gradcam(model, x, classes, layer, counterfactual=True),
                gradcam(model, x, classes, layer, counterfactual=True, shortcut=False), f"{what}: counterfactual")
    assert_same(guided_gradcam(model, x, classes, layer), guided_gradcam(model, x, classes, layer, shortcut=False),
                f"{what}: guided Grad-CAM")
    a = features_at(model, layer, x)
    assert_same(gradcam_from_features(model, layer, a, classes, size=tuple(x.shape[-2:])), slow,
                f"{what}: gradcam_from_features")
    run = head_pass(model, layer, a, fold=True)  # the explorer's kept pass
    targets, alpha = class_weights(run, classes)
    assert_same(explanation_from_weights(run, targets, alpha, size=tuple(x.shape[-2:])), slow,
                f"{what}: the kept head pass")
    return fast.raw


CUDA_CHANGES = {  # capturable steps keep their state on the device: CUDA only
    "Adam, capturable": train_steps(torch.optim.Adam, capturable=True),
    "AdamW, capturable, foreach": train_steps(torch.optim.AdamW, capturable=True, foreach=True),
    "Adam, fused (CUDA)": train_steps(torch.optim.Adam, fused=True),
    ".data edit (CUDA)": CHANGES[".data edit"],
}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the GPU machine)")


@pytest.mark.parametrize("change", [*CHANGES, *(pytest.param(c, marks=CUDA) for c in CUDA_CHANGES)])
def test_every_weight_change_is_seen_by_every_method(change, x):
    model = small_alexnet()
    if change in CUDA_CHANGES:
        model, x = model.cuda(), x.cuda()
    before = every_method(model, x, "before")  # W1s cached, kept passes recorded
    a = features_at(model, LAYER, x)
    kept = {"shortcut": head_pass(model, LAYER, a, fold=True), "autograd": head_pass(model, LAYER, a, shortcut=False)}
    {**CHANGES, **CUDA_CHANGES}[change](model, x)
    after = every_method(model, x, change)
    assert (after - before).abs().max() > 1e-3 * before.abs().max(), f"{change}: the maps did not change"
    assert torch.equal(summed_weights(model.classifier[1], 32),
                       w1(model).detach().reshape(64, 32, 9).sum(2, dtype=torch.float32)), f"{change}: W1s is stale"
    for path, run in kept.items():
        with pytest.raises(labutils.LabError, match="weights changed"):
            class_weights(run, 1)
    assert_no_hooks(model)


def test_the_one_documented_exception_an_unsampled_entry_behind_autograds_back(x):
    """A .data edit of entries none of which the fingerprint samples, outside any optimizer step: unseen until
    clear_shortcut_cache(). Every row of W1 has two sampled entries: a whole row can never hide."""
    model = small_alexnet()
    gradcam(model, x, CLASSES, LAYER)
    sampled = torch.zeros(w1(model).shape, dtype=torch.bool)
    fingerprint(sampled).fill_(True)
    assert sampled.any(dim=1).all() and int(sampled.sum()) == 2 * 64, "two sampled entries in every row"
    w1(model).data[~sampled] *= -3.0  # every entry but the sampled ones
    stale = gradcam(model, x, CLASSES, LAYER)
    right = gradcam(model, x, CLASSES, LAYER, shortcut=False)
    assert not torch.allclose(stale.raw, right.raw), "this edit is the documented blind spot"
    labutils.clear_shortcut_cache()
    assert_same(gradcam(model, x, CLASSES, LAYER), right, "after clear_shortcut_cache()")


# ---------------------------------------------------------------- the reproductions, on the real models


def test_fused_adam_on_a_fine_tuned_alexnet(alexnet, images):
    """Issue 22, item 1: AlexNet with a 10-class head, five fused Adam steps in train mode, eval: was 97% off."""
    model = copy.deepcopy(alexnet)
    torch.manual_seed(0)
    model.classifier[6] = nn.Linear(4096, 10)
    x = images[:1]
    gradcam(model, x, 3)
    kept = head_pass(model, "features.11", features_at(model, "features.11", x), fold=True)
    train_steps(torch.optim.Adam, steps=5, fused=True, params=lambda m: m.classifier.parameters())(model, x)
    fast, slow = gradcam(model, x, 3), gradcam(model, x, 3, shortcut=False)
    assert_same(fast, slow, "AlexNet after fused Adam")
    assert_close_rel(fast.maps[0, 0], slow.maps[0, 0], "final map", rtol=1e-4)
    with pytest.raises(labutils.LabError, match="weights changed"):
        class_weights(kept, 3)


def test_fused_sgd_step_on_vgg16(vgg16, images):
    """Issue 22, item 1 on VGG-16: one fused step on W1 (no state: the session's model is restored after)."""
    w = vgg16.classifier[0].weight
    saved = w.detach().clone()
    x = images[:1]
    try:
        before = gradcam(vgg16, x, 9)
        train_steps(torch.optim.SGD, fused=True, params=lambda m: [m.classifier[0].weight], target=9,
                    lr=0.01)(vgg16, x)
        fast, slow = gradcam(vgg16, x, 9), gradcam(vgg16, x, 9, shortcut=False)
        assert not torch.allclose(before.raw, slow.raw), "the step did not change the map"
        assert_same(fast, slow, "VGG-16 after a fused SGD step")
    finally:
        with torch.no_grad():
            w.copy_(saved)
        vgg16.zero_grad(set_to_none=True)


def test_a_data_edit_of_alexnets_w1_is_seen(alexnet, images):
    model = copy.deepcopy(alexnet)
    x = images[:1]
    gradcam(model, x, 9)
    model.classifier[1].weight.data.mul_(-1)  # behind autograd's back: was stale until clear_shortcut_cache()
    assert_same(gradcam(model, x, 9), gradcam(model, x, 9, shortcut=False), "AlexNet after a .data edit")


# ---------------------------------------------------------------- nothing blocks PyTorch, nothing outlives the model


@pytest.fixture
def swap_mode():
    before = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    yield
    torch.__future__.set_swap_module_params_on_conversion(before)


def test_swap_mode_conversions_and_assign_work_after_a_call(x, swap_mode):
    """Issue 22, item 2: a weak reference to a Parameter made swap_tensors refuse ("Couldn't swap")."""
    model = small_alexnet()
    every_method(model, x, "float32")
    model.double()
    every_method(model, x.double(), "double (swap mode)")
    model.float()
    model.to(torch.float32)
    model.load_state_dict(other_state(model))  # swap mode: load_state_dict swaps too
    every_method(model, x, "load_state_dict (swap mode)")
    model.load_state_dict(other_state(model), assign=True)
    every_method(model, x, "assign=True (swap mode)")


def test_no_state_outlives_the_model(x):
    gc.collect()
    entries = len(shortcut_module._CACHE)
    model = small_alexnet()
    every_method(model, x, "once")
    assert len(shortcut_module._CACHE) == entries + 1, "W1s cached for the model's first Linear"
    alive = weakref.ref(model)
    run = head_pass(model, LAYER, features_at(model, LAYER, x))
    del model
    gc.collect()
    assert alive() is None, "labutils keeps the model alive"
    assert len(shortcut_module._CACHE) == entries, "the cache entry outlived the model"
    with pytest.raises(labutils.LabError, match="model is gone"):
        class_weights(run, 1)


def test_a_model_built_under_inference_mode(x):
    """Issue 22, item 6: inference tensors keep no version counter (was a raw RuntimeError)."""
    with torch.inference_mode():
        model = small_alexnet()
    twin = small_alexnet()  # the same weights as normal tensors: autograd cannot differentiate inference tensors

    def same_as_twin(what: str) -> None:
        slow = gradcam(twin, x, CLASSES, LAYER, shortcut=False)
        assert_same(gradcam(model, x, CLASSES, LAYER), slow, what)
        run = head_pass(model, LAYER, features_at(model, LAYER, x), fold=True)
        targets, alpha = class_weights(run, CLASSES)
        assert_same(explanation_from_weights(run, targets, alpha, size=(40, 40)), slow, f"{what}: kept pass")

    same_as_twin("built under inference_mode")
    with torch.inference_mode():
        w1(model).mul_(-1)
    with torch.no_grad():
        w1(twin).mul_(-1)
    same_as_twin("an inference tensor edited in place")
    for call in (lambda: gradcam(model, x, CLASSES, LAYER, shortcut=False), lambda: guided_gradcam(model, x, CLASSES, LAYER),
                 lambda: head_pass(model, LAYER, features_at(model, LAYER, x), shortcut=False)):
        with pytest.raises(ModelError, match="inference_mode"):  # was autograd's raw RuntimeError
            call()


# ---------------------------------------------------------------- class-level patches and torch modes


class LinearTimesTwo(TorchFunctionMode):
    """Rewrites F.linear: what every Linear computes changes, no module or hook says so."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        return out * 2 if func is nn.functional.linear else out


class Observer(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def leaky_forward(self, input):
    return nn.functional.leaky_relu(input, 0.3)


@pytest.mark.parametrize("patch", ["nn.ReLU.forward", "nn.Linear.forward", "nn.MaxPool2d.forward",
                                   "nn.AdaptiveAvgPool2d.forward", "F.linear", "F.relu"])
def test_class_level_patches_make_the_route_fall_back(patch, x, monkeypatch):
    model = small_alexnet()
    gradcam(model, x, CLASSES, LAYER)  # W1s cached before the patch
    functional = nn.functional
    replacements = {
        "nn.ReLU.forward": (nn.ReLU, "forward", leaky_forward),
        "nn.Linear.forward": (nn.Linear, "forward", lambda self, v: functional.linear(v, self.weight) * 1.5),
        "nn.MaxPool2d.forward": (nn.MaxPool2d, "forward", lambda self, v: functional.avg_pool2d(
            v, self.kernel_size, self.stride)),
        "nn.AdaptiveAvgPool2d.forward": (nn.AdaptiveAvgPool2d, "forward", lambda self, v: functional.adaptive_max_pool2d(
            v, self.output_size)),
        "F.linear": (functional, "linear", lambda v, w, b=None: torch.addmm(b, v, w.t()) * 0.5),
        "F.relu": (functional, "relu", lambda v, inplace=False: torch.tanh(v)),
    }
    owner, name, new = replacements[patch]
    monkeypatch.setattr(owner, name, new)
    route = shortcut_route(model, LAYER)
    assert not route.shortcut and "not the function torch defined" in route.reason, route.reason
    e, ref = gradcam(model, x, CLASSES, LAYER), gradcam(model, x, CLASSES, LAYER, shortcut=False)
    assert e.path == "autograd"
    torch.testing.assert_close(e.raw, ref.raw)
    monkeypatch.undo()
    unpatched = gradcam(model, x, CLASSES, LAYER)
    assert unpatched.path == "shortcut"
    assert not torch.allclose(unpatched.raw, e.raw), f"{patch}: the patch changed nothing, the test proves nothing"


@pytest.mark.parametrize("mode", [LinearTimesTwo, Observer])
def test_torch_function_and_dispatch_modes_make_the_route_fall_back(mode, x):
    model = small_alexnet()
    plain = gradcam(model, x, CLASSES, LAYER)
    with mode():
        assert "Mode" in shortcut_route(model, LAYER).reason
        e = gradcam(model, x, CLASSES, LAYER)
        g = guided_gradcam(model, x, CLASSES, LAYER)
        ref = gradcam(model, x, CLASSES, LAYER, shortcut=False)
    assert e.path == g.path == "autograd"
    torch.testing.assert_close(e.raw, ref.raw)
    if mode is LinearTimesTwo:  # every Linear doubled: autograd's maps follow what ran, the shortcut's would not
        assert not torch.allclose(e.scores, plain.scores) and not torch.allclose(e.raw, plain.raw)
    else:
        torch.testing.assert_close(e.raw, plain.raw, rtol=1e-5, atol=1e-6)


def test_a_tensor_subclass_weight_makes_the_route_fall_back(x):
    class Marked(torch.Tensor):
        pass

    model = small_alexnet()
    model.classifier[4].weight = nn.Parameter(model.classifier[4].weight.detach().as_subclass(Marked))
    assert "subclass" in shortcut_route(model, LAYER).reason
    assert gradcam(model, x, CLASSES, LAYER).path == "autograd"


def test_the_fingerprint_touches_every_row_of_any_shape():
    for shape in [(4096, 25088), (4096, 9216), (64, 288), (300, 2), (5, 1), (1000, 4096)]:
        w = torch.zeros(shape)
        fingerprint(w).fill_(1)
        assert (w.sum(1) == min(2, shape[1])).all(), shape
    t = torch.zeros(10, 40).t()  # a transposed (non-contiguous) weight: the view follows its strides
    fingerprint(t).fill_(1)
    assert (t.sum(1) == 2).all()
    assert np.count_nonzero(t.numpy()) == 80
