"""Reliability of the Python API: nothing left behind after an error, no leak over a long loop, two
explainers on one model without interference, and reproducible untrained weights.

The popular Grad-CAM libraries' known failures are the checklist: hooks left registered after an
exception (memory grows over a loop), errors with inplace ReLUs, guided backprop that replaces the
model's ReLUs for good, results that depend on the global random state.
"""

from __future__ import annotations

import gc
import os
from collections import Counter

import pytest
import torch
import torchvision
from conftest import MODULE_HOOK_DICTS, assert_model_unchanged, assert_no_grads, smooth_images
from torch import nn
from torch.nn.modules import module as torch_module

from labutils import Capture, capture, gradcam, guided_backprop, guided_gradcam, is_untrained, load_model
from labutils.errors import ClassError, ImageError, LabError, LayerError

CLASSES = [243, 282]  # bull mastiff, tiger cat: one per image of the batch of 2

METHODS = {
    "gradcam": lambda m, x, classes=CLASSES, layer=None: gradcam(m, x, classes, layer),
    "counterfactual": lambda m, x, classes=CLASSES, layer=None: gradcam(m, x, classes, layer, counterfactual=True),
    "guided-backprop": lambda m, x, classes=CLASSES, layer=None: guided_backprop(m, x, classes),
    "guided-gradcam": lambda m, x, classes=CLASSES, layer=None: guided_gradcam(m, x, classes, layer),
}
WITH_LAYER = ["gradcam", "counterfactual", "guided-gradcam"]


def hook_count(model: nn.Module) -> int:
    """Every hook registered on the model's modules, plus torch's global module hooks."""
    on_modules = sum(len(getattr(m, attr, None) or ()) for m in model.modules() for attr in MODULE_HOOK_DICTS)
    on_params = sum(len(p._backward_hooks or ()) for p in model.parameters())
    globals_ = sum(
        len(v) for k, v in vars(torch_module).items() if k.startswith("_global_") and k.endswith("hooks")
        and isinstance(v, dict)
    )
    return on_modules + on_params + globals_


# ---------------------------------------------------------------- 1. after every error, the model is untouched

BAD_CLASSES = [
    (1000, ClassError, "out of range"),
    (-1, ClassError, "out of range"),
    ("tiger kat", ClassError, "did you mean 'tiger cat'"),
]
BAD_LAYERS = [
    ("features.99", LayerError, "features.0, features.1"),
    ("classifier.1", LayerError, "not a 4-D feature map"),  # AlexNet's classifier.1 is a Linear layer
    ("classifier.2", LayerError, r"\(ReLU\) outputs \(2, 4096\)"),  # a ReLU, but on a vector
]
BAD_TENSORS = {
    "one image without batch dim": (lambda x: x[0], ImageError, r"\(N, 3, H, W\), got \(3, 224, 224\)"),
    "grayscale": (lambda x: x[:, :1], ImageError, r"got \(2, 1, 224, 224\)"),
    "integer pixels": (lambda x: (x * 50).to(torch.uint8), ImageError, "float batch"),
    "empty batch": (lambda x: x[:0], ImageError, "empty"),
    "numpy array": (lambda x: x.numpy(), ImageError, "got ndarray"),
    "16x16 pixels": (lambda x: x[..., :16, :16], ImageError, "16x16 pixels, smaller than the 63x63"),
    "meta tensor": (lambda x: x.to("meta"), ImageError, "meta device"),
}


def check_error_leaves_no_trace(model, snapshot, images, call, error, pattern):
    x = images.clone()
    with pytest.raises(error, match=pattern):
        call(x)
    assert torch.equal(x, images) and x.grad is None
    assert torch.is_grad_enabled()
    assert_model_unchanged(model, snapshot)  # no hook, no .grad, same modules and flags, identical outputs


@pytest.mark.parametrize("bad", BAD_CLASSES, ids=lambda b: repr(b[0]))
@pytest.mark.parametrize("method", list(METHODS))
def test_bad_class(method, bad, alexnet, images, snapshots):
    value, error, pattern = bad
    call = lambda x: METHODS[method](alexnet, x, value)  # noqa: E731
    check_error_leaves_no_trace(alexnet, snapshots["alexnet"], images, call, error, pattern)


@pytest.mark.parametrize("bad", BAD_LAYERS, ids=lambda b: b[0])
@pytest.mark.parametrize("method", WITH_LAYER)
def test_bad_layer(method, bad, alexnet, images, snapshots):
    layer, error, pattern = bad
    call = lambda x: METHODS[method](alexnet, x, CLASSES, layer)  # noqa: E731
    check_error_leaves_no_trace(alexnet, snapshots["alexnet"], images, call, error, pattern)


@pytest.mark.parametrize("bad", list(BAD_TENSORS))
@pytest.mark.parametrize("method", list(METHODS))
def test_bad_input_tensor(method, bad, alexnet, images, snapshots):
    change, error, pattern = BAD_TENSORS[bad]
    call = lambda x: METHODS[method](alexnet, change(x))  # noqa: E731
    check_error_leaves_no_trace(alexnet, snapshots["alexnet"], images, call, error, pattern)


def test_an_error_raised_midway_by_another_hook_leaves_no_trace(alexnet, images, snapshots):
    """A forward hook of the user's raises above the target layer, after labutils' hooks are in place
    and autograd was switched on from the target layer up: all of it is undone."""

    def boom(module, inputs, output):
        raise RuntimeError("the user's hook failed")

    handle = alexnet.classifier[4].register_forward_hook(boom)
    try:
        for method in METHODS:
            with pytest.raises(RuntimeError, match="the user's hook failed"):
                METHODS[method](alexnet, images)
            assert torch.is_grad_enabled()
            assert hook_count(alexnet) == 1, method  # only the user's own hook
    finally:
        handle.remove()
    assert_model_unchanged(alexnet, snapshots["alexnet"])


# ---------------------------------------------------------------- 2. soak: 500 calls, some failing midway


class TinyNet(nn.Module):
    """A torchvision-like CNN in miniature: ``features`` (conv, inplace ReLU), avgpool, classifier."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((3, 3))
        self.classifier = nn.Sequential(nn.Linear(144, 32), nn.ReLU(inplace=True), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class Boom(Exception):
    """Raised by the soak test's own forward hook."""


def rss_mb() -> float:
    """This process's resident memory now, in MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def live_captures() -> int:
    return sum(type(o) is Capture for o in gc.get_objects())


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the resident memory from Linux /proc")
def test_soak_500_calls_some_failing_midway_leak_no_hooks_and_no_memory():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = TinyNet().eval()
        x = torch.randn(2, 3, 96, 96)
    reference = gradcam(net, x, [1, 3], "features.4").raw

    armed = [False]

    def boom(module, inputs, output):  # above the target layer: fails after labutils' hooks ran
        if armed[0]:
            raise Boom("raised by the test's hook")

    handle = net.features[5].register_forward_hook(boom)
    baseline = hook_count(net)
    assert baseline == 1

    outcomes: Counter[str] = Counter()

    def call(i: int) -> None:
        armed[0] = i % 7 == 3  # the test's hook raises midway through the forward pass
        # 500: a valid ImageNet index, but the tiny head has 10 outputs: refused before the forward pass
        # (it failed midway, in gather, before labutils knew the head's size; the test's hook still fails midway)
        classes = 500 if i % 5 == 1 else "tiger kat" if i % 11 == 2 else [1, 3]
        try:
            if i % 4 == 0:
                guided_backprop(net, x, classes)
            else:
                result = gradcam(net, x, classes, "features.4", counterfactual=i % 3 == 0)
                if i % 3 != 0:
                    assert torch.equal(result.raw, reference)
            outcomes["ok"] += 1
        except (Boom, RuntimeError, LabError) as exc:
            outcomes[type(exc).__name__] += 1
        assert hook_count(net) == baseline, f"call {i}: hooks left behind"
        assert torch.is_grad_enabled(), f"call {i}: grad mode changed"

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is many times faster on a busy machine
    try:
        for i in range(50):  # warm-up: allocator pools, lazy initializations
            call(i)
        gc.collect()
        before = rss_mb()
        captures_before = live_captures()  # other tests in this process may keep some alive
        outcomes.clear()
        calls = 500
        for i in range(calls):
            call(i)
        gc.collect()
        after = rss_mb()
    finally:
        torch.set_num_threads(threads)
        handle.remove()

    print(
        f"soak: {calls} calls, {outcomes['ok']} succeeded, errors raised: "
        f"{dict((k, v) for k, v in outcomes.items() if k != 'ok')}; RSS {before:.1f} MB -> {after:.1f} MB "
        f"({after - before:+.1f} MB); hooks after the loop: {hook_count(net)}; live Capture objects: {live_captures() - captures_before:+d}"
    )
    assert sum(outcomes.values()) == calls and outcomes["ok"] >= calls // 2
    assert outcomes["Boom"] >= 50 and outcomes["ClassError"] >= 100 and "RuntimeError" not in outcomes
    assert hook_count(net) == 0
    assert live_captures() <= captures_before, "the loop left Capture objects alive"
    assert_no_grads(net)
    assert after - before < 10, f"resident memory grew by {after - before:.1f} MB over {calls} calls"


# ---------------------------------------------------------------- 3. two explainers on one model


def test_explainers_interleaved_give_the_same_results_as_alone(alexnet, images, snapshots):
    alone = {
        "gradcam features.11": gradcam(alexnet, images, CLASSES, "features.11"),
        "gradcam features.8": gradcam(alexnet, images, CLASSES, "features.8"),
        "guided backprop": guided_backprop(alexnet, images, CLASSES),
        "guided gradcam features.8": guided_gradcam(alexnet, images, CLASSES, "features.8"),
    }
    for name, result in alone.items():
        assert result.raw.abs().max() > 0, name
    interleaved = [  # each one between two others, on the same model
        ("guided backprop", guided_backprop(alexnet, images, CLASSES)),
        ("gradcam features.8", gradcam(alexnet, images, CLASSES, "features.8")),
        ("guided gradcam features.8", guided_gradcam(alexnet, images, CLASSES, "features.8")),
        ("gradcam features.11", gradcam(alexnet, images, CLASSES, "features.11")),
    ]
    for name, result in interleaved:
        assert torch.equal(result.raw, alone[name].raw), name
        assert torch.equal(result.maps, alone[name].maps), name
    assert_model_unchanged(alexnet, snapshots["alexnet"])


def user_capture(model, layer: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The notebook's way: capture a layer, forward, backward from the class scores."""
    x = x.clone().requires_grad_(True)
    with capture(model, layer) as seen:
        model(x).gather(1, torch.tensor(CLASSES)[:, None]).sum().backward(inputs=[x])
    return seen.activations.detach(), seen.gradients


@pytest.mark.parametrize("held, explained", [("features.11", "features.8"), ("features.3", "features.11")])
def test_gradcam_while_a_capture_is_open_on_another_layer(held, explained, alexnet, images, snapshots):
    """A capture open on one layer (above or below) while Grad-CAM runs on another: both stay right."""
    alone_cam = gradcam(alexnet, images, CLASSES, explained)
    alone_a, alone_grad = user_capture(alexnet, held, images)

    x = images.clone().requires_grad_(True)
    with capture(alexnet, held) as seen:
        during = gradcam(alexnet, images, CLASSES, explained)
        alexnet(x).gather(1, torch.tensor(CLASSES)[:, None]).sum().backward(inputs=[x])
    assert torch.equal(during.raw, alone_cam.raw)
    assert torch.equal(seen.activations, alone_a)
    assert torch.equal(seen.gradients, alone_grad)
    assert_model_unchanged(alexnet, snapshots["alexnet"])


def test_two_captures_open_at_once(alexnet, images, snapshots):
    alone = {layer: user_capture(alexnet, layer, images) for layer in ("features.10", "features.11")}
    x = images.clone().requires_grad_(True)
    with capture(alexnet, "features.10") as conv, capture(alexnet, "features.11") as relu:
        alexnet(x).gather(1, torch.tensor(CLASSES)[:, None]).sum().backward(inputs=[x])
    for layer, seen in (("features.10", conv), ("features.11", relu)):
        assert torch.equal(seen.activations, alone[layer][0]), layer
        assert torch.equal(seen.gradients, alone[layer][1]), layer
    assert (conv.activations < 0).any()  # the conv's output, not overwritten by the inplace ReLU after it
    assert_model_unchanged(alexnet, snapshots["alexnet"])


# ---------------------------------------------------------------- 4. reproducible runs


def test_random_weights_are_seeded_and_leave_the_global_random_state_alone(alexnet):
    with torch.random.fork_rng(devices=[]):  # this test's own seed does not leak into later tests
        torch.manual_seed(12345)
        state = torch.get_rng_state()
        again = load_model("alexnet", weights="random")
        assert torch.equal(torch.get_rng_state(), state), "load_model changed the caller's random state"
        # the equality below means something: torchvision's own initialization follows the global seed
        other = torchvision.models.alexnet(weights=None).state_dict()
    assert is_untrained(again)
    ours = again.state_dict()
    reference = alexnet.state_dict()  # built at the start of the session, elsewhere in the global random stream
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in ours), "two untrained AlexNets differ"
    assert not torch.equal(other["features.0.weight"], ours["features.0.weight"])
    assert ours["features.0.weight"].std() > 0


def test_same_call_twice_gives_bit_identical_results(alexnet):
    x = smooth_images(2, seed=7)
    first, second = gradcam(alexnet, x, [[243, 282], [1, 2]]), gradcam(alexnet, x, [[243, 282], [1, 2]])
    for field in ("classes", "scores", "raw", "maps"):
        assert torch.equal(getattr(first, field), getattr(second, field)), field
