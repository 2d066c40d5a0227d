"""What every check shares: comparing a result with the reference, and the causes it can name.

Every function here returns ``None`` (right) or one line saying what is wrong; nothing raises.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Optional

import torch

from ..exercise import FORBIDDEN, Case, Outcome

Mistake = tuple[Callable[[], torch.Tensor], str]  # (the result of a known mistake, what to tell the student)
Specific = Callable[[Case, object], Optional[str]]  # an exercise's own diagnosis of a result


def diagnosis(function: str, specific: Specific, *, hooks_matter: bool = False, forbidden: str = "",
              errors: Mapping[str, str] | None = None) -> Callable[[Case, Outcome], Optional[str]]:
    """An exercise's ``diagnose``: what the call itself did wrong first (called what the exercise forbids,
    raised, changed its inputs, left hooks), then the exercise's own comparison of the result with the reference.

    ``forbidden``: why the exercise forbids what its ``Exercise.forbidden`` names (the rest of the sentence after
    "my_x called labutils.gradcam.gradcam: "). ``errors``: a fragment of an error message -> the likely cause,
    added to the message of an error that contains it."""

    def diagnose(case: Case, outcome: Outcome) -> Optional[str]:
        if outcome.error == "NotImplementedError":
            return f"not implemented yet — write {function} above"
        if outcome.error and outcome.error.startswith(FORBIDDEN):
            return f"{function} called {outcome.error[len(FORBIDDEN):]}: {forbidden or 'this exercise forbids it'}"
        if outcome.error:
            hint = next((text for fragment, text in (errors or {}).items() if fragment in outcome.error), "")
            return f"{function} raised {outcome.error}" + (f" — {hint}" if hint else "")
        if outcome.changed_inputs:
            i = outcome.changed_inputs[0]
            return (f"{function} changed its input number {i + 1} in place (an inplace operation such as relu_, "
                    f"clamp_ or x[...] = ...): compute the result in a new tensor")
        try:
            cause = specific(case, outcome.result)
        except Exception as err:  # a result too odd to compare (e.g. strings in a shape): wrong, say what it was
            return f"{function} returned something that cannot be compared with the reference " \
                   f"({type(outcome.result).__name__}; {type(err).__name__}: {err})"  # fmt: skip
        if cause is None and outcome.hooks_left and hooks_matter:
            return (f"a hook is still on the model after {function} returned ({'; '.join(outcome.hooks_left)}): "
                    f"keep each handle and call handle.remove(), in a finally: block")
        return cause

    return diagnose


def pick(g: Optional[torch.Generator], fixed: int, low: int, high: int) -> int:
    """``fixed`` for the cases the notebook shows; a fresh integer in [low, high) for the grader's cases."""
    return fixed if g is None else int(torch.randint(low, high, (1,), generator=g))


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def close(got: torch.Tensor, expected: torch.Tensor, atol: float | None = None) -> torch.Tensor:
    """Elementwise: equal up to float32 rounding (relative to the size of the expected values)."""
    if atol is None:
        atol = 1e-5 * max(float(expected.abs().max()) if expected.numel() else 0.0, 1e-3)
    return torch.isclose(got, expected, rtol=1e-4, atol=atol)


def index(flat_index: int, shape: torch.Size) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat_index), shape))


def shape_hint(got: torch.Size, expected: torch.Size, axes: Sequence[str] | None = None) -> str:
    """Why a shape may be wrong. ``axes`` names the expected dimensions when they are not (…, height, width)."""
    if axes is not None:
        names = f"({', '.join(axes)})"
        if sorted(got) == sorted(expected) and len(set(expected)) == len(expected):
            return f" (the dimensions are in the wrong order: {names})"
        return f" (the dimensions are {names})"
    if len(got) == len(expected) >= 2 and got[:-2] == expected[:-2] and (got[-2], got[-1]) == (expected[-1], expected[-2]):
        return " (height and width swapped: sizes are (height, width), x.shape[-2:])"
    if [s for s in got if s != 1] == [s for s in expected if s != 1]:
        return " (extra or missing dimensions of size 1: check keepdim / squeeze)"
    if got.numel() == expected.numel():
        return " (the same number of values in another layout: check which dimensions you kept)"
    if len(got) == len(expected) and got[:-2] == expected[:-2]:
        return " (the leading dimensions are right, the map size is not)"
    return ""


def compare(
    what: str,
    got: object,
    expected: torch.Tensor,
    *,
    mistakes: Sequence[Mistake] = (),
    scales: Mapping[float, str] | None = None,
    nonnegative: bool = False,
    nan_hint: str = "",
    atol: float | None = None,
    axes: Sequence[str] | None = None,
) -> Optional[str]:
    """How ``got`` differs from ``expected``, in one line; None when they match.

    In order: type, dtype, shape, NaN/inf, match, the known ``mistakes`` of this exercise (each a
    function computing the wrong result and the sentence to show), sign flipped, wrong scale (named
    when the constant is in ``scales``), negative values where a ReLU should have removed them, and
    finally the first wrong element. ``what`` is a noun phrase: "alpha", "the map". ``axes`` names the
    dimensions of a result that is not a map, e.g. ("layers", "images"), for the message of a wrong shape.
    """
    if type(got) is not torch.Tensor:
        return f"wrong type: {what} should be a torch.Tensor, got {type(got).__name__}"
    if not got.is_floating_point():
        return f"wrong dtype: {what} should be a float tensor, got {got.dtype}"
    if got.shape != expected.shape:
        for wrong, message in mistakes:
            alternative = wrong().detach()
            if alternative.shape == got.shape and close(got.detach().double(), alternative.double(), atol).all():
                return message
        return (f"wrong shape: {what} should be {tuple(expected.shape)}, got {tuple(got.shape)}"
                f"{shape_hint(got.shape, expected.shape, axes)}")
    got = got.detach().cpu().double()
    expected = expected.detach().cpu().double()
    bad = ~torch.isfinite(got)
    if bad.any():
        first = index(int(bad.flatten().nonzero()[0]), got.shape)
        kind = "NaN" if got.isnan().any() else "inf"
        return (f"{what} contains {kind} ({int(bad.sum())} of {got.numel()} values, the first at index {first})"
                f"{' — ' + nan_hint if nan_hint else ''}")
    if close(got, expected, atol).all():
        return None
    for wrong, message in mistakes:
        alternative = wrong().detach().cpu().double()
        if alternative.shape == got.shape and close(got, alternative, atol).all():
            return message
    size = float((expected * expected).sum())
    if size > 0:
        if close(got, -expected, atol).all():
            return f"sign flipped: {what} is -1 × the reference"
        scale = float((got * expected).sum()) / size
        if close(got, scale * expected, atol).all():
            named = [text for constant, text in (scales or {}).items() if abs(scale / constant - 1) < 1e-3]
            return f"wrong scale: {what} is {scale:.4g} × the reference" + (f" — {named[0]}" if named else "")
    if nonnegative and (got < 0).any():
        negative = got < 0
        first = index(int(negative.flatten().nonzero()[0]), got.shape)
        return (f"ReLU missing: {int(negative.sum())} values of {what} are negative (the first at index {first}: "
                f"{float(got[first]):.4g}); {what} keeps only values >= 0")
    wrong = ~close(got, expected, atol)
    first = index(int(wrong.flatten().nonzero()[0]), got.shape)
    return (f"{int(wrong.sum())} of {got.numel()} values of {what} are wrong; the first at index {first}: "
            f"expected {float(expected[first]):.6g}, got {float(got[first]):.6g}")
