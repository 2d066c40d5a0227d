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

import traceback
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Callable, Optional

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


def call(fn: Callable, case: Case) -> Outcome:
    """Call ``fn`` on the case's arguments (tensors copied, Nets built) and record what it did."""
    args = [a.build() if isinstance(a, Net) else a for a in case.args]
    copies = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    try:
        result = fn(*copies)
    except NotImplementedError:
        return Outcome(None, "NotImplementedError")
    except Exception as err:  # the student's error, reported as one line
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return Outcome(None, f"{type(err).__name__}: {message}{_where(fn, err)}")
    changed = tuple(
        i for i, (a, c) in enumerate(zip(args, copies))
        if isinstance(a, torch.Tensor) and not (a.shape == c.shape and torch.equal(a, c.detach()))
    )  # fmt: skip
    hooks = tuple(h for a in args if isinstance(a, nn.Module) for h in _hooks_left(a))
    return Outcome(result, None, changed, hooks)
