"""labutils.shortcut: alpha_k^c = (W1s^T g1)_k / Z, checked against autograd (``shortcut=False``) and
Captum's LayerGradCam, and the cases where it must not be used (autograd runs instead).

The references never use the shortcut: Captum differentiates the whole model, ``shortcut=False``
runs autograd's backward pass down to A^k."""

from __future__ import annotations

import copy
import traceback

import pytest
import torch
import torchvision
from captum.attr import LayerGradCam
from conftest import assert_close_rel, assert_model_unchanged, assert_no_hooks, call_and_check, third_party
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import labutils
from labutils import gradcam, guided_gradcam
from labutils.cached import class_weights, explanation_from_weights, features_at, gradcam_from_features, head_pass
from labutils.shortcut import few_rows_times, shortcut_route, summed_weights

MIXED = [9, 22]  # classes whose maps have mixed signs with the seeded weights (see test_gradcam.py)
FOUR = [9, 22, 243, 282]


def assert_same_maps(actual, expected, what: str, rtol: float = 1e-5) -> None:
    """Every map (image i, class k) equal to 1e-5 of its own peak; the final maps too."""
    assert actual.raw.shape == expected.raw.shape, what
    assert torch.equal(actual.classes, expected.classes), what
    peak = expected.raw.abs().max().item()
    assert peak > 0, f"{what}: every map is zero, the comparison would prove nothing"
    for i in range(expected.raw.shape[0]):
        for k in range(expected.raw.shape[1]):
            if expected.raw[i, k].abs().max() == 0:  # ReLU(negative everywhere): must be (nearly) zero too
                assert actual.raw[i, k].abs().max() <= rtol * peak, f"{what} map ({i}, {k}) should be zero"
            else:
                assert_close_rel(actual.raw[i, k], expected.raw[i, k], f"{what} map ({i}, {k})", rtol)
    torch.testing.assert_close(actual.maps, expected.maps, rtol=0, atol=1e-4)
    torch.testing.assert_close(actual.scores, expected.scores, rtol=1e-5, atol=1e-5)


def captum_raw(model, layer: str, x: torch.Tensor, target, negate: bool = False) -> torch.Tensor:
    forward = (lambda t: -model(t)) if negate else model
    with third_party(model):
        return LayerGradCam(forward, labutils.get_layer(model, layer)).attribute(
            x.clone(), target=target, relu_attributions=True).detach()


def captum_raw_hooked(model, layer: str, x: torch.Tensor, target) -> torch.Tensor:
    """Captum on a model that carries a hook of the test's own (third_party would refuse it)."""
    try:
        return LayerGradCam(model, labutils.get_layer(model, layer)).attribute(
            x.clone(), target=target, relu_attributions=True).detach()
    finally:
        model.zero_grad(set_to_none=True)


def varied_images(n: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """``n`` smooth seeded images of any size (H, W)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 3, max(size[0] // 8, 2), max(size[1] // 8, 2), generator=g)
    return nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)


# ---------------------------------------------------------------- the same maps as autograd and Captum


@pytest.mark.parametrize("name", ["alexnet", "vgg16"])
def test_shortcut_equals_autograd_and_captum_for_a_batch_and_k_classes(name, models, images, snapshots):
    model = models[name]
    layer = labutils.default_layer(model)
    classes = [MIXED, [243, 282]]  # K = 2 classes for each of N = 2 images
    fast = call_and_check(model, snapshots[name], images, lambda m, x: gradcam(m, x, classes), outputs=False)
    slow = gradcam(model, images, classes, shortcut=False)
    assert (fast.path, slow.path) == ("shortcut", "autograd")
    assert_same_maps(fast, slow, f"{name} shortcut vs autograd")
    for k in range(2):  # one Captum call per column of classes
        ref = captum_raw(model, layer, images, [classes[0][k], classes[1][k]])
        for i in range(2):
            assert_close_rel(fast.raw[i, k], ref[i, 0], f"{name} shortcut image {i} class {classes[i][k]} vs Captum")
    assert (fast.raw == 0).any() and fast.raw.amax() > 0, "mixed-sign maps: the ReLU cuts part of each"
    assert_model_unchanged(model, snapshots[name], outputs=name == "alexnet")


@pytest.mark.parametrize("name", ["alexnet", "vgg16"])
def test_one_class_and_counterfactual_equal_captum(name, models, images):
    model = models[name]
    layer = labutils.default_layer(model)
    x = images[:1]
    one = gradcam(model, x, 9)
    assert one.path == "shortcut"
    assert_close_rel(one.raw[0, 0], captum_raw(model, layer, x, 9)[0, 0], f"{name} one class vs Captum")
    cf = gradcam(model, images, MIXED, counterfactual=True)
    assert cf.path == "shortcut" and cf.method == "counterfactual"
    ref = captum_raw(model, layer, images, MIXED, negate=True)
    for i in range(2):
        assert_close_rel(cf.raw[i, 0], ref[i, 0], f"{name} counterfactual image {i} vs Captum(-y)")
    assert_same_maps(cf, gradcam(model, images, MIXED, counterfactual=True, shortcut=False), f"{name} counterfactual")


@pytest.mark.parametrize("size", [(320, 256), (250, 333), (100, 100), (72, 90)])
@pytest.mark.parametrize("name", ["alexnet", "vgg16"])
def test_inputs_that_are_not_224_give_the_same_maps(name, size, models):
    """Other sizes: the adaptive pool's windows overlap or differ in size, or repeat one position (< 7x7)."""
    model = models[name]
    x = varied_images(2 if name == "alexnet" else 1, size, seed=sum(size))
    fast = gradcam(model, x, [FOUR] * x.shape[0])
    slow = gradcam(model, x, [FOUR] * x.shape[0], shortcut=False)
    assert fast.path == "shortcut" and fast.maps.shape[-2:] == size
    kept = [(i, k) for i in range(x.shape[0]) for k in range(4) if slow.raw[i, k].amax() > 0]
    assert len(kept) >= 2, "a map of zeros proves nothing"
    for i, k in kept:
        assert_close_rel(fast.raw[i, k], slow.raw[i, k], f"{name} {size} map ({i}, {k})")
    if size == (250, 333):
        ref = captum_raw(model, labutils.default_layer(model), x[:1], FOUR[kept[0][1]])
        assert_close_rel(fast.raw[0, kept[0][1]], ref[0, 0], f"{name} {size} vs Captum")


def test_guided_gradcam_and_cached_paths_use_the_shortcut(alexnet, images, snapshots):
    fast = call_and_check(alexnet, snapshots["alexnet"], images, lambda m, x: guided_gradcam(m, x, MIXED))
    slow = guided_gradcam(alexnet, images, MIXED, shortcut=False)
    assert (fast.path, slow.path) == ("shortcut", "autograd")
    for i in range(2):
        assert_close_rel(fast.raw[i, 0], slow.raw[i, 0], f"guided Grad-CAM image {i}")
    layer = "features.11"
    cached = gradcam_from_features(alexnet, layer, features_at(alexnet, layer, images), [MIXED, [243, 282]])
    assert cached.path == "shortcut"
    assert_same_maps(cached, gradcam(alexnet, images, [MIXED, [243, 282]], shortcut=False), "cached head pass")
    assert_model_unchanged(alexnet, snapshots["alexnet"])


def test_the_last_max_pool_is_a_shortcut_layer_too(alexnet, images):
    fast = gradcam(alexnet, images, MIXED, "features.12")
    slow = gradcam(alexnet, images, MIXED, "features.12", shortcut=False)
    assert fast.path == "shortcut" and fast.raw.shape[-2:] == (6, 6)
    for i in range(2):
        assert_close_rel(fast.raw[i, 0], slow.raw[i, 0], f"features.12 image {i}")


# ---------------------------------------------------------------- W1s follows every change of the weights


def trained_step(model: nn.Module, x: torch.Tensor) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loss = -model(x)[:, 9].sum()  # make class 9 more likely
    loss.backward()
    optimizer.step()
    model.zero_grad(set_to_none=True)


def test_the_cache_follows_optimizer_steps_state_dicts_and_replaced_parameters(alexnet, images):
    model = copy.deepcopy(alexnet)
    other = copy.deepcopy(alexnet)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1 + 0.5 * torch.randn(p.shape, generator=g))  # other weights of the same scale
    x = images[:1]
    before = gradcam(model, x, MIXED)
    summed = summed_weights(model.classifier[1], 256)

    def check(what: str) -> None:
        fast, slow = gradcam(model, x, MIXED), gradcam(model, x, MIXED, shortcut=False)
        assert fast.path == "shortcut"
        assert not torch.allclose(fast.raw, before.raw), f"{what}: the weights did not change the map"
        assert_same_maps(fast, slow, f"after {what}")
        w1 = model.classifier[1].weight.detach()
        assert torch.equal(summed_weights(model.classifier[1], 256), w1.reshape(4096, 256, 36).sum(2))

    trained_step(model, x)
    check("an optimizer step")
    before = gradcam(model, x, MIXED)
    model.load_state_dict(other.state_dict())
    check("load_state_dict")
    before = gradcam(model, x, MIXED)
    model.load_state_dict(copy.deepcopy(alexnet).state_dict(), assign=True)  # new Parameter objects
    check("load_state_dict(assign=True)")
    before = gradcam(model, x, MIXED)
    model.classifier[1].weight = nn.Parameter(other.classifier[1].weight.detach().clone())
    check("a replaced Parameter")
    before = gradcam(model, x, MIXED)
    model.classifier[1] = copy.deepcopy(other.classifier[1])
    check("a replaced Linear")
    assert not torch.equal(summed, summed_weights(model.classifier[1], 256))


# ---------------------------------------------------------------- where autograd must run instead


class OwnForward(torchvision.models.AlexNet):
    """An AlexNet subclass whose forward doubles the pooled features: the identity's premises change."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(2 * torch.flatten(x, 1))


class SameForward(torchvision.models.AlexNet):
    """A subclass that keeps torchvision's forward: the shortcut still holds."""


def test_fallback_cases_run_autograd_and_still_give_the_right_maps(alexnet, images):
    x = images[:1]
    hooked = copy.deepcopy(alexnet)
    handle = hooked.avgpool.register_forward_hook(lambda m, i, o: o * torch.linspace(0, 2, o.shape[-1]))
    own = OwnForward()
    own.load_state_dict(alexnet.state_dict())
    own.eval()
    same = SameForward()
    same.load_state_dict(alexnet.state_dict())
    cases = {"hooked avgpool": (hooked, "features.11"), "own forward": (own, "features.11"),
             "conv layer": (alexnet, "features.10"), "ReLU then max-pool then conv": (alexnet, "features.4")}
    for what, (model, layer) in cases.items():
        route = shortcut_route(model, layer)
        assert not route.shortcut and route.reason, what
        e = gradcam(model, x, MIXED, layer)
        assert e.path == "autograd", what
        ref = captum_raw_hooked(model, layer, x, MIXED[0])
        assert_close_rel(e.raw[0, 0], ref[0, 0], f"{what} vs Captum")
    handle.remove()
    assert gradcam(same, x, MIXED, "features.11").path == "shortcut"  # in train mode: run in eval mode
    assert gradcam(alexnet, x, MIXED, shortcut=False).path == "autograd"
    # a global forward hook anywhere makes the shortcut step aside
    handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
    try:
        assert "global" in shortcut_route(alexnet, "features.11").reason
        assert gradcam(alexnet, x, MIXED).path == "autograd"
    finally:
        handle.remove()
    assert_no_hooks(alexnet)


def test_route_explains_itself(vgg16):
    route = shortcut_route(vgg16, "features.29")
    assert route.shortcut and route.linear == "classifier.0"
    assert route.reason == "features.29 -> MaxPool2d + AdaptiveAvgPool2d -> flatten -> classifier.0"
    assert "ReLU" in shortcut_route(vgg16, "features.28").reason
    tiny = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    assert "forward" in shortcut_route(tiny, "0").reason


# ---------------------------------------------------------------- above W1: g1 by hand (HeadRecord)


def test_route_lists_the_classifier_chain(models):
    """The Linears the backward pass by hand goes through, and where a ReLU lies between them."""
    vgg, alex = shortcut_route(models["vgg16"], "features.29"), shortcut_route(models["alexnet"], "features.11")
    assert vgg.linears == ("classifier.0", "classifier.3", "classifier.6") and vgg.relu == (True, True)
    assert alex.linears == ("classifier.1", "classifier.4", "classifier.6") and alex.relu == (True, True)
    assert alex.masked == ("classifier.1", "classifier.4")


def with_classifier(model: nn.Module, *layers: nn.Module) -> nn.Module:
    """A copy of ``model`` whose classifier is a copy of ``layers``."""
    other = copy.deepcopy(model)
    other.classifier = copy.deepcopy(nn.Sequential(*layers))
    return other.eval()


def alexnet_heads(alexnet: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Classifiers above AlexNet's W1 (9216 -> ...): what each must run (``shortcut`` or ``autograd``)."""
    c = alexnet.classifier
    torch.manual_seed(3)  # the new Linears' weights
    return {
        "a fine-tuned last Linear (10 classes)": (with_classifier(alexnet, *c[:6], nn.Linear(4096, 10)), "shortcut"),
        "no ReLU between two Linears": (with_classifier(alexnet, c[0], c[1], nn.Dropout(), nn.Linear(4096, 50)),
                                        "shortcut"),
        "one Linear only (y = W1 v + b1)": (with_classifier(alexnet, nn.Linear(9216, 1000)), "shortcut"),
        "four Linears": (with_classifier(alexnet, *c[:6], nn.Linear(4096, 300), nn.ReLU(), nn.Linear(300, 20)),
                         "shortcut"),
        "a Softmax at the end": (with_classifier(alexnet, *c, nn.Softmax(dim=1)), "autograd"),
        "a Tanh between Linears": (with_classifier(alexnet, *c[:2], nn.Tanh(), *c[3:]), "autograd"),
        "a GELU between Linears": (with_classifier(alexnet, *c[:2], nn.GELU(), *c[3:]), "autograd"),
    }


def test_g1_by_hand_equals_autograd_for_other_classifiers(alexnet, images):
    for what, (model, path) in alexnet_heads(alexnet).items():
        classes = [[1, 7], [3, 0]]  # K = 2 classes of N = 2 images: valid for every head (>= 10 outputs)
        fast, slow = gradcam(model, images, classes), gradcam(model, images, classes, shortcut=False)
        assert fast.path == path, f"{what}: {shortcut_route(model, 'features.11').reason}"
        assert slow.path == "autograd"
        assert_same_maps(fast, slow, what)
        assert_no_hooks(model)


def test_hooks_anywhere_in_the_classifier_make_autograd_run(alexnet, images):
    model = copy.deepcopy(alexnet)
    for index in (4, 5, 6):  # W2, the ReLU above it, W3: all above W1, all run by hand by the shortcut
        handle = model.classifier[index].register_forward_hook(lambda m, i, o: o * 1.5)
        try:
            route = shortcut_route(model, "features.11")
            assert not route.shortcut and "hooks" in route.reason, index
            e = gradcam(model, images[:1], MIXED)
            assert e.path == "autograd"
            assert_close_rel(e.raw[0, 0], captum_raw_hooked(model, "features.11", images[:1], MIXED[0])[0, 0],
                             f"hook on classifier.{index} vs Captum")
        finally:
            handle.remove()


@pytest.mark.parametrize("name", ["alexnet", "vgg16"])
def test_the_folded_chain_gives_the_same_weights(name, models, images):
    """head_pass(fold=True), the explorer's: alpha^c = (row c of W3) P for any class, N images."""
    model = models[name]
    layer = labutils.default_layer(model)
    a = features_at(model, layer, images)
    plain, folded = head_pass(model, layer, a), head_pass(model, layer, a, fold=True)
    assert folded.record.folded.shape == (2, 4096, a.shape[1])
    classes = [FOUR, [1, 2, 3, 4]]
    (t1, by_chain), (t2, by_fold) = class_weights(plain, classes), class_weights(folded, classes)
    assert torch.equal(t1, t2)
    torch.testing.assert_close(by_fold, by_chain, rtol=1e-5, atol=1e-5 * by_chain.abs().max().item())
    slow = gradcam(model, images, classes, shortcut=False)
    assert_same_maps(explanation_from_weights(folded, t2, by_fold), slow, f"{name} folded vs autograd")


def test_a_kept_head_pass_refuses_weights_changed_in_place(alexnet, images):
    model = copy.deepcopy(alexnet)
    run = head_pass(model, "features.11", features_at(model, "features.11", images[:1]), fold=True)
    class_weights(run, 9)
    trained_step(model, images[:1])  # W2 and W3 change in place: the kept pass no longer matches them
    with pytest.raises(labutils.LabError, match="weights changed"):
        class_weights(run, 9)


@pytest.mark.parametrize("rows", [1, 2, 5, 16, 17])
def test_few_rows_times_is_the_plain_product(rows):
    g = torch.Generator().manual_seed(rows)
    lhs, weight = torch.randn(1, rows, 300, generator=g), torch.randn(300, 130, generator=g)
    torch.testing.assert_close(few_rows_times(lhs, weight, block=64), lhs @ weight, rtol=1e-5, atol=1e-4)


def test_the_shortcut_builds_no_autograd_graph(alexnet, images):
    e = gradcam(alexnet, images, MIXED)
    assert e.path == "shortcut"
    assert not any(t.requires_grad for t in (e.raw, e.maps, e.scores))
    assert all(p.grad is None for p in alexnet.parameters())


def test_a_shared_linear_or_an_instance_forward_makes_autograd_run(alexnet, images):
    """Two uses of one Linear (tied weights), or a forward set on an instance: the route cannot see what runs."""
    torch.manual_seed(4)
    tied = nn.Linear(4096, 4096)
    c = alexnet.classifier
    shared = with_classifier(alexnet, *c[:3])
    shared.classifier = nn.Sequential(*shared.classifier, tied, nn.ReLU(), tied, nn.ReLU(), nn.Linear(4096, 10))
    patched = copy.deepcopy(alexnet)
    linear = patched.classifier[4]
    linear.forward = lambda v: nn.functional.linear(v, linear.weight) * 0.5  # no bias, halved
    for what, model in {"a Linear used twice": shared, "a forward set on W2": patched}.items():
        route = shortcut_route(model, "features.11")
        assert not route.shortcut and route.reason, what
        e = gradcam(model, images, [[1, 7], [3, 0]])
        assert e.path == "autograd", what
        assert_same_maps(e, gradcam(model, images, [[1, 7], [3, 0]], shortcut=False), what)
        assert_close_rel(e.raw[0, 0], captum_raw_hooked(model, "features.11", images[:1], 1)[0, 0], f"{what} vs Captum")


# ---------------------------------------------------------------- no host synchronisation (the GPU path)


class ValuesReadBack(TorchDispatchMode):
    """Every operation that hands a tensor's value to Python: on a GPU each one waits for the device.

    Recorded with the names of the functions on the stack, so a test can tell input validation
    (``model_input``, ``class_targets``) from the hot path. ``tolist``/``numpy`` bypass the
    dispatcher: the test patches them on ``torch.Tensor``."""

    READ_BACK = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive",
                 "equal", "allclose", "is_nonzero"}

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, set[str]]] = []

    def note(self, what: str) -> None:
        self.seen.append((what, {frame.name for frame in traceback.extract_stack()}))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.READ_BACK:
            self.note(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def read_backs(monkeypatch):
    """The detector, and the route told to ignore it: an active dispatch mode makes the route fall back to
    autograd (it could change what any operation computes), this one only watches."""
    mode = ValuesReadBack()
    monkeypatch.setattr(labutils.shortcut, "patched", lambda: None)
    for method in ("tolist", "numpy"):
        original = getattr(torch.Tensor, method)

        def patched(self, *args, _original=original, _method=method, **kwargs):
            mode.note(_method)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, patched)
    return mode


def test_the_read_back_detector_sees_what_waits_for_the_device(read_backs):
    t = torch.arange(4.0)
    with read_backs:
        bool(t[1] > 0), t.max().item(), t.nonzero(), t.tolist()
    assert [what for what, _ in read_backs.seen] == ["_local_scalar_dense", "_local_scalar_dense", "nonzero", "tolist"]


@pytest.mark.parametrize("call", ["one class", "top-1", "K classes", "counterfactual", "a tensor of classes",
                                  "guided", "autograd"])
def test_only_input_validation_reads_values_back(call, alexnet, images, read_backs):
    """Issue 12: no host synchronisation in the hot path beyond input validation. On the CPU nothing
    waits, but every value read back to Python is seen here; each must come from ``model_input`` (the
    images' finite check) or ``class_targets`` (classes given as a tensor), or the CPU's proof that the cached
    W1s is fresh (``summed_weights``: one ``equal`` of its fingerprint; on a GPU W1s is not cached, nothing waits)."""
    x = images.repeat(2, 1, 1, 1)  # four images
    calls = {
        "one class": lambda: gradcam(alexnet, x, 9),
        "top-1": lambda: gradcam(alexnet, x),
        "K classes": lambda: gradcam(alexnet, x, [MIXED] * 4),
        "counterfactual": lambda: gradcam(alexnet, x, 9, counterfactual=True),
        "a tensor of classes": lambda: gradcam(alexnet, x, torch.tensor([[9, 22]] * 4)),
        "guided": lambda: guided_gradcam(alexnet, x, 9),
        "autograd": lambda: gradcam(alexnet, x, 9, shortcut=False),
    }
    with read_backs:
        e = calls[call]()
    assert e.path == ("autograd" if call == "autograd" else "shortcut")
    assert read_backs.seen, "the images' finite check reads one value back: the detector saw nothing"
    hot = [what for what, stack in read_backs.seen if not {"model_input", "class_targets"} & stack
           and not (what == "equal" and "summed_weights" in stack)]
    assert not hot, f"{call}: the hot path reads values back to Python ({hot}): on a GPU each one waits"
