"""The committed notebooks: valid, kernel python3, no outputs but the checked ones, exercises well formed.

Restore this state after editing a notebook with ``python tools/refresh_notebooks.py notebooks/NN_name.ipynb``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
CHECK_TAG = "nbval-check-output"  # nbval reads the tag; students do not see it in the cell
CHECK_MARK = "# NBVAL_CHECK_OUTPUT"  # nbval's comment form: not in the notebooks
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUDENT_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
SEQUENCE = ["00_", "01_", "02_", "03_", "04_", "05_", "06_"]


def load(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=nbformat.NO_CONVERT)


def is_checked(cell) -> bool:
    return cell.cell_type == "code" and CHECK_TAG in cell.metadata.get("tags", [])


def is_check_cell(cell) -> bool:
    """An exercise check: calls one of labutils.checks' check_<id>(...) functions."""
    return cell.cell_type == "code" and re.search(r"^\s*check_\w+\(", cell.source, re.MULTILINE) is not None


def is_solution_cell(cell) -> bool:
    return cell.cell_type == "code" and (BEGIN in cell.source or cell.metadata.get("nbgrader", {}).get("solution"))


def is_answer_cell(cell) -> bool:
    """A written answer: a markdown cell that nbgrader grades by hand."""
    meta = cell.metadata.get("nbgrader", {})
    return cell.cell_type == "markdown" and meta.get("solution") is True


def notebook_id(path: Path) -> str:
    return path.name


def test_the_sequence_is_there():
    names = [p.name for p in PATHS]
    for prefix in SEQUENCE:
        assert any(n.startswith(prefix) for n in names), f"no notebook {prefix}*.ipynb in {names}"


@pytest.mark.parametrize("path", PATHS, ids=notebook_id)
def test_valid_with_python3_kernel(path: Path):
    nb = load(path)
    assert nb.nbformat == 4
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    assert nb.metadata.kernelspec.get("language") == "python"
    assert "widgets" not in nb.metadata, "widget state in the metadata: run tools/refresh_notebooks.py"


@pytest.mark.parametrize("path", PATHS, ids=notebook_id)
def test_outputs_only_in_checked_cells(path: Path):
    nb = load(path)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        where = f"{path.name} cell {index} ({cell.source.splitlines()[0][:50] if cell.source else 'empty'!r})"
        assert CHECK_MARK not in cell.source, f"{where}: {CHECK_MARK} shown to students; tag the cell {CHECK_TAG}"
        if is_checked(cell):
            # nbval skips the comparison of a cell whose stored execution_count is null
            assert cell.execution_count is not None and cell.outputs, f"{where}: checked cell without its output"
            kinds = {o.output_type for o in cell.outputs}
            assert "error" not in kinds, f"{where}: the stored output of a checked cell is an error"
            names = {o.get("name") for o in cell.outputs if o.output_type == "stream"}
            assert "stderr" not in names, f"{where}: stderr (a warning?) in a checked cell's output"
        else:
            assert cell.outputs == [], f"{where}: has outputs; only cells tagged {CHECK_TAG} keep theirs"
            assert cell.execution_count is None, f"{where}: has an execution count"
        assert "execution" not in cell.metadata, f"{where}: timing metadata"


@pytest.mark.parametrize("path", PATHS, ids=notebook_id)
def test_solution_markers_are_paired(path: Path):
    nb = load(path)
    for index, cell in enumerate(nb.cells):
        lines = [line.strip() for line in cell.source.splitlines()]
        markers = [line for line in lines if line in (BEGIN, END)]
        assert markers == [BEGIN, END] * (len(markers) // 2) and len(markers) % 2 == 0, (
            f"{path.name} cell {index}: unpaired or nested solution markers {markers}"
        )
        for line in lines:  # a marker with a typo would be missed by the grading tool
            if "SOLUTION" in line and line.startswith("#"):
                assert line in (BEGIN, END), f"{path.name} cell {index}: malformed marker {line!r}"


def student_version(source: str) -> str:
    """What the student sees: each solution region replaced by the stub, at the region's indentation."""
    out, inside = [], False
    for line in source.splitlines():
        if line.strip() == BEGIN:
            indent = line[: len(line) - len(line.lstrip())]
            out += [indent + stub for stub in STUDENT_STUB.splitlines()]
            inside = True
        elif line.strip() == END:
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out)


@pytest.mark.parametrize("path", PATHS, ids=notebook_id)
def test_exercises_are_well_formed(path: Path):
    nb = load(path)
    cells = nb.cells
    for index, cell in enumerate(cells):
        if is_solution_cell(cell):
            where = f"{path.name} cell {index}"
            meta = cell.metadata.get("nbgrader")
            assert meta is not None, f"{where}: solution cell without nbgrader metadata"
            assert meta.get("solution") is True and meta.get("grade") is False and meta.get("locked") is False
            assert meta.get("schema_version") == 3 and meta.get("grade_id", "").endswith("-solution")
            assert BEGIN in cell.source, f"{where}: solution cell without {BEGIN}"
            # the student version must still define the function the check cell calls
            tree = ast.parse(student_version(cell.source))
            defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
            assert defined, f"{where}: the def line must stay outside the solution markers"
            after = cells[index + 1] if index + 1 < len(cells) else None
            assert after is not None and is_check_cell(after), f"{where}: no check cell right after the exercise"
        if is_check_cell(cell):
            where = f"{path.name} cell {index}"
            before = cells[index - 1] if index > 0 else None
            assert before is not None and is_solution_cell(before), f"{where}: check cell not preceded by a solution"
            assert is_checked(cell), f"{where}: a check cell must be tagged {CHECK_TAG} (nbval compares its output)"
            meta = cell.metadata.get("nbgrader")
            assert meta is not None, f"{where}: check cell without nbgrader metadata"
            assert meta.get("grade") is True and meta.get("solution") is False and meta.get("locked") is True
            assert isinstance(meta.get("points"), int) and meta["points"] > 0, f"{where}: points {meta.get('points')}"
            assert meta.get("schema_version") == 3
            grade_id = meta.get("grade_id")
            assert before.metadata["nbgrader"]["grade_id"] == f"{grade_id}-solution", where
            calls = re.findall(r"^\s*check_(\w+)\((\w+)\)\s*$", cell.source, re.MULTILINE)
            assert len(calls) == 1 and calls[0][0] == grade_id, f"{where}: must call check_{grade_id}(<function>)"
            defined = {n.name for n in ast.parse(before.source).body if isinstance(n, ast.FunctionDef)}
            assert calls[0][1] in defined, f"{where}: checks {calls[0][1]}, not a function of the exercise above"
            output = "".join(o.get("text", "") for o in cell.outputs)
            assert output.startswith(f"PASS: {grade_id} — ") and output.count("\n") == 1, f"{where}: {output!r}"


def test_grade_ids_are_unique_across_notebooks():
    ids = [
        cell.metadata["nbgrader"]["grade_id"]
        for path in PATHS
        for cell in load(path).cells
        if "nbgrader" in cell.metadata
    ]
    assert len(ids) == len(set(ids)), sorted(ids)


def test_student_version_helper():
    source = 'def f(x):\n    """doc"""\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n'
    assert student_version(source) == 'def f(x):\n    """doc"""\n    # YOUR CODE HERE\n    raise NotImplementedError()'


# ---------------------------------------------------------------- the exercises against the registry, the questions


def test_every_registered_exercise_is_in_its_notebook_and_every_check_is_registered():
    from labutils.checks import EXERCISES

    found = {}
    for path in PATHS:
        for cell in load(path).cells:
            meta = cell.metadata.get("nbgrader", {})
            if cell.cell_type == "code" and meta.get("grade") is True:
                found[meta["grade_id"]] = path.name
    assert found == {e.grade_id: e.notebook for e in EXERCISES}
    for e in EXERCISES:
        cells = load(NOTEBOOKS / e.notebook).cells
        solution = [c for c in cells if c.metadata.get("nbgrader", {}).get("grade_id") == e.solution_grade_id]
        assert len(solution) == 1 and f"def {e.function}(" in solution[0].source, e.grade_id


def test_no_reference_is_imported_before_its_exercise():
    """The names that answer an exercise appear in no code cell above its check (reading labutils is fine)."""
    answers = {
        "capture": ["import capture", ", capture", "capture,"],
        "alpha": ["alpha_weights"], "combine": ["import combine", ", combine"], "postprocess": ["postprocess"],
        "gradcam": ["import gradcam", ", gradcam", "gradcam("], "cam": [], "layer_sweep": ["correlations"],
        "guided_relu": ["guided_relus", "guided_relu_gradient"], "guided_gradcam": ["guided_gradcam", "guided_times_cam"],
        "overlay": ["import overlay", "overlay(", "import figure", "figure("], "pointing_game": ["pointing_game("],
        "layer_cost": ["layer_cost"], "counterfactual": ["counterfactual=True"],
    }
    for path in PATHS:
        cells = load(path).cells
        for index, cell in enumerate(cells):
            meta = cell.metadata.get("nbgrader", {})
            if cell.cell_type != "code" or meta.get("grade") is not True:
                continue
            grade_id = meta["grade_id"]
            for earlier in cells[:index]:
                if earlier.cell_type != "code" or earlier.metadata.get("nbgrader", {}).get("solution"):
                    continue
                source = re.sub(r"check_\w+", "", earlier.source)  # the check functions' names are not answers
                for name in answers[grade_id]:
                    assert name not in source, f"{path.name}: {name!r} before the check of {grade_id}"


def test_written_questions():
    questions = []
    for path in PATHS:
        cells = load(path).cells
        for index, cell in enumerate(cells):
            if not is_answer_cell(cell):
                continue
            where = f"{path.name} cell {index}"
            meta = cell.metadata["nbgrader"]
            assert meta.get("grade") is True and meta.get("task") is False and meta.get("locked") is False, where
            assert isinstance(meta.get("points"), int) and meta["points"] > 0 and meta.get("schema_version") == 3, where
            assert "=== BEGIN MARK SCHEME ===" in cell.source and "=== END MARK SCHEME ===" in cell.source, where
            assert "### Question" in cells[index - 1].source, f"{where}: the question comes right before its answer"
            questions.append(meta["grade_id"])
    assert len(questions) >= 8 and len(set(questions)) == len(questions), questions
    assert sum("predict" in q for q in questions) >= 3, questions
