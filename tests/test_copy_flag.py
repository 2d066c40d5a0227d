"""The grader flags a solution whose code is the reference's, once normalised, on the lab's own registry."""

from __future__ import annotations

import importlib
import inspect

import pytest

from labutils.checks import EXERCISES
from labutils.instructor.scoring import copies_reference

gradcam = importlib.import_module("labutils.gradcam")  # the module (labutils.gradcam is also a function)
sanity = importlib.import_module("labutils.sanity")
BY_ID = {e.grade_id: e for e in EXERCISES}


def renamed(function: object, new_name: str, renames: dict[str, str]) -> str:
    """The reference's source under the student's function name, its names changed, comments added."""
    source = inspect.getsource(function).replace(f"def {function.__name__}(", f"def {new_name}(")
    for old, new in renames.items():
        source = source.replace(old, new)
    return "import torch\n# my answer\n" + source


@pytest.mark.parametrize(
    ("grade_id", "function", "renames"),
    [
        ("alpha", gradcam.alpha_weights, {"gradients": "g"}),
        ("combine", gradcam.combine, {"activations": "A", "alpha": "weights"}),
        ("postprocess", gradcam.postprocess, {"raw": "cam"}),
        ("pointing_game", sanity.pointing_game, {"maps": "heat"}),
    ],
)
def test_a_renamed_copy_of_the_reference_is_flagged(grade_id: str, function: object, renames: dict) -> None:
    exercise = BY_ID[grade_id]
    assert copies_reference(renamed(function, exercise.function, renames), exercise)


def test_an_own_solution_is_not_flagged() -> None:
    own = "import torch\n\ndef my_alpha(gradients):\n    h, w = gradients.shape[-2:]\n    return gradients.sum(dim=(-2, -1)) / (h * w)\n"
    assert not copies_reference(own, BY_ID["alpha"])
