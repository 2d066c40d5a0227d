"""The per-student report says which weights the grader's re-run used (issue 23): a marker reads a written answer
beside outputs the student may not have seen."""

from __future__ import annotations

import nbformat

from labutils.instructor.report import notebooks_html
from labutils.instructor.results import Run


def executed_run() -> Run:
    cell = nbformat.v4.new_code_cell("print(1)")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    return Run("02_hooks.ipynb", nbformat.v4.new_notebook(cells=[cell]))


def test_the_report_names_the_weights_of_the_re_run(monkeypatch):
    monkeypatch.delenv("LABUTILS_WEIGHTS", raising=False)
    assert "untrained weights (LABUTILS_WEIGHTS=random)" in notebooks_html({"02_hooks.ipynb": executed_run()})
    monkeypatch.setenv("LABUTILS_WEIGHTS", "imagenet")
    page = notebooks_html({"02_hooks.ipynb": executed_run()})
    assert "re-run with LABUTILS_WEIGHTS=imagenet" in page and "untrained" not in page


def test_no_weights_line_where_nothing_was_re_run(monkeypatch):
    monkeypatch.setenv("LABUTILS_WEIGHTS", "random")
    run = executed_run()
    run.submitted = run.nb  # --no-execute: the student's own outputs, not the grader's
    assert "re-run with" not in notebooks_html({"02_hooks.ipynb": run})
