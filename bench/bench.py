#!/usr/bin/env python
"""Benchmark: labutils' Grad-CAM against Captum, pytorch-grad-cam and torchcam.

    python bench/bench.py                    # CPU, AlexNet and VGG-16, batch 1, 224x224 (several minutes)
    python bench/bench.py --quick            # AlexNet, few repetitions: CI checks that it keeps working
    python bench/bench.py --device cuda      # adds batch throughput (images/s) and bf16 / fp16 autocast maps
    python bench/bench.py --precision        # on the CPU: bf16 / fp16 maps against fp32 maps (slow)

Every time is reported as a ratio to a plain ``torch.no_grad()`` forward pass of the same model,
measured side by side in the same process: each round runs every method once, round-robin (the
starting method rotates), each call right next to a forward pass of its own, after a warm-up; the
ratio is the median over rounds of (call / its forward pass). The ratio of the fastest call to the
fastest forward pass is printed too: on a shared machine it shows what a quiet one would.
The models have random weights (``labutils.load_model(name, weights="random")``): the cost of a
pass does not depend on the values of the weights, and nothing is downloaded.

Before anything is timed, every method's map is compared with labutils' (Captum's raw map and
torchcam's raw map to labutils' raw map L^c, to 1e-5 of its peak; pytorch-grad-cam's final map to
labutils' final map, to 1e-5): a method whose map differs is reported as DIFFERS and not timed.

Peak memory (CPU): each method runs in a fresh subprocess, which reports the peak resident set size
of one call (/proc/self/status VmHWM, reset just before it) and how much it rose during the call,
after one unmeasured call whose freed memory is handed back to the OS; on GPU,
torch.cuda.max_memory_allocated. Requires the ``bench`` extra: ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import datetime
import functools
import gc
import importlib
import importlib.metadata
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # labutils from this checkout

import labutils  # noqa: E402
from labutils.cached import class_weights, explanation_from_weights, features_at, head_pass  # noqa: E402
from labutils.gradcam import alpha_weights, combine, one_hot_seeds  # noqa: E402

warnings.filterwarnings("ignore", message=".*did not already require gradients.*")
warnings.filterwarnings("ignore", message=".*Setting backward hooks on ReLU.*")
warnings.filterwarnings("ignore", category=FutureWarning)

ONE_CLASS = 9  # with the seeded random weights, class 9's map has mixed signs (see tests/test_gradcam.py)
FIVE_CLASSES = [9, 22, 243, 282, 1]
TOLERANCE = 1e-5
TARGETS = {  # issue 12's targets, as ratios to the no-grad forward (Guided Grad-CAM: no slower than before)
    ("one class", "vgg16"): 1.04,
    ("one class", "alexnet"): 1.28,
    ("five classes", "vgg16"): 1.08,
    ("five classes", "alexnet"): 1.60,
    ("guided", "vgg16"): 2.2,
    ("guided", "alexnet"): 2.7,
    ("memory", "vgg16"): 1.05,
    ("memory", "alexnet"): 1.05,
}
GPU_TARGETS = {"vgg16": 0.97, "alexnet": 0.92, "low": 0.95}  # batch throughput vs the forward pass (fp32; bf16/fp16)
SWITCH_TARGET_MS = 5.0  # the explorer's class switch (VGG-16, CPU)
QUICK_LEFT_OUT = {  # --quick (CI, well under 30 s): only labutils and Captum for five classes, no parts
    "labutils-autograd-5", "floor-5", "grad-cam-5", "torchcam-5",
    "head-below", "head-fwd", "head-fb1", "head-fb5", "linear-1", "linear-5", "hand-1", "hand-5",
}
PEERS = {"captum": "captum.attr", "grad-cam": "pytorch_grad_cam", "torchcam": "torchcam.methods"}  # package: module


@functools.cache
def peer(package: str) -> bool:
    """Whether a peer library imports (with its own dependencies: pytorch-grad-cam needs cv2, scipy, sklearn)."""
    try:
        importlib.import_module(PEERS[package])
        return True
    except ImportError:
        return False
ROW_TITLES = {
    "one class": "Grad-CAM, one class",
    "five classes": "Grad-CAM, five classes of one image (peers: five calls)",
    "guided": "Guided Grad-CAM, one class",
}


# ---------------------------------------------------------------- inputs and the model split


def test_images(n: int, size: int = 224, seed: int = 1) -> torch.Tensor:
    """``n`` seeded image-like tensors: smooth noise, roughly ImageNet-normalized."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 3, size // 8, size // 8, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def split(model: nn.Module, layer: str) -> tuple[nn.Module, nn.Module]:
    """The network cut after ``features.i``: (below: x -> A^k, head: A^k -> scores)."""
    i = int(layer.split(".")[1])
    head = nn.Sequential(*model.features[i + 1 :], model.avgpool, nn.Flatten(1), *model.classifier)
    return model.features[: i + 1], head


def floor_gradcam(below: nn.Module, head: nn.Module, x: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Grad-CAM written by hand on the split network: the least work any implementation can do.

    The layers below run without autograd, the head once forward and once backward (one class: a
    plain backward pass; K classes: one backward pass carrying the K seeds). Returns L^c (N, K, h, w).
    """
    with torch.no_grad():
        a = below(x)
    a.requires_grad_(True)
    with torch.enable_grad():
        scores = head(a.clone())
    targets = torch.tensor([classes])
    if len(classes) == 1:
        (grads,) = torch.autograd.grad(scores[:, classes[0]].sum(), a)
        grads = grads[:, None]
    else:
        (grads,) = torch.autograd.grad(scores, a, one_hot_seeds(scores, targets), is_grads_batched=True)
        grads = grads.transpose(0, 1)
    return combine(alpha_weights(grads), a.detach()[:, None])


# ---------------------------------------------------------------- the methods


@dataclass
class Method:
    """One timed call and how its output compares with labutils'."""

    key: str
    row: str  # "one class", "five classes", "guided", "parts"
    label: str
    call: Callable[[], Any]
    compare_to: str | None = None  # labutils' key whose output is the reference
    kind: str = "rel"  # "rel": max|a-b| <= 1e-5 max|b| for every map (compared with L^c, ``raw``);
    # "abs": max|a-b| <= 1e-5 (compared with the final maps in [0, 1], ``maps``)
    cleanup: Callable[[], None] = lambda: None
    equal: bool | None = None
    error: float | None = None


def as_tensor(value: Any, kind: str = "rel") -> torch.Tensor:
    """A method's output as a float CPU tensor; of a labutils Explanation, ``raw`` or (kind "abs") ``maps``."""
    if isinstance(value, labutils.Explanation):
        value = value.maps if kind == "abs" else value.raw
    return value.detach().float().cpu() if isinstance(value, torch.Tensor) else torch.as_tensor(value).float()


def make_methods(model: nn.Module, x: torch.Tensor, keys: list[str] | None = None) -> dict[str, Method]:
    """Every method of the benchmark on ``model`` and images ``x`` (peers are imported only if asked for)."""
    name = labutils.models.model_name(model)
    layer = labutils.default_layer(model)
    module = labutils.get_layer(model, layer)
    below, head = split(model, layer)
    one, five = ONE_CLASS, FIVE_CLASSES
    a_cached = below(x).detach() if keys is None or any(k.startswith("head") for k in keys) else None
    wanted = (lambda k: True) if keys is None else (lambda k: k in keys)
    methods: dict[str, Method] = {}

    def add(m: Method) -> None:
        if wanted(m.key):
            methods[m.key] = m

    def no_grad_forward() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    def drop_grads(m: nn.Module = model) -> Callable[[], None]:
        return lambda: m.zero_grad(set_to_none=True)

    add(Method("forward", "baseline", "no-grad forward", no_grad_forward))
    # labutils
    add(Method("labutils", "one class", "labutils", lambda: labutils.gradcam(model, x, one)))
    add(Method("labutils-5", "five classes", "labutils", lambda: labutils.gradcam(model, x, five)))
    add(Method("labutils-guided", "guided", "labutils", lambda: labutils.guided_gradcam(model, x, one)))
    # labutils without the shortcut, and the autograd floor: hand-written split network (not a peer)
    add(Method("labutils-autograd", "one class", "labutils shortcut=False",
               lambda: labutils.gradcam(model, x, one, shortcut=False), "labutils"))
    add(Method("labutils-autograd-5", "five classes", "labutils shortcut=False",
               lambda: labutils.gradcam(model, x, five, shortcut=False), "labutils-5"))
    add(Method("floor", "one class", "autograd floor (split by hand)",
               lambda: floor_gradcam(below, head, x, [one]), "labutils"))
    add(Method("floor-5", "five classes", "autograd floor (split by hand)",
               lambda: floor_gradcam(below, head, x, five), "labutils-5"))

    if (keys is None or any(k.startswith("captum") for k in keys)) and peer("captum"):
        from captum.attr import LayerGradCam

        def captum(c: int) -> torch.Tensor:
            return LayerGradCam(model, module).attribute(x, target=c, relu_attributions=True)  # (N, 1, h, w)

        add(Method("captum", "one class", "Captum LayerGradCam", lambda: captum(one), "labutils"))
        add(Method("captum-5", "five classes", "Captum LayerGradCam",
                   lambda: torch.cat([captum(c) for c in five], dim=1), "labutils-5"))

    if (keys is None or any(k.startswith("grad-cam") for k in keys)) and peer("grad-cam"):
        from pytorch_grad_cam import GradCAM, GuidedBackpropReLUModel
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        def pgc(c: int) -> Any:  # final maps (N, H, W), numpy
            with GradCAM(model=model, target_layers=[module]) as cam:
                return cam(input_tensor=x, targets=[ClassifierOutputTarget(c)] * x.shape[0])

        # GuidedBackpropReLUModel swaps the model's ReLUs (and puts back non-inplace ones): give it a copy
        guided_model = copy.deepcopy(model)
        guided_bp = GuidedBackpropReLUModel(guided_model, device=x.device)

        def pgc_guided(c: int) -> torch.Tensor:  # the library's example: cam[..., None] * guided backprop
            cam = pgc(c)[0]
            gb = guided_bp(x.clone(), target_category=c)  # (H, W, 3), image 0
            return torch.from_numpy(cam[..., None] * gb).permute(2, 0, 1)[None, None]

        def drop_both() -> None:
            model.zero_grad(set_to_none=True)
            guided_model.zero_grad(set_to_none=True)

        add(Method("grad-cam", "one class", "pytorch-grad-cam GradCAM",
                   lambda: pgc(one)[:, None], "labutils", "abs", drop_grads()))
        add(Method("grad-cam-5", "five classes", "pytorch-grad-cam GradCAM",
                   lambda: torch.stack([torch.from_numpy(pgc(c)) for c in five], dim=1), "labutils-5", "abs",
                   drop_grads()))
        add(Method("grad-cam-guided", "guided", "pytorch-grad-cam GradCAM x GuidedBackpropReLUModel",
                   lambda: pgc_guided(one), "labutils-guided", "rel", drop_both))

    if (keys is None or any(k.startswith("torchcam") for k in keys)) and peer("torchcam"):
        from torchcam.methods import GradCAM as TorchcamGradCAM

        def torchcam(c: int) -> torch.Tensor:  # raw map (N, h, w)
            with TorchcamGradCAM(model, layer) as extractor:
                scores = model(x)
                return extractor(c, scores, normalized=False)[0]

        add(Method("torchcam", "one class", "torchcam GradCAM", lambda: torchcam(one)[:, None], "labutils"))
        add(Method("torchcam-5", "five classes", "torchcam GradCAM",
                   lambda: torch.stack([torch.as_tensor(torchcam(c)) for c in five], dim=1), "labutils-5"))

    # the parts of one forward/backward pass, to explain the floors
    if a_cached is not None:
        def head_forward() -> torch.Tensor:
            with torch.no_grad():
                return head(a_cached.clone())

        def head_backward(k: int) -> Callable[[], torch.Tensor]:
            a = a_cached.clone().requires_grad_(True)
            targets = torch.tensor([five[:k]])

            def run() -> torch.Tensor:
                with torch.enable_grad():
                    scores = head(a.clone())
                if k == 1:
                    return torch.autograd.grad(scores[:, five[0]].sum(), a)[0]
                return torch.autograd.grad(scores, a, one_hot_seeds(scores, targets), is_grads_batched=True)[0]

            return run

        def below_forward() -> torch.Tensor:
            with torch.no_grad():
                return below(x)

        biggest = max((m for m in head.modules() if isinstance(m, nn.Linear)), key=lambda m: m.weight.numel())
        rows = {k: torch.randn(k, biggest.in_features, generator=torch.Generator().manual_seed(k)).to(x.device)
                for k in (1, 5)}

        def biggest_linear(k: int) -> Callable[[], torch.Tensor]:
            def run() -> torch.Tensor:
                with torch.no_grad():
                    return biggest(rows[k])
            return run

        shape = f"{biggest.in_features}->{biggest.out_features}"
        add(Method("head-below", "parts", f"layers below {layer} (no grad)", below_forward))
        add(Method("linear-1", "parts", f"largest Linear of the head ({shape}), 1 row", biggest_linear(1)))
        add(Method("linear-5", "parts", f"the same Linear, 5 rows", biggest_linear(5)))
        add(Method("head-fwd", "parts", f"head above {layer}: forward (no grad)", head_forward))
        add(Method("head-fb1", "parts", "head: forward + backward, 1 class", head_backward(1)))
        add(Method("head-fb5", "parts", "head: forward + batched backward, 5 classes", head_backward(5)))

        plain = head_pass(model, layer, a_cached)  # the shortcut's record of one forward pass, not folded
        if plain.record is not None:
            add(Method("hand-1", "parts", "shortcut: g1 by hand and W1s^T g1, 1 class (HeadRecord.alpha)",
                       lambda: class_weights(plain, [five[:1]])))
            add(Method("hand-5", "parts", "shortcut: the same, 5 classes", lambda: class_weights(plain, [five])))

        kept = head_pass(model, layer, a_cached, fold=True)  # what the explorer keeps for the current image and layer
        new_classes = itertools.cycle(range(100, 200))  # never the same class twice in a row

        def explorer_class_switch() -> labutils.Explanation:
            classes, alpha = class_weights(kept, [next(new_classes)])  # one row of W3 times the folded chain
            return explanation_from_weights(kept, classes, alpha)  # equation (2) and section 5.5

        add(Method("explorer-class", "parts", "explorer: switch to a new class (kept A^k and head pass)",
                   explorer_class_switch))
    return methods


# ---------------------------------------------------------------- equality


def map_error(out: torch.Tensor, ref: torch.Tensor, kind: str) -> float:
    """The error that decides "same map": per map, max|a-b| / max|b| ("rel") or max|a-b| ("abs")."""
    out, ref = as_tensor(out), as_tensor(ref)
    if out.shape != ref.shape:
        return float("inf")
    if kind == "abs":
        return (out - ref).abs().max().item()
    maps_out, maps_ref = out.reshape(-1, *ref.shape[2:]).flatten(1), ref.reshape(-1, *ref.shape[2:]).flatten(1)
    errors = []
    for a, b in zip(maps_out, maps_ref):
        scale = b.abs().max().item()
        errors.append((a - b).abs().max().item() / scale if scale > 0 else (a.abs().max().item() * 1e30))
    return max(errors)


def check_equal(methods: dict[str, Method]) -> None:
    """Run every method once and compare its map with labutils'; sets ``equal`` and ``error``."""
    outputs = {}
    for key, m in methods.items():
        outputs[key] = m.call()
        m.cleanup()
    for m in methods.values():
        if m.compare_to is None:
            continue
        m.error = map_error(as_tensor(outputs[m.key]), as_tensor(outputs[m.compare_to], m.kind), m.kind)
        m.equal = m.error <= TOLERANCE


# ---------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_call(method: Method, device: torch.device, clock: Callable[[], float]) -> float:
    synchronize(device)
    t0 = clock()
    method.call()
    synchronize(device)
    elapsed = clock() - t0
    method.cleanup()
    return elapsed


def interleaved(
    methods: dict[str, Method],
    reps: int,
    warmup: int,
    device: torch.device,
    clock: Callable[[], float] = time.perf_counter,
    baseline: str | None = None,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds per call: each round runs every method once, round-robin from a rotating start.

    With a ``baseline`` (the no-grad forward), each call is paired with a baseline call right next to
    it (before it in even rounds, after it in odd ones): a load that comes and goes on a shared
    machine then hits both sides of most pairs. Returns (times, the paired baseline's times).
    """
    keys = [k for k in methods if k != baseline]
    times: dict[str, list[float]] = {k: [] for k in methods}
    paired: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(warmup + reps):
        start = r % len(keys)
        for key in keys[start:] + keys[:start]:
            if baseline is None:
                pair = {key: timed_call(methods[key], device, clock)}
            elif r % 2 == 0:
                pair = {baseline: timed_call(methods[baseline], device, clock)}
                pair[key] = timed_call(methods[key], device, clock)
            else:
                pair = {key: timed_call(methods[key], device, clock)}
                pair[baseline] = timed_call(methods[baseline], device, clock)
            if r >= warmup:
                times[key].append(pair[key])
                if baseline is not None:
                    times[baseline].append(pair[baseline])
                    paired[key].append(pair[baseline])
    return times, paired


# ---------------------------------------------------------------- memory


def status_kb(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def release_free_memory() -> None:
    """Give the memory that the C allocator keeps in its free lists back to the OS (glibc's malloc_trim)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def memory_child(model_name: str, key: str, threads: int | None, import_peers: bool, repeats: int = 3) -> None:
    """In a fresh process: the peak RSS of one call of ``key``, printed as JSON (median of ``repeats``).

    A first call loads kernels and caches (the same few MB for every method) and is not measured.
    Before each measured call, what the previous one freed is handed back to the OS: the call
    would otherwise reuse it without raising the peak. ``import_peers``: every child imports the
    same libraries, so that the peaks of all methods start from the same RSS.
    """
    if threads:
        torch.set_num_threads(threads)
    if import_peers:
        for package in PEERS:
            peer(package)  # imported, when it can be
    model = labutils.load_model(model_name, weights="random")
    x = test_images(1)
    method = make_methods(model, x, [key])[key]
    method.call()
    method.cleanup()
    found = []
    for _ in range(repeats):
        gc.collect()
        release_free_memory()
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        before = status_kb("VmRSS")
        result = method.call()
        peak = status_kb("VmHWM")
        del result
        method.cleanup()
        found.append((peak - before, peak, before))
    extra, peak, before = sorted(found)[len(found) // 2]
    print(json.dumps({"key": key, "before_mb": before / 1024, "peak_mb": peak / 1024, "extra_mb": extra / 1024}))


def measure_rss(model_name: str, key: str, threads: int | None, import_peers: bool) -> dict[str, float]:
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-child", key, "--models", model_name]
    if threads:
        command += ["--threads", str(threads)]
    if import_peers:
        command += ["--memory-import-peers"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"memory subprocess for {key} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_cuda_memory(methods: dict[str, Method], keys: list[str]) -> dict[str, dict[str, float]]:
    """Extra GPU memory of one call (max_memory_allocated - memory_allocated before), in-process."""
    found = {}
    for key in keys:
        m = methods[key]
        m.call()
        m.cleanup()
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = m.call()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        del result
        m.cleanup()
        found[key] = {"before_mb": before / 2**20, "peak_mb": peak / 2**20, "extra_mb": (peak - before) / 2**20}
    return found


# ---------------------------------------------------------------- throughput (GPU mode)


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each pair of maps (…, H, W) -> (…)."""
    a, b = a.double().flatten(-2), b.double().flatten(-2)
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=1e-30)


def throughput(model: nn.Module, device: torch.device, batch: int, reps: int, warmup: int, *, size: int = 224,
               peers: bool = True) -> list[str]:
    """Images/s over a batch for the forward pass, labutils and the peers, fp32, bf16 and fp16 autocast.

    ``size``/``peers``: --quick on the CPU checks the code path only (112x112, no peers: bf16 is slow there)."""
    layer = labutils.default_layer(model)
    module = labutils.get_layer(model, layer)
    x = test_images(batch, size=size, seed=2).to(device)
    c = ONE_CLASS

    def forward() -> Any:
        with torch.no_grad():
            return model(x)

    def forward_low(dtype: torch.dtype) -> Callable[[], Any]:
        def call() -> Any:
            with torch.no_grad(), torch.autocast(device_type=device.type, dtype=dtype):
                return model(x)
        return call

    def lab_low(dtype: torch.dtype) -> Callable[[], Any]:
        return lambda: labutils.gradcam(model, x, c, dtype=dtype)  # = a call inside the caller's autocast

    def captum() -> Any:
        from captum.attr import LayerGradCam
        return LayerGradCam(model, module).attribute(x, target=c, relu_attributions=True)

    def pgc() -> Any:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        with GradCAM(model=model, target_layers=[module]) as cam:
            return cam(input_tensor=x, targets=[ClassifierOutputTarget(c)] * batch)

    def torchcam() -> Any:
        from torchcam.methods import GradCAM as TorchcamGradCAM
        with TorchcamGradCAM(model, layer) as extractor:
            return extractor(c, model(x), normalized=False)

    peer_calls = {"Captum fp32": ("captum", captum), "pytorch-grad-cam fp32": ("grad-cam", pgc),
                  "torchcam fp32": ("torchcam", torchcam)}
    calls = {
        "forward fp32": forward,
        "labutils fp32": lambda: labutils.gradcam(model, x, c),
        **{k: f for k, (package, f) in peer_calls.items() if peers and peer(package)},
        "forward bf16 autocast": forward_low(torch.bfloat16),
        "labutils bf16 autocast": lab_low(torch.bfloat16),
        "forward fp16 autocast": forward_low(torch.float16),
        "labutils fp16 autocast": lab_low(torch.float16),
    }
    methods = {k: Method(k, "throughput", k, f, cleanup=lambda: model.zero_grad(set_to_none=True))
               for k, f in calls.items()}
    times, _ = interleaved(methods, reps, warmup, device)
    fp32 = labutils.gradcam(model, x, c).maps[:, 0]
    corr = {name: correlation(fp32, lab_low(dtype)().maps[:, 0].float())
            for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16))}
    base = {p: statistics.median(times[f"forward {p}"]) for p in ("fp32", "bf16 autocast", "fp16 autocast")}
    lines = [f"| method (batch {batch}, {size}x{size}) | images/s | vs forward at the same precision | target |",
             "| --- | ---: | ---: | --- |"]
    for k, t in times.items():
        share = base[k.split(" ", 1)[1]] / statistics.median(t)  # vs the forward pass at the same precision
        verdict = ""
        if k.startswith("labutils"):  # the target is for the GPU; on the CPU this only checks the code
            target = GPU_TARGETS[labutils.models.model_name(model)] if "fp32" in k else GPU_TARGETS["low"]
            verdict = f">= {target}x: {'met' if share >= target else 'NOT met'}" if device.type == "cuda" else \
                "(GPU target)"
        lines.append(f"| {k} | {batch / statistics.median(t):.1f} | {share:.2f}x | {verdict} |")
    lines.append("")
    for name, r in corr.items():
        lines.append(f"{name} autocast maps vs fp32 maps (labutils, {batch} images; A^k and the head in fp32): Pearson "
                     f"correlation min {r.min():.4f}, mean {r.mean():.4f} (target >= 0.99)")
    if device.type == "cuda":
        lines += tf32_tradeoff(model, x[:4], c)
        lines += ["", f"Host synchronisations in one call (torch.cuda.set_sync_debug_mode): labutils fp32 "
                  f"{host_syncs(calls['labutils fp32'])}, bf16 {host_syncs(calls['labutils bf16 autocast'])} "
                  "(input validation needs 1: the images' finite check); no-grad forward "
                  f"{host_syncs(forward)}"]
    return lines


def host_syncs(call: Callable[[], Any]) -> int:
    """How many operations of one call wait for the GPU (CUDA's sync debug mode warns at each)."""
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            call()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum("synchroniz" in str(w.message) for w in seen)


def tf32_tradeoff(model: nn.Module, x: torch.Tensor, c: int) -> list[str]:
    """How far the GPU's maps are from the CPU's, with the process's TF32 setting and with TF32 off.

    labutils never changes these process-wide flags; the benchmark (one thread) may.
    """
    reference = labutils.gradcam(copy.deepcopy(model).cpu(), x.cpu(), c).raw
    scale = reference.abs().amax(dim=(-2, -1)).clamp(min=1e-30)

    def error() -> float:
        return ((labutils.gradcam(model, x, c).raw.cpu() - reference).abs().amax(dim=(-2, -1)) / scale).max().item()

    default = error()
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        matmul = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            off = error()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = matmul
    return ["", f"GPU maps vs CPU maps (max error / peak, {x.shape[0]} images): process setting (cuDNN TF32 "
            f"{torch.backends.cudnn.allow_tf32}, matmul TF32 {torch.backends.cuda.matmul.allow_tf32}) {default:.1e}; "
            f"TF32 off {off:.1e}"]


def precision(model: nn.Module, device: torch.device, seeds: tuple[int, ...] = (7, 11), n: int = 4,
              size: int = 224) -> list[str]:
    """bf16 / fp16 autocast maps against fp32 maps, and what limits them: Grad-CAM's own sensitivity.

    For each seed, ``n`` smooth images x 5 classes: the correlation of the maps, the relative error of
    A^k under autocast, and the correlation of fp32 maps whose A^k is perturbed by noise of bf16's
    relative error (A^k x (1 + e N(0, 1)), three draws): no bf16 mode that computes A^k in bf16 can
    do better than the map's own sensitivity to such an error.
    """
    layer = labutils.default_layer(model)
    module = labutils.get_layer(model, layer)
    classes = [[9, 22, 243, 282, 1]] * n
    lines = [f"| images (seed) | bf16 maps: min (mean) | fp16 maps: min (mean) | A^k error bf16 / fp16 | fp32 maps, A^k "
             "perturbed by bf16's error: min of 3 draws (worst draw's mean) |", "| --- | ---: | ---: | ---: | ---: |"]
    for seed in seeds:
        x = test_images(n, size=size, seed=seed).to(device)
        full = labutils.gradcam(model, x, classes)
        a32 = features_at(model, layer, x)
        corr, error = {}, {}
        for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            corr[name] = correlation(full.maps, labutils.gradcam(model, x, classes, dtype=dtype).maps)
            with torch.autocast(device.type, dtype=dtype):
                error[name] = ((features_at(model, layer, x).float() - a32).norm() / a32.norm()).item()
        perturbed = []
        for draw in range(3):
            g = torch.Generator(device).manual_seed(draw)
            hook = module.register_forward_hook(
                lambda m, i, out: out * (1 + error["bf16"] * torch.randn(out.shape, generator=g, device=out.device)))
            try:
                perturbed.append(correlation(full.maps, labutils.gradcam(model, x, classes).maps))
            finally:
                hook.remove()
        worst = min(perturbed, key=lambda r: r.min().item())
        lines.append(f"| {n} ({seed}) | {corr['bf16'].min():.4f} ({corr['bf16'].mean():.4f}) | "
                     f"{corr['fp16'].min():.4f} ({corr['fp16'].mean():.4f}) | {error['bf16']:.2%} / "
                     f"{error['fp16']:.2%} | {worst.min():.4f} ({worst.mean():.4f}) |")
    return lines


# ---------------------------------------------------------------- the report


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(device: torch.device) -> list[str]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"machine: {cpu_model()}, {cores} cores available ({os.cpu_count()} logical CPUs), {platform.system()} "
        f"{platform.release()}",
        f"torch threads: {torch.get_num_threads()}; load average at start: "
        + ", ".join(f"{v:.2f}" for v in os.getloadavg()),
        "versions: " + ", ".join(f"{p} {version(p)}" for p in
                                 ("torch", "torchvision", "captum", "grad-cam", "torchcam", "labutils")),
        f"python {platform.python_version()}; device: "
        + (torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"),
    ]
    left_out = [package for package in PEERS if not peer(package)]
    if left_out:
        lines.append(f"left out (they do not import here): {', '.join(left_out)}")
    return lines


def ms(seconds: list[float]) -> str:
    return f"{statistics.median(seconds) * 1000:.1f}"


def report_model(name: str, args: argparse.Namespace, device: torch.device) -> list[str]:
    model = labutils.load_model(name, weights="random").to(device)
    x = test_images(1).to(device)
    methods = make_methods(model, x)
    if args.quick:
        methods = {k: m for k, m in methods.items() if k not in QUICK_LEFT_OUT}
    check_equal(methods)
    timed = {k: m for k, m in methods.items() if m.equal is not False}
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    times, paired = interleaved(timed, args.reps, args.warmup, device, clock, baseline="forward")

    def ratio(key: str) -> float:
        """The median over rounds of (this call) / (the forward pass next to it)."""
        return statistics.median(t / f for t, f in zip(times[key], paired[key]))

    def fastest(key: str) -> float:
        """The fastest call over the fastest forward pass: what a quiet machine would show."""
        return min(times[key]) / min(times["forward"])

    title = {"alexnet": "AlexNet", "vgg16": "VGG-16"}[name]
    lines = [f"### {title} ({device.type}, batch 1, 224x224, random weights, layer {labutils.default_layer(model)})",
             "", f"load average when this model's rounds ended: {', '.join(f'{v:.2f}' for v in os.getloadavg())} "
             "(a shared machine: compare ratios within one run)", "", f"no-grad forward: median {ms(times['forward'])} ms, fastest {min(times['forward']) * 1000:.1f} ms "
             f"({'CPU time of the process' if args.clock == 'cpu' else 'wall-clock time'}; {args.reps} rounds after "
             f"the equality check's calls and {args.warmup} more warm-up round(s); every call paired with a forward "
             "pass next to it)", "",
             "| row | method | same map as labutils | median ms | ratio to forward (median of pairs) | "
             "ratio of fastest calls | target |",
             "| --- | --- | --- | ---: | ---: | ---: | --- |"]
    for row in ("one class", "five classes", "guided"):
        target = TARGETS[(row, name)]
        captum_key = {"one class": "captum", "five classes": "captum-5"}.get(row)
        for m in methods.values():
            if m.row != row:
                continue
            same = "reference" if m.compare_to is None else ("yes" if m.equal else "DIFFERS")
            err = "" if m.error is None else f" ({m.error:.1e})"
            if m.equal is False:
                lines.append(f"| {ROW_TITLES[row]} | {m.label} | {same}{err} | not timed | - | - | |")
                continue
            verdict = ""
            if m.key in ("labutils", "labutils-5", "labutils-guided"):
                verdict = f"<= {target}x: " + ("met" if ratio(m.key) <= target else "NOT met")
                if captum_key in times:
                    lead = ratio(captum_key) / ratio(m.key) - 1
                    verdict += f"; {abs(lead):.0%} {'ahead of' if lead >= 0 else 'behind'} Captum"
            lines.append(f"| {ROW_TITLES[row]} | {m.label} | {same}{err} | {ms(times[m.key])} | "
                         f"{ratio(m.key):.2f}x | {fastest(m.key):.2f}x | {verdict} |")
    if "explorer-class" in times:
        switch = statistics.median(times["explorer-class"]) * 1000
        lines.append(f"| Explorer class switch (cached activations, head only) | labutils.cached | - | {switch:.1f} | - | "
                     f"- | <= {SWITCH_TARGET_MS:.0f} ms: {'met' if switch <= SWITCH_TARGET_MS else 'NOT met'} |")

    # memory
    keys = ["forward", "labutils"] if args.quick else ["forward", "labutils", "captum", "grad-cam", "torchcam",
                                                        "labutils-5", "labutils-guided"]
    if device.type == "cuda":
        memory = measure_cuda_memory(methods, keys)
        what = "torch.cuda.max_memory_allocated during one call, minus the memory allocated before it"
    else:
        memory = {k: measure_rss(name, k, args.threads, import_peers=not args.quick) for k in keys}
        what = ("peak RSS of one call in a fresh process, after one unmeasured call and malloc_trim, median of 3; "
                "extra = peak - RSS just before the call")
    lines += ["", f"Memory ({what}):", "",
              "| method | peak MB | extra MB | peak vs forward | extra vs forward | target |",
              "| --- | ---: | ---: | ---: | ---: | --- |"]
    fwd = memory["forward"]
    for k in keys:
        mem = memory[k]
        label = "no-grad forward" if k == "forward" else methods[k].label + (
            "" if methods[k].row == "one class" else f" ({methods[k].row})")
        verdict = ""
        if k == "labutils":
            limit = TARGETS[("memory", name)]
            verdict = f"<= {limit}x: " + ("met" if mem["peak_mb"] <= limit * fwd["peak_mb"] else "NOT met") + " (peak)"
        extra_ratio = mem["extra_mb"] / fwd["extra_mb"] if fwd["extra_mb"] > 0 else float("nan")
        lines.append(f"| {label} | {mem['peak_mb']:.0f} | {mem['extra_mb']:.1f} | "
                     f"{mem['peak_mb'] / fwd['peak_mb']:.2f}x | {extra_ratio:.2f}x | {verdict} |")

    # where the time goes
    head_params = sum(p.numel() for p in split(model, labutils.default_layer(model))[1].parameters())
    lines += ["", f"Where the time goes (head above the layer: {head_params / 1e6:.1f}M weights, "
              f"{head_params * 4 / 2**20:.0f} MB read once forward and once backward):", ""]
    for k in ("head-below", "head-fwd", "head-fb1", "head-fb5", "linear-1", "linear-5", "hand-1", "hand-5"):
        if k in times:
            lines.append(f"- {methods[k].label}: {ms(times[k])} ms = {ratio(k):.2f}x forward")
    if "head-fb1" in times and "head-fwd" in times:
        bwd1, bwd5 = ratio("head-fb1") - ratio("head-fwd"), ratio("head-fb5") - ratio("head-fwd")
        lines.append(f"- so with autograd's backward pass through the head a one-class Grad-CAM costs at least about "
                     f"1 + {bwd1:.2f} = {1 + bwd1:.2f}x forward, five classes about {1 + bwd5:.2f}x")
    if "hand-1" in times:
        lines.append(f"- by the shortcut (no backward pass): at least about 1 + {ratio('hand-1'):.2f} = "
                     f"{1 + ratio('hand-1'):.2f}x for one class, {1 + ratio('hand-5'):.2f}x for five, plus equation (2) "
                     "and the 224x224 post-processing")
    if "linear-1" in times:
        lines.append(f"- a Linear multiplying 5 rows by its weights takes "
                     f"{ratio('linear-5') / ratio('linear-1'):.1f}x as long "
                     "as for 1 row (if reading the weights were the cost, as for 1 row, it would be about 1x)")
    del model, methods
    gc.collect()
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="AlexNet, 2 rounds, memory of forward and labutils only")
    parser.add_argument("--models", nargs="+", choices=["alexnet", "vgg16"], default=None)
    parser.add_argument("--reps", type=int, default=None, help="timed rounds (default 7, quick 2)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed rounds after the equality check's calls (default 1, quick 0)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: time.process_time, steadier on a shared machine (use with --threads 1)")
    parser.add_argument("--batch", type=int, default=None, help="throughput batch (default: 64 on GPU, 2 on CPU)")
    parser.add_argument("--no-throughput", action="store_true", help="skip the batch throughput / bf16 section")
    parser.add_argument("--precision", action="store_true",
                        help="bf16 / fp16 maps against fp32 maps (always with --device cuda; on a CPU without native "
                             "bf16/fp16 convolutions ~15 min for both models)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report to this file")
    parser.add_argument("--without-missing-peers", action="store_true",
                        help="time the peers that import and leave out the others (named in the report) instead of "
                             "refusing to run")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory-import-peers", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.models = args.models or (["alexnet"] if args.quick else ["alexnet", "vgg16"])
    args.reps = args.reps or (2 if args.quick else 7)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.quick else 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.models[0], args.memory_child, args.threads, args.memory_import_peers)
        return 0
    missing = [package for package in PEERS if not peer(package)]
    if missing and not args.without_missing_peers:
        print(f"bench.py: {', '.join(missing)} cannot be imported: pip install -e '.[bench]' (or run with "
              "--without-missing-peers)", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench.py: --device cuda, but CUDA is not available on this machine (torch "
              f"{torch.__version__}, torch.cuda.is_available() is False); run without --device cuda for the CPU "
              "benchmark", file=sys.stderr)
        return 2
    if args.device == "cuda" and args.clock == "cpu":
        print("bench.py: --clock cpu measures the CPU, not the GPU: use it without --device cuda", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    started = time.perf_counter()
    lines = ["## Grad-CAM benchmark" + (" (quick mode)" if args.quick else ""), ""]
    lines += [f"- {line}" for line in header(device)] + [""]
    print("\n".join(lines), flush=True)
    for name in args.models:
        part = report_model(name, args, device)
        print("\n".join(part) + "\n", flush=True)
        lines += part + [""]
        # throughput: on GPU the batch target; on CPU (quick mode) a small run keeps the code path working
        if not args.no_throughput and (device.type == "cuda" or args.quick):
            batch = args.batch or (64 if device.type == "cuda" else 1)
            model = labutils.load_model(name, weights="random").to(device)
            part = [f"Throughput ({device.type}{', code-path check only' if device.type == 'cpu' else ''}):", ""]
            quick_cpu = args.quick and device.type == "cpu"
            part += throughput(model, device, batch, reps=1 if args.quick else args.reps, warmup=0 if args.quick else 1,
                               size=112 if quick_cpu else 224, peers=not quick_cpu)
            print("\n".join(part) + "\n", flush=True)
            lines += part + [""]
            del model
        if device.type == "cuda" or args.precision or args.quick:  # quick mode: the code path only
            model = labutils.load_model(name, weights="random").to(device)
            part = [f"Lower precision ({device.type} autocast; maps' Pearson correlation with fp32 maps, 5 classes per "
                    "image; target >= 0.99 every map):", ""]
            part += precision(model, device, seeds=(7,), n=1, size=112) if args.quick else precision(model, device)
            part += ["", "The last column bounds what any bf16 mode that computes A^k in bf16 can reach: fp32 Grad-CAM "
                     "itself moves that much when A^k changes by bf16's relative error (the classifier's ReLU masks "
                     "flip, alpha_k^c changes, and a map that is a small remainder of cancelling terms amplifies it)."]
            print("\n".join(part) + "\n", flush=True)
            lines += part + [""]
            del model
    end = [f"load average at the end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}; "
           f"benchmark took {time.perf_counter() - started:.0f} s"]
    print("\n".join(end), flush=True)
    lines += end
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
