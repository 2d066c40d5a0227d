"""What a submission cannot do to the grader (issue 20), checked without a sandboxed run: fast.

- importing ``labutils.__main__`` does nothing (a submission's ``from labutils.__main__ import main`` hung a
  whole class run: the grader's process imported it and ran the command line again);
- the grader reads, never imports, the labutils modules a submission names;
- no scorer holds the answer to its exercise: the files staged for each exercise's scoring process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from labutils.checks import EXERCISES
from labutils.instructor.scoring import _stage, import_lines

ROOT = Path(__file__).resolve().parents[1]

# The labutils files that implement each exercise's answer (or compose it from the lab's earlier answers):
# a scorer that stages one of them lets a solution import the answer.
ANSWERS = {
    "capture": {"hooks.py", "steps.py", "pipeline.py"},  # hooks.capture is the answer
    "alpha": {"gradcam.py", "steps.py", "pipeline.py", "shortcut.py"},
    "combine": {"gradcam.py", "steps.py", "pipeline.py"},
    "postprocess": {"gradcam.py", "steps.py", "pipeline.py"},
    "guided_relu": {"guided.py"},
    "pointing_game": {"sanity.py"},
    "layer_cost": {"summary.py"},
    "overlay": {"overlay.py"},
    "cam": {"gradcam.py", "steps.py", "pipeline.py"},
}


def test_importing_labutils_main_does_nothing():
    done = subprocess.run([sys.executable, "-c", "import labutils.__main__, sys; "
                           "print('labutils.cli' in sys.modules)"], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
    assert done.stderr == ""


def test_the_grader_reads_never_imports_the_modules_a_submission_names():
    code = ("import sys\nfrom labutils.instructor.scoring import import_lines\n"
            "lines = import_lines(['from labutils.__main__ import main', 'from labutils.cached import INPUT_SIZE',"
            " 'from labutils.explorer import Explorer'])\n"
            "print(lines)\nprint(sorted(m for m in ('labutils.__main__', 'labutils.cli', 'labutils.explorer', "
            "'labutils.cached') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines, imported = done.stdout.strip().splitlines()
    assert imported == "[]"
    assert "'INPUT_SIZE = (224, 224)'" in lines  # a constant still travels as its value
    assert "'from labutils.__main__ import main'" in lines


def test_import_lines_find_where_a_re_exported_name_is_defined():
    from labutils import models

    name = next(n for n in ("get_layer", "default_layer") if hasattr(models, n))
    home = getattr(models, name).__module__
    assert import_lines([f"from labutils.models import {name} as g"]) == [f"from {home} import {name} as g"]


@pytest.mark.parametrize("exercise", EXERCISES, ids=lambda e: e.grade_id)
def test_no_scorer_holds_the_answer_to_its_exercise(exercise, tmp_path):
    staged = {p.relative_to(tmp_path / "labutils").as_posix()
              for p in _stage(tuple(exercise.modules), tmp_path).rglob("*.py")}
    assert staged >= {"exercise.py", "instructor/scorer.py"}
    reference = exercise.reference.split(":")[0].split(".")[1:] if exercise.reference else []
    forbidden = ANSWERS.get(exercise.grade_id, set()) | ({"/".join(reference) + ".py"} if reference else set())
    assert not staged & forbidden, f"{exercise.grade_id}'s scorer holds {sorted(staged & forbidden)}"


def test_import_lines_of_every_lab_notebook_bind_what_importing_would():
    """Read, not imported: still the same constants and objects for each labutils import of the lab."""
    import ast
    import importlib

    import nbformat

    from labutils.instructor.scoring import python_source

    checked = 0
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for c in nbformat.read(path, as_version=4).cells:
            if c.cell_type != "code":
                continue
            for node in ast.parse(python_source(c.source)).body:
                if not (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("labutils")):
                    continue
                for alias in node.names:
                    line = ast.unparse(ast.ImportFrom(node.module, [alias], 0))
                    bound: dict = {}
                    for produced in import_lines([line]):
                        exec(produced, bound)  # noqa: S102 (the grader's own lines, in the test's process)
                    name = alias.asname or alias.name
                    expected = getattr(importlib.import_module(node.module), alias.name)
                    assert bound[name] is expected or bound[name] == expected, (path.name, line)
                    checked += 1
    assert checked > 50
