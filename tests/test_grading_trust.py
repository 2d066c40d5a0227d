"""What a submission cannot do to the grader (issue 20), checked without a sandboxed run: fast.

- importing ``labutils.__main__`` does nothing (a submission's ``from labutils.__main__ import main`` hung a
  whole class run: the grader's process imported it and ran the command line again);
- the grader reads, never imports, the labutils modules a submission names;
- no scorer holds the answer to its exercise: the files staged for each exercise's scoring process.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import labutils
from labutils.checks import EXERCISES
from labutils.instructor import sandbox
from labutils.instructor.scoring import _stage, import_lines

ROOT = Path(__file__).resolve().parents[1]

# The labutils files that implement each exercise's answer (or compose it from the lab's earlier answers):
# a scorer that stages one of them lets a solution import the answer. Every exercise has its row.
ANSWERS = {
    "layer_cost": {"summary.py"},  # the architecture tables count the layers' cost
    "capture": {"hooks.py", "steps.py", "pipeline.py", "gradcam.py", "guided.py", "shortcut.py", "cached.py"},
    "alpha": {"equations.py", "gradcam.py", "steps.py", "pipeline.py", "shortcut.py", "cached.py"},
    "combine": {"equations.py", "gradcam.py", "steps.py", "pipeline.py", "cached.py"},
    "postprocess": {"equations.py", "gradcam.py", "steps.py", "pipeline.py", "cached.py"},
    "gradcam": {"gradcam.py", "pipeline.py", "guided.py", "cached.py", "shortcut.py", "exploring.py"},
    "layer_sweep": {"checks/gradcam_math.py"},  # correlations(): the reference's correlation
    "cam": {"gradcam.py", "shortcut.py", "cached.py", "pipeline.py", "guided.py", "exploring.py"},
    "guided_relu": {"guided.py"},
    "guided_gradcam": {"guided.py"},  # guided_times_cam
    "counterfactual": {"gradcam.py", "guided.py", "cached.py", "exploring.py"},  # gradcam(counterfactual=True)
    "overlay": {"overlay.py"},
    "pointing_game": {"sanity.py"},
}


def staged_files(exercise, folder: Path) -> tuple[set[str], set[str]]:
    """The labutils files in the exercise's scoring process: copies of the package's own files, and views
    (files that only re-export names from the copies)."""
    copies, views = set(), set()
    package = Path(labutils.__file__).parent
    for path in _stage(tuple(exercise.modules), folder).rglob("*.py"):
        name = path.relative_to(folder / "labutils").as_posix()
        text = path.read_text(encoding="utf-8")
        original = package / name
        if original.is_file() and original.read_text(encoding="utf-8") == text:
            copies.add(name)
        elif name.endswith("__init__.py") and "def " not in text and "class " not in text:
            views.add(name)  # the package files, with nothing of their own
        else:
            tree = ast.parse(text)
            assert all(isinstance(n, ast.ImportFrom) or (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
                       for n in tree.body), f"{name} is neither a copy nor a view:\n{text}"
            views.add(name)
    return copies, views


def test_every_exercise_has_a_row_of_answers():
    assert set(ANSWERS) == {e.grade_id for e in EXERCISES}


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
    copies, views = staged_files(exercise, tmp_path)
    assert copies >= {"exercise.py", "instructor/scorer.py"}
    reference = exercise.reference.split(":")[0].split(".")[1:] if exercise.reference else []
    forbidden = ANSWERS[exercise.grade_id] | ({"/".join(reference) + ".py"} if reference else set())
    assert not copies & forbidden, f"{exercise.grade_id}'s scorer holds {sorted(copies & forbidden)}"
    for name in views:  # a view re-exports only what the copies define
        for node in ast.parse((tmp_path / "labutils" / name).read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom):
                home = node.module.split(".")[1:]
                assert "/".join(home) + ".py" in copies, f"{name} re-exports from {node.module}, not staged"


def test_the_counterfactual_scorer_offers_the_equations_not_gradcam(tmp_path):
    """The reproduction: gradcam(counterfactual=True) is the answer; alpha_weights and combine are allowed."""
    (exercise,) = [e for e in EXERCISES if e.grade_id == "counterfactual"]
    copies, views = staged_files(exercise, tmp_path)
    assert "equations.py" in copies and "gradcam.py" in views
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from labutils.gradcam import alpha_weights, combine\n"
            "import labutils.gradcam as g\n"
            "print(hasattr(g, 'gradcam'), hasattr(g, 'explanation_from_alpha'), callable(combine))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "True"]


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


# ---------------------------------------------------------------- what a scoring process remembers

THIEF = '''def my_alpha(gradients):
    import re
    found = set()
    wanted = {"the instructor's solution": re.compile(rb"BEGIN[ ]SOLUTION"),
              "another student's code": re.compile(rb"HONEST[_]MARKER[_]42")}
    with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            if "rw" not in fields[1] or (len(fields) > 5 and not fields[5].startswith("[heap")):
                continue  # the heap and anonymous memory: where freed requests would lie
            low, high = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(low)
                data = mem.read(high - low)
            except (OSError, ValueError, OverflowError):
                continue
            found |= {name for name, pattern in wanted.items() if pattern.search(data)}
    raise ValueError("FOUND " + " and ".join(sorted(found)) if found else "CLEAN")
'''


def grade_tiny(tmp_path: Path, students: dict, **options):
    """Grade the tiny lab (``tests/gradinglab.py``) with --no-execute: ``students`` maps an id to a change of the
    instructor's notebook. Results by student."""
    from gradinglab import EXERCISES as TINY, NOTEBOOK, variant, write_lab
    from labutils.instructor.grading import grade

    lab = write_lab(tmp_path / "instructor")
    for student, change in students.items():
        variant(lab / NOTEBOOK, tmp_path / "subs" / student / NOTEBOOK, change)
    results = grade([tmp_path / "subs"], tmp_path / "grades", instructor_dir=lab, registry=TINY, progress=False,
                    execute=False, **options)
    return {r.student: r for r in results}


def set_cell(grade_id: str, source: str):
    from gradinglab import cell

    return lambda nb: setattr(cell(nb, grade_id), "source", source)


@pytest.mark.skipif(not sandbox.bwrap_works(), reason="needs bubblewrap (apt-get install bubblewrap)")
def test_a_solution_finds_neither_the_instructors_solutions_nor_other_students_code_in_its_memory(tmp_path):
    """The scoring process scored the instructor's notebook (the preflight) and another student before this
    solution, which reads every writable page of its own process: none of that is there."""
    honest = set_cell("alpha-solution", "def my_alpha(gradients):\n    HONEST_MARKER_42 = 1\n"
                                        "    return gradients.mean(dim=(-2, -1))")
    results = grade_tiny(tmp_path, {"a_honest": honest, "z_thief": set_cell("alpha-solution", THIEF)}, jobs=1)
    assert results["a_honest"].exercises[0].passed
    said = results["z_thief"].exercises[0].message
    assert "ValueError: CLEAN" in said, said


@pytest.mark.skipif(not sandbox.bwrap_works(), reason="needs bubblewrap (apt-get install bubblewrap)")
def test_code_too_deep_to_parse_is_the_students_own_never_not_graded(tmp_path):
    """A cell nested too deeply for Python's parser (before a solution, or in one) is passed over as a cell that
    is not Python: the student is graded (it was 'not graded' for ever: RecursionError, MemoryError)."""
    from gradinglab import ALPHA_BODY
    from nbformat.v4 import new_code_cell

    deep = "y = x" + ".a" * 100_000
    results = grade_tiny(tmp_path, {
        "deep_cell": lambda nb: nb.cells.insert(1, new_code_cell(deep + "\n" + "-" * 100_000 + "1")),
        "deep_solution": set_cell("alpha-solution", f"def my_alpha(gradients):\n    {ALPHA_BODY}\n{deep}\n"),
    })
    assert sorted(results) == ["deep_cell", "deep_solution"]  # both graded
    assert [e.passed for e in results["deep_cell"].exercises] == [True, True]
    alpha, combine = results["deep_solution"].exercises
    assert not alpha.passed and "RecursionError" in alpha.message and combine.passed, alpha.message
