"""Explanations on a shared model from several threads, on a model in train mode, on a compiled model,
and in bfloat16: every map is checked against a single-threaded, eval-mode, float32 reference."""

from __future__ import annotations

import copy
import threading

import torch
from conftest import assert_close_rel, assert_no_grads, assert_no_hooks, smooth_images
from torch import nn

from labutils import gradcam, guided_backprop, guided_gradcam

MIXED = [9, 22]


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each pair of maps (..., H, W) -> (...)."""
    a, b = a.double().flatten(-2), b.double().flatten(-2)
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=1e-30)


# ---------------------------------------------------------------- threads


def run_all(threads: list[threading.Thread]) -> None:
    """Start the threads together, wait for all of them."""
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=600)


def test_threads_sharing_one_model_always_get_the_right_maps(alexnet):
    """3 threads x 8 calls of gradcam / guided_backprop / guided_gradcam on one AlexNet, each with its
    own image and class, plus a thread running plain forward passes: every result equals the reference."""
    images = smooth_images(3, seed=11)
    calls = {
        "gradcam": lambda x, c: gradcam(alexnet, x, c).raw,
        "guided_backprop": lambda x, c: guided_backprop(alexnet, x, c).raw,
        "guided_gradcam": lambda x, c: guided_gradcam(alexnet, x, c).raw,
        "gradcam-autograd": lambda x, c: gradcam(alexnet, x, c, shortcut=False).raw,
    }
    jobs = [(name, t) for t in range(3) for name in calls]
    reference = {(name, t): calls[name](images[t : t + 1], MIXED[t % 2]) for name, t in jobs}
    with torch.no_grad():
        plain = alexnet(images)
    wrong, errors, forwards = [], [], []

    def worker(t: int) -> None:
        try:
            for round_ in range(8):
                name = list(calls)[(t + round_) % len(calls)]
                raw = calls[name](images[t : t + 1], MIXED[t % 2])
                ref = reference[(name, t)]
                if not torch.allclose(raw, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item()):
                    wrong.append((t, round_, name))
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            errors.append(f"thread {t}: {type(exc).__name__}: {exc}")

    def forward_worker() -> None:
        for _ in range(12):
            with torch.no_grad():
                forwards.append(torch.equal(alexnet(images), plain))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(3)] + [threading.Thread(target=forward_worker)]
    run_all(threads)
    assert not errors, errors
    assert not wrong, f"wrong maps: {wrong}"
    assert forwards and all(forwards), "a plain forward pass in another thread was changed by the explanations' hooks"
    assert_no_hooks(alexnet)
    assert_no_grads(alexnet)


# ---------------------------------------------------------------- train mode


def test_train_mode_runs_with_eval_semantics_and_is_restored(alexnet, images):
    model = copy.deepcopy(alexnet).train()
    model.classifier[2].eval()  # a mixed state: each module's own mode must come back
    modes = [m.training for m in model.modules()]
    expected = {f.__name__: f(alexnet, images, MIXED).raw for f in (gradcam, guided_backprop, guided_gradcam)}
    for f in (gradcam, guided_backprop, guided_gradcam):
        first, second = f(model, images, MIXED).raw, f(model, images, MIXED).raw
        assert torch.equal(first, second), f"{f.__name__}: Dropout was on"
        assert_close_rel(first, expected[f.__name__], f"{f.__name__} in train mode vs eval mode", rtol=1e-6)
        assert [m.training for m in model.modules()] == modes, f"{f.__name__} did not restore the modes"


class BatchNormNet(nn.Module):
    """conv -> BatchNorm -> ReLU twice, then global pooling and a Linear."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(2)
            self.features = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
            )
            self.classifier = nn.Linear(8, 5)
        for m in self.features:  # running statistics that are not the defaults
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def test_batchnorm_buffers_are_not_updated_and_running_statistics_are_used():
    net = BatchNormNet()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    expected = gradcam(net.eval(), x, [1, 2], "features.5").raw  # eval mode: running statistics
    net.train()
    buffers = {n: b.clone() for n, b in net.named_buffers()}
    for f in (lambda: gradcam(net, x, [1, 2], "features.5"), lambda: guided_backprop(net, x, [1, 2]),
              lambda: guided_gradcam(net, x, [1, 2], "features.5")):
        f()
    changed = [n for n, b in net.named_buffers() if not torch.equal(b, buffers[n])]
    assert not changed, f"BatchNorm buffers updated: {changed}"
    assert net.training and all(m.training for m in net.modules())
    assert_close_rel(gradcam(net, x, [1, 2], "features.5").raw, expected, "train-mode call vs eval", rtol=1e-6)


# ---------------------------------------------------------------- torch.compile


def test_a_compiled_model_is_explained_through_the_module_it_wraps(alexnet, images):
    compiled = torch.compile(alexnet)  # construction only: nothing is compiled unless it is called
    x = images[:1]
    for f in (gradcam, guided_gradcam):
        e = f(compiled, x, MIXED)
        ref = f(alexnet, x, MIXED)
        assert e.path == ref.path == "shortcut"
        assert torch.equal(e.raw, ref.raw), f.__name__
    assert torch.equal(guided_backprop(compiled, x, 9).raw, guided_backprop(alexnet, x, 9).raw)
    assert_no_hooks(alexnet)


# ---------------------------------------------------------------- bfloat16


def test_bfloat16_maps_correlate_with_float32_maps(alexnet):
    """dtype=torch.bfloat16: the layers below the layer in bf16, A^k and the head in float32."""
    x = smooth_images(4, seed=7)
    classes = [[9, 22, 243, 282, 1]] * 4
    full = gradcam(alexnet, x, classes)
    low = gradcam(alexnet, x, classes, dtype=torch.bfloat16)
    assert low.path == "shortcut" and low.raw.dtype == torch.float32
    assert not torch.equal(low.raw, full.raw), "the lower layers did not run in bfloat16"
    r = correlation(full.maps, low.maps)
    print(f"[AlexNet bf16 vs fp32, 20 maps] Pearson r min {r.min():.4f}, mean {r.mean():.4f}")
    assert r.min() >= 0.99
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the caller's own autocast: A^k and head in float32 too
        outer = gradcam(alexnet, x, classes)
    assert torch.equal(outer.raw, low.raw)


def test_an_unsupported_dtype_is_one_clear_error(alexnet, images):
    import pytest

    from labutils.errors import LabError

    with pytest.raises(LabError, match="torch.bfloat16"):
        gradcam(alexnet, images[:1], 9, dtype=torch.int8)
    with pytest.raises(LabError, match="dtype the string 'bfloat16' is not supported: use torch.bfloat16"):
        gradcam(alexnet, images[:1], 9, dtype="bfloat16")
    assert_no_hooks(alexnet)
    assert not torch.is_autocast_enabled("cpu")


def test_a_train_mode_model_explained_through_two_handles_at_once(alexnet, images):
    """A model and a wrapper around it have different locks: while one call runs the shared modules
    in eval mode, the other must not restore train mode under it (Dropout on mid-forward gave maps
    off by 0.55-0.72, and the model was left in eval mode)."""

    class Wrapper(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    model = copy.deepcopy(alexnet)
    wrapper = Wrapper(model)
    expected = gradcam(alexnet, images[:1], 9).maps
    model.train()
    wrong, errors = [], []

    def worker(call) -> None:
        try:
            for _ in range(6):
                if not torch.allclose(call().maps, expected, atol=1e-5):
                    wrong.append(call)
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            errors.append(f"{type(exc).__name__}: {exc}")

    calls = [lambda: gradcam(model, images[:1], 9), lambda: gradcam(wrapper, images[:1], 9, "net.features.11")]
    threads = [threading.Thread(target=worker, args=(call,)) for call in calls]
    run_all(threads)
    assert not errors, errors
    assert not wrong, f"{len(wrong)} of 12 calls gave other maps"
    assert all(m.training for m in model.modules()), "train mode was not put back"


# ---------------------------------------------------------------- anomaly detection


def test_anomaly_detection_mode_gives_the_same_maps(alexnet, images):
    """Under torch.autograd.set_detect_anomaly(True) (a student debugging NaNs) autograd's batched
    gradients fail ("Batching rule not implemented for aten::item"): K classes take one backward pass each."""
    classes = [MIXED, MIXED[::-1]]
    expected = {"gradcam": gradcam(alexnet, images, classes, shortcut=False),
                "guided_gradcam": guided_gradcam(alexnet, images, classes, shortcut=False)}
    with torch.autograd.set_detect_anomaly(True):
        actual = {"gradcam": gradcam(alexnet, images, classes, shortcut=False),
                  "guided_gradcam": guided_gradcam(alexnet, images, classes, shortcut=False)}
        assert torch.is_anomaly_enabled(), "the caller's anomaly mode was switched off"
    for name, e in actual.items():
        assert e.path == "autograd" and e.raw.shape == expected[name].raw.shape, name
        torch.testing.assert_close(e.raw, expected[name].raw, rtol=1e-5, atol=1e-7, msg=name)
    assert_no_hooks(alexnet)
    assert_no_grads(alexnet)
