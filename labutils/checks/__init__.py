"""The lab's graded exercises and their in-notebook checks.

``EXERCISES`` is the registry the grader reads (``labutils.exercise.Exercise``: the function the
student writes, its cases, its diagnosis). In a notebook, ``check_alpha(my_alpha)`` runs the
exercise's fixed cases through ``labutils.exercise.call`` and the same diagnosis, then prints one
line: ``PASS: alpha — <what was verified>`` or ``FAIL: alpha, on <case>: <the cause>``.

A failing check does not stop the notebook: "Run All" goes on, and the later cells use labutils'
reference where they needed your function (``yours_or_reference``); a passing function's results reach them in
float32 (``as_the_lab_uses_it``), whatever dtype it computed in. It raises ``ExerciseError``
instead when the checks must count as failed cells:

- under nbgrader's autograder or validator (``NBGRADER_EXECUTION`` is ``autograde`` or ``validate``),
- when ``LABUTILS_CHECKS=raise`` is set (``LABUTILS_CHECKS=print`` forces the default).

The exercises, one module per notebook:

- ``architectures`` (01)  ``layer_cost``: a row of Tables 1 and 2 by hand
- ``hooks`` (02)          ``capture``: A^k and dy^c/dA^k with a forward and a gradient hook
- ``gradcam_math`` (03)   ``alpha`` (1), ``combine`` (2), ``postprocess`` (5.5), ``gradcam`` (the
                          pipeline), ``layer_sweep``, ``cam`` (Grad-CAM = CAM with global average pooling)
- ``guided`` (04)         ``guided_relu``, ``guided_gradcam``, ``counterfactual``, ``overlay`` (5.6)
- ``trust`` (06)          ``pointing_game``
"""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import torch

from ..exercise import Exercise, call, python_scalars
from . import architectures, gradcam_math, guided, hooks, trust

EXERCISES: list[Exercise] = [
    architectures.LAYER_COST,
    hooks.CAPTURE,
    gradcam_math.ALPHA,
    gradcam_math.COMBINE,
    gradcam_math.POSTPROCESS,
    gradcam_math.GRADCAM,
    gradcam_math.LAYER_SWEEP,
    gradcam_math.CAM,
    guided.GUIDED_RELU,
    guided.GUIDED_GRADCAM,
    guided.COUNTERFACTUAL,
    guided.OVERLAY,
    trust.POINTING_GAME,
]
VERIFIED = {**architectures.VERIFIED, **hooks.VERIFIED, **gradcam_math.VERIFIED, **guided.VERIFIED, **trust.VERIFIED}
BY_ID = {e.grade_id: e for e in EXERCISES}
_passed: dict[str, Callable] = {}  # grade_id -> the function whose check last passed (what you asked to check)


class ExerciseError(AssertionError):
    """A check that failed (raised only in raise mode): the message says, in one line, what is wrong."""

    def _render_traceback_(self) -> list[str]:
        """What IPython/Jupyter shows instead of a traceback: one line."""
        return [f"FAIL: {self}"]


def raise_mode() -> bool:
    """True under nbgrader's autograder / validator, or with LABUTILS_CHECKS=raise."""
    setting = os.environ.get("LABUTILS_CHECKS", "").strip().lower()
    if setting in ("raise", "print"):
        return setting == "raise"
    return os.environ.get("NBGRADER_EXECUTION", "").strip().lower() in ("autograde", "validate")


@contextmanager
def _one_thread() -> Iterator[None]:
    """The checks' tensors are small: one CPU thread is faster than several, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def diagnose(exercise: Exercise, fn: Callable) -> Optional[str]:
    """The first failure of ``fn`` on the exercise's fixed cases, as 'alpha, on <case>: <cause>'; None if all pass."""
    if not callable(fn):
        return f"{exercise.grade_id}: pass the function itself, e.g. check_{exercise.grade_id}({exercise.function}), " \
               f"not {type(fn).__name__}"  # fmt: skip
    with _one_thread():
        for case in exercise.cases(None):
            cause = exercise.diagnose(case, call(fn, case, exercise.forbidden))
            if cause and cause.startswith("not implemented yet"):
                return f"{exercise.grade_id}: {cause}"
            if cause:
                return f"{exercise.grade_id}, on {case.name}: {cause}"
    return None


def check(grade_id: str, fn: Callable) -> bool:
    """Run one exercise's check on ``fn``: print PASS or FAIL (or raise in raise mode); True if it passed."""
    exercise = BY_ID[grade_id]
    _passed.pop(grade_id, None)
    failure = diagnose(exercise, fn)
    if failure:
        if raise_mode():
            raise ExerciseError(failure)
        print(f"FAIL: {failure}")
        return False
    _passed[grade_id] = fn
    print(f"PASS: {grade_id} — {VERIFIED[grade_id]}")
    return True


def passed(grade_id: str, fn: Callable) -> bool:
    """Whether ``fn`` is the function whose check ``grade_id`` passed last in this kernel."""
    return _passed.get(grade_id) is fn


def as_the_lab_uses_it(value: Any) -> Any:
    """A passing answer's result in the form the later cells use: float tensors detached and in float32 (a right
    answer may compute in float64, or keep the autograd graph), numpy scalars as Python numbers; inside tuples and
    lists too. The values are unchanged, up to float32 rounding."""
    value = python_scalars(value)
    if type(value) is torch.Tensor:
        value = value.detach()
        return value.float() if value.is_floating_point() and value.dtype != torch.float32 else value
    if type(value) in (tuple, list):
        return type(value)(as_the_lab_uses_it(v) for v in value)
    return value


def yours_or_reference(grade_id: str, fn: Callable, reference: Callable) -> tuple[Callable, str]:
    """``(your function, "your my_alpha")`` if ``fn`` passed its check, else ``(reference, "labutils' reference
    ...")``: what later cells use, and the words that say which implementation drew a figure.

    Your function comes back wrapped: what it returns goes through ``as_the_lab_uses_it`` (float32, detached,
    Python numbers), so a right answer that computes in float64 or returns numpy integers never stops a later cell.
    """
    if passed(grade_id, fn):

        @functools.wraps(fn)
        def yours(*args: Any, **kwargs: Any) -> Any:
            return as_the_lab_uses_it(fn(*args, **kwargs))

        return yours, f"your {BY_ID[grade_id].function}"
    return reference, f"labutils' reference (your {BY_ID[grade_id].function} has not passed its check)"


def _checker(grade_id: str) -> Callable[[Callable], None]:
    def check_exercise(fn: Callable) -> None:
        check(grade_id, fn)

    exercise = BY_ID[grade_id]
    check_exercise.__name__ = check_exercise.__qualname__ = f"check_{grade_id}"
    check_exercise.__doc__ = f"Check {exercise.function} ({exercise.notebook}): prints PASS or FAIL with the cause."
    return check_exercise


check_layer_cost = _checker("layer_cost")
check_capture = _checker("capture")
check_alpha = _checker("alpha")
check_combine = _checker("combine")
check_postprocess = _checker("postprocess")
check_gradcam = _checker("gradcam")
check_layer_sweep = _checker("layer_sweep")
check_cam = _checker("cam")
check_guided_relu = _checker("guided_relu")
check_guided_gradcam = _checker("guided_gradcam")
check_counterfactual = _checker("counterfactual")
check_overlay = _checker("overlay")
check_pointing_game = _checker("pointing_game")
