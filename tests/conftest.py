"""Shared fixtures for the tests of labutils' core: the two networks, test images, and the
checks that a labutils call leaves no trace on the model (hooks, .grad, flags, outputs).

The networks are built once per session with ``weights="random"`` (seeded, untrained): no test
needs the pretrained files. VGG-16 is slow on two CPU cores, so the tests share one batch of two
images and one reference output per model.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as torch_module

import labutils

MODULE_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
)


def pytest_configure(config: pytest.Config) -> None:
    # Captum warns that it sets requires_grad on its (cloned) input and puts hooks on the ReLUs; it
    # undoes both, and the tests check that, so the warnings are noise here.
    config.addinivalue_line("filterwarnings", "ignore:Input Tensor 0 did not already require gradients")
    config.addinivalue_line("filterwarnings", "ignore:Setting backward hooks on ReLU activations")


def smooth_images(n: int, seed: int, size: int = 224) -> torch.Tensor:
    """``n`` seeded image-like tensors (N, 3, size, size): smooth noise, roughly ImageNet-normalized."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 3, size // 8, size // 8, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


# ---------------------------------------------------------------- the models and images


@pytest.fixture(scope="session")
def alexnet() -> nn.Module:
    return labutils.load_model("alexnet", weights="random")


@pytest.fixture(scope="session")
def vgg16() -> nn.Module:
    return labutils.load_model("vgg16", weights="random")


@pytest.fixture(scope="session")
def models(alexnet, vgg16) -> dict[str, nn.Module]:
    return {"alexnet": alexnet, "vgg16": vgg16}


@pytest.fixture(scope="session")
def images() -> torch.Tensor:
    """Two seeded 224x224 test images (a batch of 2), never modified by any test."""
    x = smooth_images(2, seed=1)
    x.requires_grad_(False)
    return x


# ---------------------------------------------------------------- "no trace left" checks


def hooks_left(model: nn.Module) -> list[str]:
    """Every hook still registered on ``model``'s modules or parameters, or globally on nn.Module."""
    left = []
    for name, module in model.named_modules():
        for attr in MODULE_HOOK_DICTS:
            hooks = getattr(module, attr, None)
            if hooks:
                left.append(f"{name or '<model>'}.{attr} ({len(hooks)})")
    for name, p in model.named_parameters():
        if getattr(p, "_backward_hooks", None):
            left.append(f"parameter {name}._backward_hooks")
    for attr, value in vars(torch_module).items():
        if attr.startswith("_global_") and attr.endswith("hooks") and isinstance(value, dict) and value:
            left.append(f"torch.nn.modules.module.{attr} ({len(value)})")
    return left


def assert_no_hooks(model: nn.Module) -> None:
    left = hooks_left(model)
    assert not left, f"hooks left behind: {left}"


def assert_no_grads(model: nn.Module) -> None:
    with_grad = [n for n, p in model.named_parameters() if p.grad is not None]
    assert not with_grad, f"parameters with .grad: {with_grad[:5]}"


@dataclass
class ModelSnapshot:
    """What a labutils call must leave unchanged on a model."""

    modules: list[tuple[str, int, type, bool | None, bool]]  # name, id, type, inplace flag, training
    params: list[tuple[str, int, bool, int]]  # name, id, requires_grad, data_ptr
    grad_enabled: bool
    probe: torch.Tensor
    output: torch.Tensor


def module_facts(model: nn.Module) -> list[tuple[str, int, type, bool | None, bool]]:
    return [(n, id(m), type(m), getattr(m, "inplace", None), m.training) for n, m in model.named_modules()]


def param_facts(model: nn.Module) -> list[tuple[str, int, bool, int]]:
    return [(n, id(p), p.requires_grad, p.data_ptr()) for n, p in model.named_parameters()]


def model_state_snapshot(model: nn.Module, probe: torch.Tensor) -> ModelSnapshot:
    """Record the model's structure, flags and its output on ``probe`` (checks it is clean first)."""
    assert_no_hooks(model)
    assert_no_grads(model)
    with torch.no_grad():
        output = model(probe)
    return ModelSnapshot(module_facts(model), param_facts(model), torch.is_grad_enabled(), probe.clone(), output)


def assert_model_unchanged(model: nn.Module, snap: ModelSnapshot, *, outputs: bool = True) -> None:
    """No hook, no .grad, same modules/flags/parameters, grad mode, and bit-identical outputs
    (``outputs=False`` skips the forward pass that checks the outputs: VGG-16 is slow)."""
    assert_no_hooks(model)
    assert_no_grads(model)
    assert module_facts(model) == snap.modules, "modules, inplace or training flags changed"
    assert param_facts(model) == snap.params, "parameters replaced or requires_grad changed"
    assert torch.is_grad_enabled() == snap.grad_enabled, "global grad mode changed"
    if not outputs:
        return
    with torch.no_grad():
        output = model(snap.probe)
    assert torch.equal(output, snap.output), "the model's output changed"


@pytest.fixture(scope="session")
def snapshots(alexnet, vgg16, images) -> dict[str, ModelSnapshot]:
    """One snapshot per model, taken before any test used it (probe: the first test image)."""
    return {name: model_state_snapshot(m, images[:1]) for name, m in (("alexnet", alexnet), ("vgg16", vgg16))}


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """The model with every parameter's requires_grad False, restored on the way out."""
    before = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), before):
            p.requires_grad_(flag)


@contextmanager
def third_party(model: nn.Module) -> Iterator[nn.Module]:
    """Run a reference library on a shared model, then drop the .grad it accumulated and check that
    it removed its hooks, so that the shared fixtures stay clean for the labutils checks."""
    try:
        yield model
    finally:
        model.zero_grad(set_to_none=True)
    assert_no_hooks(model)


def assert_close_rel(
    actual: torch.Tensor, expected: torch.Tensor, what: str = "", rtol: float = 1e-5, *, allow_zero: bool = False
) -> float:
    """assert_close with rtol and atol = rtol * max|expected|; returns the max error relative to max|expected|.

    An all-zero reference proves little: it is refused, unless ``allow_zero`` (then ``actual`` must be
    exactly zero too)."""
    actual, expected = actual.detach().float(), expected.detach().float()
    scale = expected.abs().max().item()
    if scale == 0 and allow_zero:
        assert torch.equal(actual, expected), f"{what}: expected all zeros"
        return 0.0
    assert scale > 0, f"{what}: the reference is all zeros, the comparison would prove nothing"
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale, msg=lambda m: f"{what}: {m}")
    rel = ((actual - expected).abs().max() / scale).item()
    print(f"[{what}] max |error| / max |reference| = {rel:.2e}")
    return rel


def call_and_check(model: nn.Module, snapshot: ModelSnapshot, x: torch.Tensor, call, *, outputs: bool = True):
    """Run ``call(model, x_copy)`` and check that it left the model and the caller's tensor untouched."""
    x_copy = x.clone()
    result = call(model, x_copy)
    assert torch.equal(x_copy, x), "the caller's images were modified"
    assert not x_copy.requires_grad and x_copy.grad is None, "the caller's images now require grad / have .grad"
    assert_model_unchanged(model, snapshot, outputs=outputs)
    return result


def safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """The safetensors format written by hand: 8-byte header length, JSON header, raw little-endian data."""
    import json

    header, data = {}, b""
    for name, t in tensors.items():
        raw = t.contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data
