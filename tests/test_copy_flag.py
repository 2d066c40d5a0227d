"""The grader's copy flag on the lab's own registry: renamed copies of a long reference flagged, short ones never.

The measure of the copy check (rates on honest answers and disguised copies) is tests/test_similarity.py;
this is what the grader calls: each exercise's references as ``lab_notebooks`` gathers them.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

from labutils.checks import EXERCISES
from labutils.instructor.collect import lab_notebooks
from labutils.instructor.similarity import against_references

gradcam = importlib.import_module("labutils.gradcam")  # the module (labutils.gradcam is also a function)
sanity = importlib.import_module("labutils.sanity")
LAB = {g.exercise.grade_id: g for nb in lab_notebooks(Path(__file__).resolve().parents[1] / "notebooks",
                                                     EXERCISES).values() for g in nb.exercises}


def renamed(function: object, new_name: str, renames: dict[str, str]) -> str:
    """The reference's source under the student's function name, its names changed, comments added."""
    source = inspect.getsource(function).replace(f"def {function.__name__}(", f"def {new_name}(")
    for old, new in renames.items():
        source = source.replace(old, new)
    return "import torch\n# my answer\n" + source


@pytest.mark.parametrize(
    ("grade_id", "function", "renames", "flagged"),
    [
        ("alpha", gradcam.alpha_weights, {"gradients": "g"}, False),  # one line: too short to tell
        ("combine", gradcam.combine, {"activations": "A", "alpha": "weights"}, False),
        ("pointing_game", sanity.pointing_game, {"maps": "heat", "peak": "top"}, True),
    ],
)
def test_a_renamed_copy_is_flagged_when_the_reference_is_long_enough_to_tell(grade_id, function, renames,
                                                                            flagged) -> None:
    graded = LAB[grade_id]
    match = against_references(renamed(function, graded.exercise.function, renames), dict(graded.references),
                               graded.exercise.function)
    assert match.score == 1.0 and match.flagged is flagged


def test_every_exercise_has_references_among_them_the_instructors_solution_cell() -> None:
    assert set(LAB) == {e.grade_id for e in EXERCISES}
    for grade_id, graded in LAB.items():
        names = [name for name, _ in graded.references]
        assert any(name.startswith("the instructor's ") for name in names) and len(names) >= 2, grade_id


def test_the_instructors_notebook_is_flagged_only_where_its_answer_is_long_enough_to_tell() -> None:
    flagged = {grade_id for grade_id, graded in LAB.items()
               if against_references(dict(graded.references)[f"the instructor's {graded.exercise.notebook}"],
                                     dict(graded.references), graded.exercise.function).flagged}
    assert {"alpha", "combine", "guided_relu", "counterfactual", "gradcam"}.isdisjoint(flagged)
