"""The student versions (``python -m labutils student``): Run All goes through every notebook with
nbclient's ``allow_errors=False``; each untouched exercise prints its FAIL line without raising, each
question reads YOUR ANSWER HERE; under the documented switch (or nbgrader's autograder) a check raises.

Slow (every notebook with exercises runs once, with untrained weights): about as long as nbval on them.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from labutils.instructor.student import student_version

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
WITH_EXERCISES = sorted(
    p for p in NOTEBOOKS.glob("*.ipynb")
    if any(c.metadata.get("nbgrader", {}).get("grade") for c in nbformat.read(p, as_version=4).cells)
)  # fmt: skip


def run(nb: nbformat.NotebookNode, **env: str) -> nbformat.NotebookNode:
    environment = {k: v for k, v in os.environ.items() if k not in ("LABUTILS_CHECKS", "NBGRADER_EXECUTION")}
    client = NotebookClient(nb, kernel_name="python3", timeout=600, allow_errors=False,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})  # fmt: skip
    client.execute(env={**environment, "LABUTILS_WEIGHTS": "random", **env})
    return nb


def test_the_lab_has_five_notebooks_with_exercises():
    assert [p.name[:3] for p in WITH_EXERCISES] == ["01_", "02_", "03_", "04_", "06_"]


@pytest.mark.parametrize("path", WITH_EXERCISES, ids=lambda p: p.name)
def test_the_untouched_student_version_runs_all_and_fails_every_check(path: Path):
    nb = run(student_version(nbformat.read(path, as_version=4), path.name))  # raises if any cell fails
    checks = 0
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code" and meta.get("grade") is True:
            out = "".join(o.get("text", "") for o in cell.outputs)
            grade_id = meta["grade_id"]
            assert out == f"FAIL: {grade_id}: not implemented yet — write my_{grade_id} above\n", out
            checks += 1
        if cell.cell_type == "markdown" and meta.get("solution") is True:
            assert "YOUR ANSWER HERE" in cell.source and "MARK SCHEME" not in cell.source
    assert checks >= 1


def test_under_the_switch_an_unfinished_check_raises():
    path = NOTEBOOKS / "01_architectures.ipynb"
    student = student_version(nbformat.read(path, as_version=4), path.name)
    keep = [0, 1] + [i for i, c in enumerate(student.cells) if c.metadata.get("nbgrader", {}).get("grade_id", "").startswith("layer_cost")]
    student.cells = [student.cells[i] for i in keep]
    with pytest.raises(CellExecutionError) as info:
        run(student, LABUTILS_CHECKS="raise")
    assert "FAIL: layer_cost: not implemented yet — write my_layer_cost above" in str(info.value)
