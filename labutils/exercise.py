"""What an exercise is: the contract between the exercises (``labutils.checks``) and the grader.

An exercise asks the student to write one function (e.g. ``my_alpha``) in a solution cell. It is
checked in two places, with the same cases and the same diagnosis:

* in the student's notebook, ``check_alpha(my_alpha)`` calls the function on the exercise's fixed
  cases (``exercise.cases(None)``) and prints ``PASS`` or the one-line cause of the first wrong
  answer;
* in the grader (``labutils.instructor``), the solution cell's code runs in a separate, sandboxed
  process that can import only ``exercise.modules`` (plus torch, numpy and harmless standard-library
  modules). There the function is called on the fixed cases and on cases drawn fresh for this run
  (``exercise.cases(generator)``); what it did comes back as an ``Outcome`` of plain data, and
  ``exercise.diagnose`` decides, in the grader's own process, whether it is right. The student's
  code never runs where the points are decided, and the reference answers are never where it runs.

This module holds no answer: it is safe to import beside the student's code.
"""

from __future__ import annotations

import re
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

Plain = Any  # torch.Tensor (exactly, no subclass), int, float, bool, str, None, and tuples / lists / dicts of them


@dataclass(frozen=True)
class Net:
    """A network argument. Modules do not travel as plain data: the process that calls the student's
    function builds the network itself, ``module:function`` called as ``function(seed)``; the module
    must be one of the exercise's ``modules``."""

    builder: str  # e.g. "labutils.nets:tiny_vgg"
    seed: int = 0

    def build(self) -> nn.Module:
        module, function = self.builder.split(":")
        return getattr(import_module(module), function)(self.seed)


@dataclass(frozen=True)
class Case:
    """One call of the student's function."""

    name: str  # what the student is told, e.g. "a batch of 2 images × 3 classes, gradients (2, 3, 512, 14, 14)"
    args: tuple  # plain values and Nets, passed in this order


@dataclass(frozen=True)
class Outcome:
    """What the student's function did on one case: plain data only, all the grader ever sees of it."""

    result: Plain  # what it returned (None when it raised)
    error: Optional[str] = None  # "ValueError: ... (line 3 of my_alpha: ...)" when it raised
    changed_inputs: tuple[int, ...] = ()  # positions of tensor arguments it changed in place
    hooks_left: tuple[str, ...] = ()  # hooks still registered on a Net argument after the call


@dataclass(frozen=True)
class Exercise:
    """One graded exercise."""

    grade_id: str  # nbgrader grade_id of the check cell (its points come from that cell's metadata)
    notebook: str  # e.g. "03_gradcam_math.ipynb"
    function: str  # the name the solution cell defines, e.g. "my_alpha"
    modules: tuple[str, ...]  # importable when scored, besides torch, numpy and the harmless standard library
    cases: Callable[[Optional[torch.Generator]], list[Case]]  # None: the fixed cases; a generator: fresh ones
    diagnose: Callable[[Case, Outcome], Optional[str]]  # None: right; else the cause in one line (grader side)
    solution_id: str = ""  # grade_id of the solution cell; default f"{grade_id}-solution"
    reference: str = ""  # "module:function" of the reference implementation; a solution that copies it is flagged
    forbidden: tuple[str, ...] = ()  # "module:function" ("module:*": any) the solution must not call (see ``call``)

    @property
    def solution_grade_id(self) -> str:
        return self.solution_id or f"{self.grade_id}-solution"


# ---------------------------------------------------------------- calling the student's function


def _hooks_left(model: nn.Module) -> tuple[str, ...]:
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return tuple(
        f"{name or 'the model'}: {len(getattr(m, kind))} {kind.strip('_').replace('_', ' ')[:-1]}(s)"
        for name, m in model.named_modules()
        for kind in kinds
        if getattr(m, kind, None)
    )


def _where(fn: Callable, err: BaseException) -> str:
    """' (line 4 of my_alpha: return ...)': the last line of the student's own code the error went through."""
    code = getattr(fn, "__code__", None)
    frames = [f for f in traceback.extract_tb(err.__traceback__) if code and f.filename == code.co_filename]
    if not frames:
        return ""
    frame = frames[-1]
    name = getattr(fn, "__name__", "your function")
    return f" (line {frame.lineno - code.co_firstlineno + 1} of {name}: {(frame.line or '').strip()})"


def python_scalars(value: Any) -> Any:
    """``value`` with numpy scalars (``np.prod``'s int64, ``np.float32``) as Python's int / float, inside tuples,
    lists and dicts too: they are right answers, and plain data for the grader. Arrays stay arrays."""
    if isinstance(value, tuple) and type(value) is tuple:
        return tuple(python_scalars(v) for v in value)
    if type(value) is list:
        return [python_scalars(v) for v in value]
    if type(value) is dict:
        return {k: python_scalars(v) for k, v in value.items()}
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        item = value.item()
        return item if type(item) in (int, float, bool) else value
    return value


FORBIDDEN = "Forbidden: "  # an Outcome.error that starts so: the function called what ``forbidden`` names


@contextmanager
def _watching(forbidden: tuple[str, ...], called: list[str]) -> Iterator[None]:
    """Record in ``called`` each call, made under this block, of a Python function that ``forbidden`` names.

    A profile function (``sys.setprofile``) sees every Python call, however the function was reached: an
    imported name, ``labutils.gradcam``, ``Tensor.backward()`` (which calls ``torch.autograd.backward``).
    """
    if not forbidden:
        yield
        return
    wanted = [tuple(entry.split(":", 1)) for entry in forbidden]
    names = {name for _, name in wanted}
    previous = sys.getprofile()

    def watch(frame, event, arg):  # type: ignore[no-untyped-def]
        if event == "call" and not called:
            name = frame.f_code.co_name
            if name in names or "*" in names:
                module = frame.f_globals.get("__name__", "")
                if any(module == m and n in (name, "*") for m, n in wanted):
                    called.append(f"{module}.{name}")

    sys.setprofile(watch)
    try:
        yield
    finally:
        sys.setprofile(previous)


def _forbidden_in(message: str, forbidden: tuple[str, ...]) -> Optional[str]:
    """The forbidden function an error shows the solution reaching for, where the grader's sandbox stopped it
    before the call (a module it may not import, a name it does not have): ``labutils.gradcam`` or None."""
    for entry in forbidden:
        module, name = entry.split(":", 1)
        if name == "*" or name.startswith("_"):
            continue
        if module in message and ("ModuleNotFoundError" in message or "ImportError" in message):
            return f"{module}.{name}"
        quoted = re.search(r"\(line \d+ of [\w.<>]+: (.*)\)$", message)
        line = quoted.group(1) if quoted else ""
        for prefix in re.findall(rf"([\w.]*?)\b{re.escape(name)}\s*\(", line):
            if not prefix.endswith("steps.") and "my_" not in prefix:  # steps.gradcam is the sweep's own
                return f"{module}.{name}"
    return None


def call(fn: Callable, case: Case, forbidden: tuple[str, ...] = ()) -> Outcome:
    """Call ``fn`` on the case's arguments (tensors copied, Nets built) and record what it did.

    ``forbidden``: functions ("module:function", "module:*") the solution must not call, e.g. ``labutils.gradcam``
    in the exercise that builds Grad-CAM from its steps, or autograd's backward pass in one that must do without.
    A call to one (or an error that shows the solution reaching for one) is the Outcome's error,
    ``"Forbidden: module.function"``, whatever the function returned.
    """
    args = [a.build() if isinstance(a, Net) else a for a in case.args]
    copies = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    called: list[str] = []
    try:
        with _watching(tuple(forbidden), called):
            result = fn(*copies)
    except NotImplementedError:
        return Outcome(None, "NotImplementedError")
    except Exception as err:  # the student's error, reported as one line
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        error = f"{type(err).__name__}: {message}{_where(fn, err)}"
        reached = called[0] if called else _forbidden_in(error, tuple(forbidden))
        return Outcome(None, FORBIDDEN + reached if reached else error)
    if called:
        return Outcome(None, FORBIDDEN + called[0])
    result = python_scalars(result)
    changed = tuple(
        i for i, (a, c) in enumerate(zip(args, copies))
        if isinstance(a, torch.Tensor) and not (a.shape == c.shape and torch.equal(a, c.detach()))
    )  # fmt: skip
    hooks = tuple(h for a in args if isinstance(a, nn.Module) for h in _hooks_left(a))
    return Outcome(result, None, changed, hooks)
