"""tools/lab_duration.py: the duration notebook 00 and the docs state is the one its method gives."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("lab_duration", ROOT / "tools" / "lab_duration.py")
lab_duration = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lab_duration)
PATHS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_code_lines_counts_given_and_solution_lines():
    source = ("import torch\n\n# a comment\ndef f(x):\n    ### BEGIN SOLUTION\n    # why\n    y = x + 1\n\n"
              "    return y\n    ### END SOLUTION\n")
    assert lab_duration.code_lines(source) == (2, [3])  # import, def; the solution's comment counts (it is written)


def test_exercise_minutes_by_size():
    assert [lab_duration.exercise_minutes(n) for n in (1, 3, 4, 9, 10, 15)] == [10, 10, 20, 20, 30, 30]


def test_every_notebook_has_a_measured_run_time_and_its_modules_to_read():
    assert set(lab_duration.RUN_SECONDS) == {p.stem for p in PATHS}
    for stem, modules in lab_duration.MODULES_TO_READ.items():
        text = "".join(c.source for c in nbformat.read(ROOT / "notebooks" / f"{stem}.ipynb", 4).cells)
        for module in modules:
            assert f"labutils/{module}" in text, f"{stem} does not ask to read labutils/{module}"


def test_notebook_00_and_the_docs_show_the_tools_table():
    table = lab_duration.table(PATHS)
    cells = nbformat.read(ROOT / "notebooks" / "00_start_here.ipynb", 4).cells
    assert sum(table in c.source for c in cells if c.cell_type == "markdown") == 1, \
        "notebook 00's table differs from `python tools/lab_duration.py`: paste its output"
    assert table in (ROOT / "docs" / "instructors.md").read_text(encoding="utf-8")
    total = f"{lab_duration.hours(PATHS):.0f} hours"
    assert total in (ROOT / "README.md").read_text(encoding="utf-8")
