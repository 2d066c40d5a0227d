"""Collecting: the instructor's notebooks (their exercises, questions and points) and whose submission is which.

A submission is a notebook file or a folder (searched recursively for ``*.ipynb``; symbolic links are
refused, not followed). Each file is matched to the lab notebook whose name ends its own name, and the
student id is what comes before it (``alice_03_gradcam_math.ipynb`` -> ``alice``); a file named exactly
like the lab notebook takes the name of the folder that holds it (``alice/03_gradcam_math.ipynb`` ->
``alice``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

from ..errors import LabError
from ..exercise import Exercise
from ..submission import match_submission
from .similarity import reference_sources
from .student import TEXT_BEGIN, TEXT_END


@dataclass(frozen=True)
class Graded:
    """An exercise of the lab: the registry's entry and the points of its check cell."""

    exercise: Exercise
    points: float
    references: tuple[tuple[str, str], ...] = ()  # (name, code) of what the copy check compares with


@dataclass(frozen=True)
class Question:
    """A manually graded cell of the instructor's notebook (nbgrader ``grade`` and ``solution``)."""

    grade_id: str
    points: float
    scheme: str


@dataclass(frozen=True)
class LabNotebook:
    name: str
    exercises: tuple[Graded, ...]
    questions: tuple[Question, ...]



# ---------------------------------------------------------------- the instructor's notebooks


def nbgrader(cell: Any) -> dict:
    """A cell's nbgrader metadata with a string grade_id, or {} (whatever types a submission holds)."""
    meta = cell.get("metadata") if isinstance(cell, dict) else None
    found = meta.get("nbgrader") if isinstance(meta, dict) else None
    if not isinstance(found, dict) or not isinstance(found.get("grade_id"), str):
        return {}
    return found


def _declared(meta: dict, where: str) -> float:
    try:
        value = float(meta.get("points", 0))
    except (TypeError, ValueError):
        raise LabError(f"{where}: nbgrader points {meta.get('points')!r} is not a number") from None
    if not value >= 0:
        raise LabError(f"{where}: nbgrader points must be 0 or more, got {value}")
    return value


def mark_scheme(source: str) -> str:
    """The marked region(s) of an instructor's answer cell, or the whole cell."""
    lines, inside, kept = source.split("\n"), False, []
    for line in lines:
        if TEXT_BEGIN.match(line):
            inside = True
        elif TEXT_END.match(line):
            inside = False
        elif inside:
            kept.append(line)
    return "\n".join(kept).strip() or source.strip()


def lab_notebooks(folder: Path, registry: list[Exercise]) -> dict[str, LabNotebook]:
    """The instructor's notebooks that hold exercises or questions, checked against the registry."""
    by_id = {e.grade_id: e for e in registry}
    if len(by_id) != len(registry):
        raise LabError("the registry lists one grade_id twice; give each exercise its own")
    found, seen = {}, set()
    for path in sorted(Path(folder).glob("*.ipynb")):
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception as error:
            raise LabError(f"the instructor's notebook {path} is not readable ({type(error).__name__}: {error})"
                           ) from None
        exercises, questions = [], []
        for n, cell in enumerate(nb.cells):
            meta = nbgrader(cell)
            if not meta.get("grade"):
                continue
            grade_id, where = meta["grade_id"], f"{path.name}, cell {n + 1}"
            if grade_id in seen:
                raise LabError(f"{where}: grade_id {grade_id} is used twice; make each one unique")
            seen.add(grade_id)
            if meta.get("solution"):
                questions.append(Question(grade_id, _declared(meta, where), mark_scheme(cell.source)))
            elif grade_id in by_id:
                exercise = by_id[grade_id]
                if exercise.notebook != path.name:
                    raise LabError(f"{where}: exercise {grade_id} belongs to {exercise.notebook} in the registry")
                solutions = {f"the instructor's {path.name}": c.source for c in nb.cells if c.cell_type == "code"
                             and nbgrader(c).get("grade_id") == exercise.solution_grade_id}
                references = tuple({**reference_sources(exercise), **solutions}.items())
                exercises.append(Graded(exercise, _declared(meta, where), references))
            else:
                raise LabError(f"{where}: the check cell {grade_id} has no exercise in the registry "
                               "(labutils.checks.EXERCISES); add one, or remove grade: true from the cell")
        if exercises or questions:
            found[path.name] = LabNotebook(path.name, tuple(exercises), tuple(questions))
    missing = sorted(set(by_id) - {g.exercise.grade_id for lab in found.values() for g in lab.exercises})
    if missing:
        raise LabError(f"{folder} has no check cell for the registry's exercise(s) {', '.join(missing)}")
    if not found:
        raise LabError(f"{folder} holds no notebook with graded cells (nbgrader metadata grade: true); "
                       "pass the folder of the instructor's notebooks")
    return found


def default_registry() -> list[Exercise]:
    """The lab's exercises: ``labutils.checks.EXERCISES`` (imported in the grader's process only)."""
    try:
        from .. import checks
    except ImportError as error:
        raise LabError(f"labutils.checks cannot be imported ({error})") from None
    registry = getattr(checks, "EXERCISES", None)
    if not isinstance(registry, (list, tuple)) or not all(isinstance(e, Exercise) for e in registry):
        raise LabError("labutils.checks has no EXERCISES list of labutils.exercise.Exercise: the grader scores "
                       "exercises from that registry")
    return list(registry)


# ---------------------------------------------------------------- which file is whose


def _files(item: Path, skipped: list[str]) -> list[Path]:
    """The notebooks of a submitted file or folder, symbolic links refused (not followed)."""
    if item.is_symlink():
        skipped.append(f"refused {item}: a symbolic link (submit the file itself)")
        return []
    if item.is_file():
        return [item]
    if not item.is_dir():
        raise LabError(f"{item} does not exist; pass submitted notebooks or folders of them")
    found = []
    for root, dirs, names in os.walk(item, followlinks=False):
        for name in sorted(dirs):
            if Path(root, name).is_symlink():
                skipped.append(f"refused {Path(root, name)}: a symbolic link (submit the folder itself)")
        dirs[:] = sorted(d for d in dirs if d != ".ipynb_checkpoints" and not Path(root, d).is_symlink())
        for name in sorted(names):
            path = Path(root, name)
            if name.endswith(".ipynb"):
                if path.is_symlink():
                    skipped.append(f"refused {path}: a symbolic link (submit the file itself)")
                else:
                    found.append(path)
    if not found and not skipped:
        raise LabError(f"{item} is a folder with no .ipynb files")
    return found


def collect(submissions: list[Path], notebooks: list[str]) -> tuple[dict[str, dict[str, list[Path]]], list[str]]:
    """student -> {lab notebook -> the files that claim it (more than one: a conflict)}, and skipped files."""
    skipped: list[str] = []
    files: dict[Path, Path] = {}
    for item in map(Path, submissions):
        for path in _files(item, skipped):
            files.setdefault(path.resolve(), path)  # the same file given twice counts once
    students: dict[str, dict[str, list[Path]]] = {}
    for path in files.values():
        match = match_submission(path, notebooks)
        if match is None:
            skipped.append(f"skipped {path}: its name ends with none of {', '.join(notebooks)}")
            continue
        student, name = match
        students.setdefault(student or "unnamed", {}).setdefault(name, []).append(path)
    return students, skipped


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """Read a submitted file without following a symbolic link put in its place."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "r", encoding="utf-8") as f:
        return nbformat.read(f, as_version=4)

