"""The exercise checks of notebooks 02-04: run the student's function, compare it with labutils.

``check_alpha(my_alpha)`` calls ``my_alpha`` on seeded inputs shaped like VGG-16's ``features.29``
(1, 512, 14, 14) and on edge cases (AlexNet's 13x13 maps, a batch of several images and classes,
negative values, a flat map), compares every result with labutils' reference and then either
prints one line, ``PASS: alpha — <what was verified>``, or raises ``ExerciseError`` with one line
that says what is wrong: the type, the shape (expected vs got), NaN, a flipped sign, a wrong scale
(e.g. summed instead of averaged over the Z positions), a missing ReLU, a known mistake, or the
first wrong element (index, expected, got).

The checks and their references:

- ``save_gradient``  forward hook + gradient hook: ``hooks.capture`` and ``torch.autograd.grad``
- ``alpha``          equation (1): ``gradcam.alpha_weights``
- ``combine``        equation (2) with its ReLU: ``gradcam.combine``
- ``postprocess``    section 5.5, upsample + ReLU + normalize: ``gradcam.postprocess``
- ``guided_relu``    the guided ReLU backward rule: ``guided.guided_relus`` on a real ``nn.ReLU``
- ``counterfactual`` the negated weights -alpha_k^c, as ``gradcam(..., counterfactual=True)`` uses
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .gradcam import alpha_weights, combine, normalize, postprocess, upsample
from .guided import guided_relus
from .hooks import capture

Mistake = tuple[Callable[[], torch.Tensor], str]  # (the result of a known mistake, what to tell the student)


class ExerciseError(AssertionError):
    """A check that failed: the message says, in one line, what is wrong with the student's function."""

    def _render_traceback_(self) -> list[str]:
        """What IPython/Jupyter shows instead of a traceback: one line."""
        return [f"FAIL: {self}"]


# ---------------------------------------------------------------- running the student's function


@contextmanager
def _one_thread() -> Iterator[None]:
    """The checks' tensors are small: one CPU thread is faster than several, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check(function: Callable[[Callable], None]) -> Callable[[Callable], None]:
    """Run a check on one CPU thread (restored afterwards)."""

    @functools.wraps(function)
    def run(fn: Callable) -> None:
        with _one_thread():
            function(fn)

    return run


def _name(fn: object) -> str:
    return getattr(fn, "__name__", "your function")


def _where(fn: Callable, err: BaseException) -> str:
    """' (line 4: return ...)': the last line of the student's own code the error went through."""
    code = getattr(fn, "__code__", None)
    frames = [f for f in traceback.extract_tb(err.__traceback__) if code and f.filename == code.co_filename]
    if not frames:
        return ""
    frame = frames[-1]
    return f" (line {frame.lineno - code.co_firstlineno + 1} of {_name(fn)}: {(frame.line or '').strip()})"


def _call(exercise: str, case: str, fn: Callable, *args: object) -> object:
    """``fn(*args)`` on copies of the tensors; any failure becomes one ExerciseError line."""
    if not callable(fn):
        raise ExerciseError(f"{exercise}: pass the function itself, e.g. check_{exercise}(my_function), "
                            f"not {type(fn).__name__}")
    copies = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    try:
        result = fn(*copies)
    except NotImplementedError:
        raise ExerciseError(f"{exercise}: not implemented yet — write {_name(fn)} above") from None
    except Exception as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ExerciseError(
            f"{exercise}, on {case}: {_name(fn)} raised {type(err).__name__}: {message}{_where(fn, err)}"
        ) from err
    for i, (arg, copy) in enumerate(zip(args, copies)):
        if isinstance(arg, torch.Tensor) and not torch.equal(arg, copy.detach()):
            raise ExerciseError(
                f"{exercise}, on {case}: {_name(fn)} changed its input number {i + 1} in place (an inplace "
                f"operation such as relu_, clamp_ or x[...] = ...): compute the result in a new tensor"
            )
    return result


# ---------------------------------------------------------------- the shared diagnosis


def _close(got: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """Elementwise: equal up to float32 rounding (relative to the size of the expected values)."""
    atol = 1e-5 * max(float(expected.abs().max()) if expected.numel() else 0.0, 1e-3)
    return torch.isclose(got, expected, rtol=1e-4, atol=atol)


def _index(flat_index: int, shape: torch.Size) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat_index), shape))


def _compare(
    exercise: str,
    case: str,
    what: str,
    got: object,
    expected: torch.Tensor,
    *,
    mistakes: Sequence[Mistake] = (),
    scales: Mapping[float, str] | None = None,
    nonnegative: bool = False,
    nan_hint: str = "",
) -> None:
    """Raise ExerciseError saying how ``got`` differs from ``expected``; return if they match.

    In order: type, dtype, shape, NaN/inf, match, the known ``mistakes`` of this exercise (each a
    function computing the wrong result and the sentence to show), sign flipped, wrong scale (named
    when the constant is in ``scales``), negative values where a ReLU should have removed them, and
    finally the first wrong element.
    """
    where = f"{exercise}, on {case}"
    if not isinstance(got, torch.Tensor):
        raise ExerciseError(f"{where}: wrong type: {what} should be a torch.Tensor, got {type(got).__name__}")
    if not got.is_floating_point():
        raise ExerciseError(f"{where}: wrong dtype: {what} should be a float tensor, got {got.dtype}")
    if got.shape != expected.shape:
        hint = ""
        if [s for s in got.shape if s != 1] == [s for s in expected.shape if s != 1]:
            hint = " (extra or missing dimensions of size 1: check keepdim / squeeze)"
        elif got.numel() == expected.numel():
            hint = " (the same values in another layout: check which dimensions you kept)"
        raise ExerciseError(
            f"{where}: wrong shape: {what} should be {tuple(expected.shape)}, got {tuple(got.shape)}{hint}"
        )
    got = got.detach().cpu().double()
    expected = expected.detach().cpu().double()
    bad = ~torch.isfinite(got)
    if bad.any():
        first = _index(int(bad.flatten().nonzero()[0]), got.shape)
        kind = "NaN" if got.isnan().any() else "inf"
        raise ExerciseError(
            f"{where}: {what} contains {kind} ({int(bad.sum())} of {got.numel()} values, the first at index "
            f"{first}){' — ' + nan_hint if nan_hint else ''}"
        )
    if _close(got, expected).all():
        return
    for wrong, message in mistakes:
        alternative = wrong().detach().cpu().double()
        if alternative.shape == got.shape and _close(got, alternative).all():
            raise ExerciseError(f"{where}: {message}")
    size = float((expected * expected).sum())
    if size > 0:
        if _close(got, -expected).all():
            raise ExerciseError(f"{where}: sign flipped: your {what} is -1 × the reference")
        scale = float((got * expected).sum()) / size
        if _close(got, scale * expected).all():
            named = [text for constant, text in (scales or {}).items() if abs(scale / constant - 1) < 1e-3]
            raise ExerciseError(
                f"{where}: wrong scale: your {what} is {scale:.4g} × the reference"
                + (f" — {named[0]}" if named else "")
            )
    if nonnegative and (got < 0).any():
        negative = got < 0
        first = _index(int(negative.flatten().nonzero()[0]), got.shape)
        raise ExerciseError(
            f"{where}: ReLU missing: {int(negative.sum())} values of {what} are negative (the first at index "
            f"{first}: {float(got[first]):.4g}); {what} keeps only positive values"
        )
    wrong = ~_close(got, expected)
    first = _index(int(wrong.flatten().nonzero()[0]), got.shape)
    raise ExerciseError(
        f"{where}: {int(wrong.sum())} of {got.numel()} values of {what} are wrong; the first at index {first}: "
        f"expected {float(expected[first]):.6g}, got {float(got[first]):.6g}"
    )


def _passed(exercise: str, what: str) -> None:
    print(f"PASS: {exercise} — {what}")


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- save_gradient (notebook 02)


class _TinyVGG(nn.Module):
    """A VGG in miniature for the save_gradient check: conv / inplace-ReLU blocks and max pooling in
    ``features``, then a classifier, with torchvision's layer names (``features.8`` is a conv,
    ``features.9`` the last ReLU). Seeded: every instance has the same weights."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.features = nn.Sequential(
                nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(inplace=True),
            )  # fmt: skip
            self.avgpool = nn.AdaptiveAvgPool2d(4)
            self.classifier = nn.Sequential(
                nn.Linear(32 * 4 * 4, 64), nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(64, 20)
            )
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _hooks_left(model: nn.Module) -> list[str]:
    """'features.9: 1 forward hook(s)' for every kind of hook still registered on a module of the model."""
    left = [
        f"{name or 'the model'}: {len(getattr(m, d))} {d.strip('_').replace('_', ' ')[:-1]}(s)"
        for name, m in model.named_modules()
        for d in _HOOK_DICTS
        if getattr(m, d, None)
    ]
    for d in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks"):
        if getattr(nn.modules.module, d, None):
            left.append(f"a global {d.strip('_').replace('_', ' ')[7:-1]}")
    return left


def _layer_gradient(
    model: nn.Module, layer: str, x: torch.Tensor, score: Callable
) -> tuple[torch.Tensor, torch.Tensor]:
    """A^k (labutils' capture) and d score / dA^k by torch.autograd.grad."""
    with capture(model, layer) as seen:
        scores = model(x)
        (gradients,) = torch.autograd.grad(score(scores), seen.activations)
    return seen.activations.detach(), gradients


@_check
def check_save_gradient(fn: Callable) -> None:
    """``fn(model, layer, x, c) -> (activations, gradients)``: A^k of ``layer`` and dy^c/dA^k, hooks removed.

    Runs on a small seeded VGG-like network with inplace ReLUs: 1 and 2 images, the last ReLU and a
    conv layer followed by an inplace ReLU; A^k must equal labutils' capture, the gradients
    torch.autograd.grad of y^c (summed over the batch), and no hook may remain on the model.
    """
    exercise = "save_gradient"
    cases = [
        ("1 image, layer features.9 (the last ReLU), class 7", 1, "features.9", 7),
        ("2 images, layer features.9, class 3", 2, "features.9", 3),
        ("1 image, layer features.8 (a conv followed by an inplace ReLU), class 11", 1, "features.8", 11),
    ]
    for seed, (case, n, layer, c) in enumerate(cases):
        model = _TinyVGG()
        x = _randn(n, 3, 64, 64, seed=seed)
        result = _call(exercise, case, fn, model, layer, x, c)
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise ExerciseError(
                f"{exercise}, on {case}: wrong type: return a pair (activations, gradients), got "
                f"{type(result).__name__}{'' if not isinstance(result, (tuple, list)) else f' of {len(result)}'}"
            )
        got_a, got_g = result
        left = _hooks_left(model)
        reference = _TinyVGG()
        a, g = _layer_gradient(reference, layer, x, lambda s: s[:, c].sum())
        if got_g is None:
            raise ExerciseError(
                f"{exercise}, on {case}: gradients is None: the gradient hook never ran — register save_gradient "
                f"on the layer's output inside the forward hook, then call backward() on y^c"
            )
        if isinstance(got_a, torch.Tensor) and isinstance(got_g, torch.Tensor):
            if got_a.shape == g.shape and _close(got_a.detach().double(), g.double()).all() and not torch.equal(a, g):
                raise ExerciseError(f"{exercise}, on {case}: activations and gradients are swapped: "
                                    f"return (activations, gradients)")
        _compare(
            exercise, case, "A^k", got_a, a,
            mistakes=[(lambda: F.relu(a), f"A^k of the conv layer {layer} was overwritten by the inplace ReLU "
                       f"that follows it: return output.clone() from your forward hook (see above)")],
        )  # fmt: skip
        _compare(
            exercise, case, "dy^c/dA^k", got_g, g,
            mistakes=[
                (lambda: _layer_gradient(_TinyVGG(), layer, x, lambda s: s[0, c])[1],
                 "only image 0 got its gradient: backpropagate y^c of every image, scores[:, c].sum()"),
                (lambda: _layer_gradient(_TinyVGG(), layer, x, lambda s: s.sum())[1],
                 "you backpropagated the sum of all class scores: backpropagate y^c only, scores[:, c].sum()"),
                (lambda: _layer_gradient(_TinyVGG(), layer, x, lambda s: s.softmax(1)[:, c].sum())[1],
                 "you backpropagated the softmax probability: Grad-CAM uses the score y^c (before the softmax)"),
                (lambda: _layer_gradient(_TinyVGG(), layer, x, lambda s: s.max(1).values.sum())[1],
                 f"you backpropagated the top-1 class's score: backpropagate class c = {c}, scores[:, c]"),
            ],
        )  # fmt: skip
        if left:
            raise ExerciseError(
                f"{exercise}, on {case}: a hook is still on the model after {_name(fn)} returned "
                f"({'; '.join(left)}): keep each handle and call handle.remove(), in a finally: block"
            )
    _passed(
        exercise,
        "A^k matches labutils' capture and dy^c/dA^k matches torch.autograd.grad (1 and 2 images, a ReLU and a "
        "conv layer followed by an inplace ReLU); no hook left on the model",
    )


# ---------------------------------------------------------------- alpha and counterfactual (notebooks 03, 04)


def _gradient_cases() -> list[tuple[str, torch.Tensor]]:
    """dy^c/dA^k as the target layers give them, plus a batch of several images and classes."""
    return [
        ("gradients (1, 512, 14, 14) like VGG-16's features.29", _randn(1, 512, 14, 14, seed=1) * 1e-3),
        ("gradients (1, 256, 13, 13) like AlexNet's features.11", _randn(1, 256, 13, 13, seed=2) * 1e-3),
        ("a batch of 2 images × 3 classes, gradients (2, 3, 512, 14, 14)", _randn(2, 3, 512, 14, 14, seed=3)),
        ("only negative gradients (1, 512, 14, 14)", -_randn(1, 512, 14, 14, seed=4).abs()),
    ]


def _spatial_scales(g: torch.Tensor) -> dict[float, str]:
    h, w = g.shape[-2:]
    return {
        float(h * w): f"summed instead of averaged over the Z = h·w = {h * w} positions: divide by Z (or use mean)",
        float(h): f"averaged over one spatial axis and summed over the other: average over both (Z = {h * w})",
        float(w): f"averaged over one spatial axis and summed over the other: average over both (Z = {h * w})",
    }


@_check
def check_alpha(fn: Callable) -> None:
    """``fn(gradients) -> alpha``: equation (1), dy^c/dA^k (…, K, h, w) averaged over Z = h·w positions -> (…, K)."""
    exercise = "alpha"
    for case, g in _gradient_cases():
        got = _call(exercise, case, fn, g)
        _compare(
            exercise, case, "alpha", got, alpha_weights(g), scales=_spatial_scales(g),
            mistakes=[
                (lambda: -alpha_weights(g), "sign flipped: your alpha is -1 × the reference (those are the "
                 "counterfactual weights; equation (1) has no minus sign)"),
                (lambda: g.abs().mean(dim=(-2, -1)), "you averaged |dy^c/dA^k|: keep the sign of the gradients"),
                (lambda: F.relu(g).mean(dim=(-2, -1)), "you dropped the negative gradients: average all of them"),
                (lambda: g.amax(dim=(-2, -1)), "you took the maximum over the positions: equation (1) averages them"),
            ],
        )  # fmt: skip
    _passed(
        exercise,
        "alpha_k^c matches labutils.gradcam.alpha_weights (equation 1) on VGG-16 and AlexNet shapes, a batch of "
        "2 images × 3 classes and negative gradients",
    )


@_check
def check_counterfactual(fn: Callable) -> None:
    """``fn(gradients) -> weights``: the seed's counterfactual weights, -alpha_k^c, (…, K, h, w) -> (…, K)."""
    exercise = "counterfactual"
    for case, g in _gradient_cases():
        got = _call(exercise, case, fn, g)
        _compare(
            exercise, case, "the counterfactual weights", got, -alpha_weights(g), scales=_spatial_scales(g),
            mistakes=[
                (lambda: alpha_weights(g), "these are the Grad-CAM weights alpha_k^c: the counterfactual weights "
                 "are their negatives, -alpha_k^c"),
                (lambda: F.relu(-alpha_weights(g)), "you clipped the weights with a ReLU: keep every weight; the "
                 "ReLU comes after the weighted sum"),
                (lambda: -g.abs().mean(dim=(-2, -1)), "you averaged |dy^c/dA^k|: keep the sign of the gradients"),
            ],
        )  # fmt: skip
    _passed(
        exercise,
        "the weights equal -alpha_k^c, as labutils.gradcam.gradcam(..., counterfactual=True) uses them, on "
        "VGG-16 and AlexNet shapes, a batch of 2 images × 3 classes and negative gradients",
    )


# ---------------------------------------------------------------- combine (notebook 03)


@_check
def check_combine(fn: Callable) -> None:
    """``fn(alpha, activations) -> L``: equation (2), ReLU(sum_k alpha_k^c A^k); (…, K), (…, K, h, w) -> (…, h, w)."""
    exercise = "combine"
    relu_maps = _randn(2, 512, 14, 14, seed=6).clamp(min=0)  # features.29 is a ReLU: A^k >= 0
    cases = [
        ("alpha (1, 512) and A^k (1, 512, 14, 14) like VGG-16's features.29",
         _randn(1, 512, seed=5) * 1e-2, relu_maps[:1]),
        ("a batch of 2 images × 3 classes, alpha (2, 3, 512) and A^k (2, 3, 512, 14, 14)",
         _randn(2, 3, 512, seed=7), relu_maps[:, None].expand(2, 3, 512, 14, 14)),
        ("negative activations (a conv layer's output), alpha (1, 256) and A^k (1, 256, 13, 13)",
         _randn(1, 256, seed=8), _randn(1, 256, 13, 13, seed=9)),
        ("all-zero weights (a flat map), alpha (1, 512) and A^k (1, 512, 14, 14)",
         torch.zeros(1, 512), relu_maps[:1]),
    ]  # fmt: skip
    for case, alpha, a in cases:
        got = _call(exercise, case, fn, alpha, a)
        weighted = alpha[..., None, None] * a
        k = a.shape[-3]
        _compare(
            exercise, case, "L^c", got, combine(alpha, a), nonnegative=True,
            scales={1 / k: f"averaged over the K = {k} feature maps instead of summed: equation (2) is a sum over k"},
            mistakes=[
                (lambda: weighted.sum(dim=-3), "ReLU missing: L^c = ReLU(sum_k alpha_k^c A^k) keeps only the "
                 "positive values"),
                (lambda: F.relu(-weighted.sum(dim=-3)), "sign flipped: you used -alpha_k^c (the counterfactual "
                 "weights); equation (2) uses alpha_k^c"),
                (lambda: F.relu(weighted).sum(dim=-3), "you applied the ReLU to each alpha_k^c A^k before summing: "
                 "apply it once, to the sum over k"),
                (lambda: (F.relu(alpha)[..., None, None] * a).sum(dim=-3), "you dropped the negative weights "
                 "alpha_k^c: keep all of them; the ReLU comes after the sum"),
                (lambda: normalize(combine(alpha, a)), "you normalized L^c: return it as it is; normalizing is "
                 "post-processing (section 5.5, the next exercise)"),
            ],
        )  # fmt: skip
    _passed(
        exercise,
        "L^c = ReLU(sum_k alpha_k^c A^k) matches labutils.gradcam.combine (equation 2) on VGG-16 and AlexNet "
        "shapes, a batch of 2 images × 3 classes, negative activations and a flat map",
    )


# ---------------------------------------------------------------- postprocess (notebook 03)


@_check
def check_postprocess(fn: Callable) -> None:
    """``fn(raw, size) -> maps``: section 5.5, bilinear upsampling to ``size``, ReLU, normalization to [0, 1]."""
    exercise = "postprocess"
    cases = [
        ("L^c (1, 14, 14) like VGG-16's, to (224, 224)", _randn(1, 14, 14, seed=10).clamp(min=0), (224, 224)),
        ("a weighted sum with negative values (1, 14, 14), to (224, 224)", _randn(1, 14, 14, seed=11), (224, 224)),
        ("a positive map (1, 14, 14) whose minimum is not 0, to (224, 224)",
         _randn(1, 14, 14, seed=12).abs() + 1, (224, 224)),
        ("a batch of 2 images × 3 classes (2, 3, 14, 14), to (224, 224)",
         _randn(2, 3, 14, 14, seed=13) * torch.tensor([1.0, 10.0, 0.1])[None, :, None, None], (224, 224)),
        ("AlexNet's 13 × 13 map (1, 13, 13), to a non-square size (200, 300)", _randn(1, 13, 13, seed=14), (200, 300)),
        ("a flat map (1, 14, 14), all 0.7", torch.full((1, 14, 14), 0.7), (224, 224)),
        ("a map with only negative values (1, 14, 14)", -_randn(1, 14, 14, seed=15).abs() - 0.1, (224, 224)),
    ]  # fmt: skip
    for case, raw, size in cases:
        got = _call(exercise, case, fn, raw, size)
        up = upsample(raw, size)

        def resized(mode: str, **options: bool) -> torch.Tensor:
            flat = raw.reshape(-1, 1, *raw.shape[-2:])
            return F.interpolate(flat, size=size, mode=mode, **options).reshape(*raw.shape[:-2], *size)

        _compare(
            exercise, case, "the map", got, postprocess(raw, size), nonnegative=True,
            nan_hint="a flat map (max = min) must become all zeros, not 0/0",
            mistakes=[] if raw.amax() <= raw.amin() or raw.amax() <= 0 else [  # flat: only one right answer, 0
                (lambda: normalize(up), "ReLU missing: negative values were kept and normalized; section 5.5 "
                 "applies a ReLU after upsampling"),
                (lambda: normalize(upsample(F.relu(raw), size)), "ReLU applied before upsampling: section 5.5 "
                 "upsamples first, then applies the ReLU"),
                (lambda: F.relu(up), "not normalized: scale each map to [0, 1], (L - min) / (max - min)"),
                (lambda: F.relu(up) / F.relu(up).amax(dim=(-2, -1), keepdim=True),
                 "you divided by the maximum without subtracting the minimum: (L - min) / (max - min)"),
                (lambda: (F.relu(up) - F.relu(up).min()) / (F.relu(up).max() - F.relu(up).min()),
                 "you normalized the whole batch at once: normalize each map on its own (min and max over its last "
                 "two dimensions)"),
                (lambda: normalize(F.relu(resized("bilinear", align_corners=True))),
                 "bilinear with align_corners=True: use F.interpolate(..., mode='bilinear', align_corners=False)"),
                (lambda: normalize(F.relu(resized("nearest"))), "nearest-neighbour upsampling: use mode='bilinear'"),
                (lambda: normalize(F.relu(resized("bicubic", align_corners=False))), "bicubic upsampling: use "
                 "mode='bilinear'"),
            ],
        )  # fmt: skip
    _passed(
        exercise,
        "upsample (bilinear) + ReLU + normalize matches labutils.gradcam.postprocess (section 5.5) on VGG-16 and "
        "AlexNet maps, a batch of 2 images × 3 classes, a non-square size, a flat map and an all-negative map",
    )


# ---------------------------------------------------------------- guided_relu (notebook 04)


def _guided_reference(relu_input: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """The gradient a real ``nn.ReLU`` passes back under labutils' guided rule (``guided.guided_relus``)."""
    relu = nn.ReLU()
    x = relu_input.clone().requires_grad_(True)
    with guided_relus(relu), torch.enable_grad():
        (grad_in,) = torch.autograd.grad(relu(x), x, grad_out)
    return grad_in


@_check
def check_guided_relu(fn: Callable) -> None:
    """``fn(relu_input, grad_out) -> grad_in``: the guided ReLU rule, a gradient passes where input > 0 and grad > 0."""
    exercise = "guided_relu"
    some_zeros = _randn(2, 64, 28, 28, seed=18) * (_randn(2, 64, 28, 28, seed=19) > 0)
    cases = [
        ("ReLU input and gradient (1, 512, 14, 14) like VGG-16's features.29",
         _randn(1, 512, 14, 14, seed=16), _randn(1, 512, 14, 14, seed=17) * 1e-3),
        ("a batch of 2 images (2, 64, 28, 28) with inputs and gradients exactly 0",
         some_zeros, _randn(2, 64, 28, 28, seed=20) * (_randn(2, 64, 28, 28, seed=22) > 0)),
        ("ReLU input exactly 0 everywhere (2, 8, 5, 5)", torch.zeros(2, 8, 5, 5), _randn(2, 8, 5, 5, seed=21)),
    ]  # fmt: skip
    for case, x, grad_out in cases:
        got = _call(exercise, case, fn, x, grad_out)
        _compare(
            exercise, case, "grad_in", got, _guided_reference(x, grad_out),
            mistakes=[
                (lambda: grad_out * (x > 0), "plain ReLU backward: negative gradients still pass; the guided rule "
                 "also sets gradients < 0 to 0"),
                (lambda: grad_out.clamp(min=0), "deconvnet rule: you ignored the ReLU input; the guided rule also "
                 "sets the gradient to 0 where the input was <= 0"),
                (lambda: grad_out.clamp(min=0) * (x >= 0), "the gradient passes where the input is exactly 0: use "
                 "input > 0, as PyTorch's ReLU backward does"),
                (lambda: grad_out.clamp(min=0) * F.relu(x), "you multiplied by the input's value: the rule uses only "
                 "its sign, a 0/1 mask (input > 0)"),
                (lambda: (grad_out * (x > 0)).clamp(max=0), "you kept the negative gradients instead of the "
                 "positive ones: the guided rule keeps gradients > 0"),
            ],
        )  # fmt: skip
    _passed(
        exercise,
        "grad_in matches an nn.ReLU under labutils.guided.guided_relus (gradient passes where input > 0 and "
        "gradient > 0), zeros included",
    )
