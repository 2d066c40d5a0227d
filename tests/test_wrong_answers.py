"""The catalogue of wrong answers: each one, run through the real check, must get the message that names
its actual cause (a fragment of it here), in one line, on the right exercise."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import answers
from labutils import checks
from labutils.gradcam import normalize, upsample


def postprocess_order(*order):
    """A post-processing that applies upsample (U), ReLU (R) and normalize (N) in the given order."""
    def fn(raw, size):
        steps = {"U": lambda m: upsample(m, size), "R": F.relu, "N": normalize}
        for step in order:
            raw = steps[step](raw)
        return raw
    return fn


def capture_with(score=None, clone=True, remove=True, swap=False):
    def fn(model, layer, x, c):
        saved = {}

        def save_activations(module, inputs, output):
            saved["A"] = output
            output.register_hook(lambda grad: saved.update(dA=grad))
            return output.clone() if clone else None

        handle = dict(model.named_modules())[layer].register_forward_hook(save_activations)
        try:
            scores = model(x)
            (score or (lambda s, c: s[:, c].sum()))(scores, c).backward()
        finally:
            if remove:
                handle.remove()
        pair = (saved["A"].detach(), saved.get("dA"))
        return pair[::-1] if swap else pair
    return fn


def cost_with(**change):
    def fn(spec, in_shape):
        out, params, mb = answers.my_layer_cost(spec, in_shape)
        if spec["kind"] == "conv" and "no_bias" in change:
            params -= spec["out_channels"]
        if spec["kind"] == "conv" and "no_padding" in change:
            k, s = spec["kernel"], spec.get("stride", 1)
            out = (out[0], (in_shape[1] - k) // s + 1, (in_shape[2] - k) // s + 1)
            mb = 2 * math.prod(out) * 4 / 1024**2
        if "once" in change:
            mb /= 2
        if "decimal_mb" in change:
            mb = mb * 1024**2 / 1e6
        return out, params, mb
    return fn


def steps_misused(kind):
    def fn(model, x, c, layer, steps):
        a, g = steps.capture(model, layer, x, c)
        if kind == "raw":
            return steps.combine(steps.alpha(g), a)
        if kind == "gradients":
            return steps.postprocess(steps.combine(steps.alpha(g), g), tuple(x.shape[-2:]))
        if kind == "swapped_size":
            return steps.postprocess(steps.combine(steps.alpha(g), a), tuple(x.shape[-2:])[::-1])
        return steps.postprocess(steps.combine(-steps.alpha(g), a), tuple(x.shape[-2:]))
    return fn


def sweep_cosine(model, x, classes, layers, steps):
    rows = []
    for layer in layers:
        a, b = (steps.gradcam(model, x, c, layer).flatten(1) for c in classes)
        rows.append(F.cosine_similarity(a, b, dim=1, eps=1e-30))
    return torch.stack(rows)


def cam_without(z=True, relu=True):
    def fn(net, x, c):
        a = net.features(x).detach()
        m = (net.classifier.weight[c].detach()[:, None, None] * a).sum(dim=-3)
        m = m / (a.shape[-2] * a.shape[-1]) if z else m
        return F.relu(m) if relu else m
    return fn


def overlay_variant(kind):
    def fn(image, cam_map, alpha, colors):
        if kind == "swapped":
            return answers.my_overlay(image, cam_map, 1 - alpha, colors)
        if kind == "grey":
            resized = F.interpolate(cam_map[None, None], size=tuple(image.shape[:2]), mode="bilinear")[0, 0]
            return (1 - alpha) * image + alpha * resized[..., None].expand(*resized.shape, 3)
        return (1 - alpha) * image + alpha * colors[(cam_map * 255).long()]  # no resize
    return fn


def inplace_relu(gradients):
    return gradients.clamp_(min=0).mean(dim=(-2, -1))


CATALOGUE = [
    # (id, exercise, wrong answer, the fragment its message must hold)
    ("cost-no-bias", "layer_cost", cost_with(no_bias=True), "the bias is missing: one per filter, + 64"),
    ("cost-no-padding", "layer_cost", cost_with(no_padding=True), "you left out the padding"),
    ("cost-counted-once", "layer_cost", cost_with(once=True), "counted once: the table stores each output twice"),
    ("cost-decimal-mb", "layer_cost", cost_with(decimal_mb=True), "MB = 1024² bytes"),
    ("cost-pool-params", "layer_cost", lambda s, i: (answers.my_layer_cost(s, i)[0], 1, answers.my_layer_cost(s, i)[2])
     if s["kind"] == "maxpool" else answers.my_layer_cost(s, i), "a maxpool has no weights"),
    ("cost-strings", "layer_cost", lambda s, i: (("64", "55", "55"), 1, 1.0), "a tuple of ints"),
    ("capture-returns-strings", "capture", lambda m, l, x, c: ("A", "dA"), "wrong type: A^k should be a torch.Tensor"),
    ("capture-not-implemented", "capture", lambda *a: (_ for _ in ()).throw(NotImplementedError()),
     "capture: not implemented yet — write my_capture above"),
    ("capture-no-clone", "capture", capture_with(clone=False), "was overwritten by the inplace ReLU"),
    ("capture-hook-left", "capture", capture_with(remove=False), "a hook is still on the model"),
    ("capture-batch-mean", "capture", capture_with(score=lambda s, c: s[:, c].mean()), "batch mean of y^c"),
    ("capture-first-image", "capture", capture_with(score=lambda s, c: s[0, c]), "only image 0 got its gradient"),
    ("capture-all-classes", "capture", capture_with(score=lambda s, c: s.sum()), "the scores of all classes"),
    ("capture-softmax", "capture", capture_with(score=lambda s, c: s.softmax(1)[:, c].sum()), "softmax probability"),
    ("capture-swapped", "capture", capture_with(swap=True), "activations and gradients are swapped"),
    ("alpha-sum", "alpha", lambda g: g.sum(dim=(-2, -1)), "summed instead of averaged over the Z = h·w = 14 × 14"),
    ("alpha-square", "alpha", lambda g: g.sum(dim=(-2, -1)) / g.shape[-1] ** 2, "but the map is not square"),
    ("alpha-negated", "alpha", lambda g: -g.mean(dim=(-2, -1)), "counterfactual weights"),
    ("alpha-abs", "alpha", lambda g: g.abs().mean(dim=(-2, -1)), "you averaged |dy^c/dA^k|"),
    ("alpha-max", "alpha", lambda g: g.amax(dim=(-2, -1)), "maximum over the positions"),
    ("alpha-axis", "alpha", lambda g: g.mean(dim=(-3, -2)), "other dimensions than the positions of each map"),
    ("alpha-inplace", "alpha", inplace_relu, "changed its input number 1 in place"),
    ("combine-no-relu", "combine", lambda al, a: (al[..., None, None] * a).sum(-3), "ReLU missing"),
    ("combine-relu-alpha", "combine", lambda al, a: (F.relu(al)[..., None, None] * a).sum(-3),
     "you dropped the negative weights alpha_k^c (a ReLU on alpha)"),
    ("combine-relu-terms", "combine", lambda al, a: F.relu(al[..., None, None] * a).sum(-3),
     "you applied the ReLU to each alpha_k^c A^k before summing"),
    ("combine-mean", "combine", lambda al, a: F.relu((al[..., None, None] * a).mean(-3)), "averaged over the K = 256"),
    ("combine-normalized", "combine", lambda al, a: normalize(F.relu((al[..., None, None] * a).sum(-3))),
     "you normalized L^c"),
    ("post-normalize-then-upsample", "postprocess", postprocess_order("R", "N", "U"), "you normalized before upsampling"),
    ("post-normalize-then-relu", "postprocess", postprocess_order("U", "N", "R"),
     "a ReLU after normalizing does nothing"),
    ("post-relu-first", "postprocess", postprocess_order("R", "U", "N"), "ReLU applied before upsampling"),
    ("post-min-over-max", "postprocess",
     lambda raw, size: (lambda m: (m - m.amin((-2, -1), keepdim=True)) / m.amax((-2, -1), keepdim=True))(
         F.relu(upsample(raw, size))), "max instead of max - min"),
    ("post-no-normalize", "postprocess", postprocess_order("U", "R"), "not normalized"),
    ("post-nearest", "postprocess",
     lambda raw, size: normalize(F.relu(F.interpolate(raw[None], size=size, mode="nearest")[0])),
     "nearest-neighbour upsampling"),
    ("post-nan", "postprocess",
     lambda raw, size: (lambda m: (m - m.amin((-2, -1), keepdim=True)) / (m.amax((-2, -1), keepdim=True) - m.amin((-2, -1), keepdim=True)))(F.relu(upsample(raw, size))),
     "must become all zeros, not 0/0"),
    ("gradcam-raw", "gradcam", steps_misused("raw"), "you returned L^c at the layer's resolution"),
    ("gradcam-gradients", "gradcam", steps_misused("gradients"), "you weighted the gradients instead of the activations"),
    ("gradcam-size", "gradcam", steps_misused("swapped_size"), "height and width swapped"),
    ("gradcam-counterfactual", "gradcam", steps_misused("negated"), "these are the counterfactual maps"),
    ("gradcam-calls-a-pipeline", "gradcam", lambda m, x, c, l, steps: steps.gradcam(m, x, c, l),
     "'NoneType' object is not callable"),
    ("sweep-cosine", "layer_sweep", sweep_cosine, "that is the cosine similarity"),
    ("cam-m", "cam", cam_without(z=False, relu=False), "this is CAM's M^c itself"),
    ("cam-no-z", "cam", cam_without(z=False), "a factor Z = "),
    ("cam-no-relu", "cam", cam_without(relu=False), "ReLU missing"),
    ("guided-plain", "guided_relu", lambda x, g: g * (x > 0), "plain ReLU backward"),
    ("guided-deconvnet", "guided_relu", lambda x, g: g.clamp(min=0), "deconvnet rule"),
    ("guided-zero-input", "guided_relu", lambda x, g: g.clamp(min=0) * (x >= 0), "input is exactly 0"),
    ("product-unnormalized", "guided_gradcam", lambda gd, raw: gd * F.relu(upsample(raw, tuple(gd.shape[-2:])))[:, :, None],
     "without normalizing it"),
    ("product-added", "guided_gradcam", lambda gd, raw: gd + answers.my_postprocess(raw, tuple(gd.shape[-2:]))[:, :, None],
     "Guided Grad-CAM multiplies them"),
    ("product-no-upsample", "guided_gradcam", lambda gd, raw: gd * raw[:, :, None], "raised RuntimeError"),
    ("cf-gradcam", "counterfactual", lambda a, g: answers.my_combine(g.mean((-2, -1)), a), "this is the Grad-CAM map"),
    ("cf-negated-map", "counterfactual", lambda a, g: -answers.my_combine(g.mean((-2, -1)), a),
     "you negated the Grad-CAM map after its ReLU"),
    ("cf-relu-weights", "counterfactual", lambda a, g: answers.my_combine(F.relu(-g.mean((-2, -1))), a),
     "you clipped the weights with a ReLU"),
    ("overlay-swapped", "overlay", overlay_variant("swapped"), "the weights are swapped"),
    ("overlay-grey", "overlay", overlay_variant("grey"), "not their jet colours"),
    ("pointing-argmin", "pointing_game", lambda m, b, t: answers.my_pointing_game(-m, b, t), "minimum of the map"),
    ("pointing-exclusive", "pointing_game", lambda m, b, t: answers.my_pointing_game(m, b - torch.tensor([0.0, 0, 1, 1]), t),
     "the boxes are inclusive"),
    ("pointing-transposed", "pointing_game", lambda m, b, t: answers.my_pointing_game(m, b[:, [1, 0, 3, 2]], t),
     "rows and columns swapped"),
    ("pointing-no-tolerance", "pointing_game", lambda m, b, t: answers.my_pointing_game(m, b, 0), "you ignored the tolerance"),
    ("pointing-float", "pointing_game", lambda m, b, t: answers.my_pointing_game(m, b, t).float(), "wrong dtype"),
    ("overlay-no-resize", "overlay", overlay_variant("no-resize"), "must match the size of tensor b (14)"),
]


@pytest.mark.parametrize("exercise, wrong, fragment", [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE])
def test_wrong_answer_gets_its_message(exercise, wrong, fragment):
    message = checks.diagnose(checks.BY_ID[exercise], wrong)
    assert message is not None, "the wrong answer passed"
    assert "\n" not in message and message.startswith(exercise), message
    assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "your the" not in message and "your your" not in message


def test_the_catalogue_is_large_and_covers_every_exercise():
    assert len(CATALOGUE) >= 30
    assert {c[1] for c in CATALOGUE} == {e.grade_id for e in checks.EXERCISES}


@pytest.mark.parametrize("exercise", [e.grade_id for e in checks.EXERCISES])
def test_the_right_answer_passes_fixed_and_fresh_cases(exercise):
    from labutils.exercise import call

    e = checks.BY_ID[exercise]
    assert checks.diagnose(e, answers.ANSWERS[exercise]) is None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the checks run: tiny tensors
    try:
        for seed in range(2):
            cases = e.cases(torch.Generator().manual_seed(seed))
            assert fingerprint(cases) != fingerprint(e.cases(None)), "the fresh cases are the notebook's"
            for case in cases:
                assert e.diagnose(case, call(answers.ANSWERS[exercise], case)) is None, case.name
    finally:
        torch.set_num_threads(threads)


def fingerprint(cases) -> list:
    """What the student's function gets: names, plain values, tensors' sums, networks' seeds."""
    def plain(a):
        return round(float(a.double().sum()), 6) if isinstance(a, torch.Tensor) else repr(a)
    return [(c.name, [plain(a) for a in c.args]) for c in cases]


# ---------------------------------------------------------------- round three: the notebook check and the grader
# Each answer is the code of a solution cell. It goes through the notebook's check (the cell run in a namespace with
# the notebook's imports) and through the grader's scoring (one sandboxed scoring process per set of modules, all
# answers in one session); both must give the same verdict, and a failure the same cause.

PRELUDE = ["import numpy as np", "import torch", "import torch.nn.functional as F", "import labutils",
           "from labutils import gradcam"]

CAM_BACKWARD = """
def my_cam(net, x, c):
    captured = {}
    handle = net.features.register_forward_hook(lambda m, i, o: captured.update(A=o))
    try:
        scores = net(x)
        scores[:, c].sum().backward()
    finally:
        handle.remove()
    a = captured["A"]
    return F.relu((net.classifier.weight.grad[c][:, None, None] * 0 + net.classifier.weight[c][:, None, None]
                   / (a.shape[-2] * a.shape[-1]) * a).sum(dim=-3)).detach()
"""
CAM_GRAD = """
def my_cam(net, x, c):
    a = net.features(x)
    scores = net.classifier(net.avgpool(a).flatten(1))
    (g,) = torch.autograd.grad(scores[:, c].sum(), a)
    return F.relu((g.mean(dim=(-2, -1))[..., None, None] * a).sum(dim=-3)).detach()
"""
OVERLAY_NO_CLAMP = """
def my_overlay(image, cam_map, alpha, colors):
    size = tuple(image.shape[:2])
    resized = F.interpolate(cam_map[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    bins = (resized.clamp(0, 1) * len(colors)).long()
    return (1 - alpha) * image + alpha * colors[bins]
"""
POOL_STRIDE_1 = """
import math
def my_layer_cost(spec, in_shape):
    c, h, w = in_shape if len(in_shape) == 3 else (None, None, None)
    if spec["kind"] == "conv":
        k, s, p = spec["kernel"], spec.get("stride", 1), spec.get("padding", 0)
        out = (spec["out_channels"], (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)
        params = spec["out_channels"] * (c * k * k + 1)
    elif spec["kind"] == "maxpool":
        k, s = spec["kernel"], spec.get("stride", 1)
        out, params = (c, (h - k) // s + 1, (w - k) // s + 1), 0
    elif spec["kind"] == "linear":
        out, params = (spec["out_features"],), spec["out_features"] * (math.prod(in_shape) + 1)
    else:
        out, params = tuple(in_shape), 0
    return out, params, 2 * math.prod(out) * 4 / 1024**2
"""
COST_NUMPY = """
def my_layer_cost(spec, in_shape):
    c, h, w = in_shape if len(in_shape) == 3 else (None, None, None)
    if spec["kind"] == "conv":
        k, s, p = spec["kernel"], spec.get("stride", 1), spec.get("padding", 0)
        out = (spec["out_channels"], np.int64((h + 2 * p - k) // s + 1), np.int64((w + 2 * p - k) // s + 1))
        params = np.prod([spec["out_channels"], c, k, k]) + spec["out_channels"]
    elif spec["kind"] == "maxpool":
        k = spec["kernel"]
        s = spec.get("stride", k)
        out, params = (c, (h - k) // s + 1, (w - k) // s + 1), np.int64(0)
    elif spec["kind"] == "linear":
        out = (spec["out_features"],)
        params = np.prod(in_shape) * spec["out_features"] + spec["out_features"]
    else:
        out, params = tuple(in_shape), 0
    return out, params, np.float32(2 * np.prod(out) * 4 / 1024**2)
"""
POSTPROCESS_EPSILON = """
def my_postprocess(raw, size):
    flat = raw.reshape(-1, 1, *raw.shape[-2:])
    maps = F.relu(F.interpolate(flat, size=size, mode="bilinear", align_corners=False)).reshape(*raw.shape[:-2], *size)
    low = maps.amin(dim=(-2, -1), keepdim=True)
    return (maps - low) / (maps.amax(dim=(-2, -1), keepdim=True) - low + 1e-3)
"""

ROUND_THREE = [
    # (id, exercise, solution cell, None for a right answer or a fragment of the cause, fragments it must not hold)
    ("overlay-no-clamp", "overlay", OVERLAY_NO_CLAMP, "one bin past the last colour", ()),
    ("cam-backward", "cam", CAM_BACKWARD, "without any backward pass", ()),
    ("cam-autograd-grad", "cam", CAM_GRAD, "without any backward pass", ()),
    ("cam-no-z-hides-the-answer", "cam", "def my_cam(net, x, c):\n    a = net.features(x).detach()\n"
     "    return F.relu((net.classifier.weight[c].detach()[:, None, None] * a).sum(dim=-3))\n",
     "a factor Z = ", ("w_k^c / Z", "w/Z")),
    ("cost-pool-default-stride", "layer_cost", POOL_STRIDE_1, "the spec gives no stride, and you used 1", ()),
    ("gradcam-calls-labutils", "gradcam", "def my_gradcam(model, x, c, layer, steps):\n"
     "    return labutils.gradcam(model, x, c, layer).maps[:, 0]\n", "build Grad-CAM from the steps", ()),
    ("gradcam-imports-labutils-gradcam", "gradcam", "def my_gradcam(model, x, c, layer, steps):\n"
     "    return gradcam(model, x, c, layer).maps[:, 0]\n", "build Grad-CAM from the steps", ()),
    ("pointing-divided-by-height", "pointing_game", "def my_pointing_game(maps, boxes, tolerance):\n"
     "    peak = maps.flatten(1).argmax(dim=1)\n    rows, cols = peak // maps.shape[-2], peak % maps.shape[-2]\n"
     "    top, left, bottom, right = boxes.unbind(1)\n"
     "    return (rows >= top - tolerance) & (rows <= bottom + tolerance) & (cols >= left - tolerance) & "
     "(cols <= right + tolerance)\n", "you divided by the height", ("minimum",)),
    ("sweep-transposed", "layer_sweep", "def my_layer_sweep(model, x, classes, layers, steps):\n"
     "    rows = []\n    for layer in layers:\n"
     "        a, b = (steps.gradcam(model, x, c, layer).flatten(1) for c in classes)\n"
     "        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)\n"
     "        rows.append((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-30))\n"
     "    return torch.stack(rows, dim=1)\n", "the dimensions are in the wrong order: (layers, images)",
     ("height and width",)),
    ("sweep-nan-for-flat", "layer_sweep", "def my_layer_sweep(model, x, classes, layers, steps):\n"
     "    rows = []\n    for layer in layers:\n"
     "        a, b = (steps.gradcam(model, x, c, layer).flatten(1) for c in classes)\n"
     "        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)\n"
     "        rows.append((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)))\n"
     "    return torch.stack(rows)\n", "the exercise asks for 0 there", ()),
    ("alpha-wrong-axes", "alpha", "def my_alpha(gradients):\n    return gradients.mean(dim=(-3, -1))\n",
     "other dimensions than the positions", ("map size",)),
    ("capture-first-image-hides-the-answer", "capture", "def my_capture(model, layer, x, c):\n"
     "    saved = {}\n    def keep(module, inputs, output):\n        saved['A'] = output\n"
     "        output.register_hook(lambda g: saved.update(dA=g))\n        return output.clone()\n"
     "    handle = dict(model.named_modules())[layer].register_forward_hook(keep)\n"
     "    try:\n        model(x)[0, c].backward()\n    finally:\n        handle.remove()\n"
     "    return saved['A'].detach(), saved['dA']\n", "only image 0 got its gradient", ("scores[:, c]", ".sum()")),
    # right answers: accepted in both
    ("alpha-float64", "alpha", "def my_alpha(gradients):\n    return gradients.double().mean(dim=(-2, -1))\n", None, ()),
    ("alpha-einsum", "alpha", "def my_alpha(gradients):\n    h, w = gradients.shape[-2:]\n"
     "    return torch.einsum('...khw->...k', gradients) / (h * w)\n", None, ()),
    ("alpha-pooling", "alpha", "def my_alpha(gradients):\n    flat = gradients.reshape(-1, *gradients.shape[-3:])\n"
     "    return F.adaptive_avg_pool2d(flat, 1).reshape(gradients.shape[:-2])\n", None, ()),
    ("combine-einsum", "combine", "def my_combine(alpha, activations):\n"
     "    return F.relu(torch.einsum('...k,...khw->...hw', alpha, activations))\n", None, ()),
    ("cost-numpy-integers", "layer_cost", COST_NUMPY, None, ()),
    ("postprocess-epsilon-1e-3", "postprocess", POSTPROCESS_EPSILON, None, ()),
    ("overlay-clamped", "overlay", "def my_overlay(image, cam_map, alpha, colors):\n"
     "    resized = F.interpolate(cam_map[None, None], size=tuple(image.shape[:2]), mode='bilinear')[0, 0]\n"
     "    bins = (resized * len(colors)).long().clamp(0, len(colors) - 1)\n"
     "    return (1 - alpha) * image + alpha * colors[bins]\n", None, ()),
    ("cam-float64-no-grad", "cam", "def my_cam(net, x, c):\n    with torch.no_grad():\n"
     "        a = net.features(x).double()\n        w = net.classifier.weight[c].double()\n"
     "    return F.relu(torch.einsum('k,nkhw->nhw', w, a) / (a.shape[-2] * a.shape[-1]))\n", None, ()),
]


def notebook_function(code: str, exercise: str):
    """The solution cell run as the notebook runs it: after the notebook's imports, in a fresh namespace."""
    namespace: dict = {}
    exec("\n".join(PRELUDE), namespace)
    exec(compile(code, "<solution cell>", "exec"), namespace)
    return namespace[checks.BY_ID[exercise].function]


@pytest.fixture(scope="module")
def graded_round_three(tmp_path_factory):
    """Every ROUND_THREE answer scored by the grader, in one scoring session: {id: Verdict}."""
    import asyncio

    from labutils.instructor import sandbox
    from labutils.instructor.scoring import ScoringPool, ScoringSetup

    every = tuple(sorted({m for e in checks.EXERCISES for m in e.modules}))
    setup = ScoringSetup(sandbox.bwrap_works(), sandbox.Limits(memory=2 * 2**30, pids=64),
                         [tmp_path_factory.mktemp("hidden")], cgroups=False, modules=every,
                         workdir=tmp_path_factory.mktemp("scoring"))

    async def score_all():
        pool = ScoringPool(setup)
        try:
            return {i: await pool.score(checks.BY_ID[e], code, PRELUDE) for i, e, code, _, _ in ROUND_THREE}
        finally:
            await pool.close()

    return asyncio.run(score_all())


@pytest.mark.parametrize("exercise, code, cause, never", [c[1:] for c in ROUND_THREE], ids=[c[0] for c in ROUND_THREE])
def test_round_three_notebook_check(exercise, code, cause, never):
    message = checks.diagnose(checks.BY_ID[exercise], notebook_function(code, exercise))
    if cause is None:
        assert message is None, message
        return
    assert message is not None, "the wrong answer passed the notebook's check"
    assert "\n" not in message and message.startswith(exercise) and cause in message, message
    assert not any(text in message for text in never), message


@pytest.mark.parametrize("case", ROUND_THREE, ids=[c[0] for c in ROUND_THREE])
def test_round_three_grader_gives_the_same_verdict(case, graded_round_three):
    name, exercise, code, cause, never = case
    verdict = graded_round_three[name]
    if cause is None:
        assert verdict.passed, verdict.message
        assert "drawn for grading" in verdict.message  # fixed and fresh cases both ran
        return
    assert not verdict.passed and cause in verdict.message, verdict.message
    assert not any(text in verdict.message for text in never), verdict.message


def test_a_passing_answers_result_reaches_later_cells_in_float32():
    """my_alpha in float64 passes; through yours_or_reference, a later cell gets float32 and can mix it with the
    model's tensors (the 'Double did not match Float' that stopped notebook 03)."""
    my_alpha = notebook_function("def my_alpha(gradients):\n    return gradients.double().mean(dim=(-2, -1))\n", "alpha")
    assert checks.check("alpha", my_alpha)
    alpha_fn, by = checks.yours_or_reference("alpha", my_alpha, None)
    gradients = torch.randn(1, 8, 5, 7)
    alpha = alpha_fn(gradients)
    assert alpha.dtype == torch.float32 and by == "your my_alpha"
    assert torch.allclose(alpha, gradients.mean(dim=(-2, -1)))  # raised RuntimeError with the float64 result
    my_cost = notebook_function(COST_NUMPY, "layer_cost")
    assert checks.check("layer_cost", my_cost)
    cost_fn, _ = checks.yours_or_reference("layer_cost", my_cost, None)
    out, params, mb = cost_fn({"kind": "linear", "out_features": 10}, (4, 2, 2))
    assert type(params) is int and params == 170 and type(mb) is float and all(type(v) is int for v in out)
