"""Student versions and grading (``python -m labutils student`` / ``grade``): the honest paths.

Grading runs on the small synthetic lab of tests/gradinglab.py (one notebook, two exercises and a
written question, sandboxed kernels of a few seconds). One sandboxed run covers the usual
submissions (right, untouched, wrong, a copy of the reference, an older handout, duplicates); then a
re-run, ``--regrade``, the manual marks CSV, ``--no-sandbox`` and the refusal without bubblewrap. The
attacks are in tests/test_adversarial.py. The real lab is graded once, end to end.
"""

from __future__ import annotations

import ast
import collections
import csv
import hashlib
import html
import io
import json
import os
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

from gradinglab import EXERCISES, NOTEBOOK, cell, variant, write_lab
from labutils.cli import main
from labutils.errors import LabError
from labutils.instructor import sandbox
from labutils.instructor.grading import (collect, file_name, from_spreadsheet, grade, match_submission, merge_marks,
                                         spreadsheet_safe)
from labutils.instructor.progress import Progress
from labutils.instructor.shards import parse_shard, shard_of
from labutils.instructor.student import REPO_ROOT, make_student_versions, student_version

needs_bwrap = pytest.mark.skipif(not sandbox.bwrap_works(), reason="needs bubblewrap (apt-get install bubblewrap)")
TIMEOUT = 20


def points(result) -> dict[str, float]:
    return {e.grade_id: e.points for e in result.exercises}


def messages(result) -> dict[str, str]:
    return {e.grade_id: e.message for e in result.exercises}


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    return write_lab(tmp_path_factory.mktemp("tinylab") / "instructor")


@pytest.fixture(scope="module")
def handout(lab, tmp_path_factory) -> Path:
    return make_student_versions([lab / NOTEBOOK], tmp_path_factory.mktemp("handout"))[0]


def set_solution(nb, grade_id: str, body: str) -> None:
    source = cell(nb, grade_id).source
    head = source[: source.index("    # YOUR CODE HERE")] if "# YOUR CODE HERE" in source else \
        source[: source.index("    ### BEGIN SOLUTION")]
    cell(nb, grade_id).source = head + body


@pytest.fixture(scope="module")
def graded(lab, handout, tmp_path_factory):
    """The usual submissions, graded in one sandboxed run: (results by student, output folder, submissions)."""
    subs = tmp_path_factory.mktemp("submissions")
    (subs / "teacher").mkdir()
    shutil.copy(lab / NOTEBOOK, subs / "teacher" / NOTEBOOK)  # teacher/01_tiny.ipynb style
    shutil.copy(handout, subs / f"blank_{NOTEBOOK}")  # blank_01_tiny.ipynb style
    variant(handout, subs / f"wrong_{NOTEBOOK}", lambda nb: (
        set_solution(nb, "alpha-solution", "    return gradients.sum(dim=(-2, -1)) / gradients.shape[-1] ** 2"),
        set_solution(nb, "combine-solution", "    import torch\n    "
                                             "return torch.relu((alpha[..., None, None] * activations).sum(-3))")))

    def renamed_copy(nb):  # the reference's code under other names, and a written answer
        cell(nb, "alpha-solution").source = ("def my_alpha(g):\n    # my own words\n    "
                                             "return g.mean(dim=(-2, -1))")
        cell(nb, "why-z").source = "Because <b>1/Z</b> scales every position alike."

    variant(handout, subs / f"copier_{NOTEBOOK}", renamed_copy)

    def older(nb):  # a handout whose alpha solution had another grade id
        cell(nb, "alpha-solution").metadata["nbgrader"]["grade_id"] = "alpha-v0"
        set_solution(nb, "combine-solution", "    import torch\n    "
                                             "return torch.relu((alpha[..., None, None] * activations).sum(-3))")

    variant(lab / NOTEBOOK, subs / f"older_{NOTEBOOK}", older)
    variant(lab / NOTEBOOK, subs / f"crash_{NOTEBOOK}", lambda nb: nb.cells.insert(2, new_code_cell(
        "import os\nos._exit(1)")))
    variant(lab / NOTEBOOK, subs / f"loop_{NOTEBOOK}", lambda nb: nb.cells.insert(3, new_code_cell(
        "while True:\n    pass")))
    variant(lab / NOTEBOOK, subs / f"stuck_{NOTEBOOK}", lambda nb: nb.cells.insert(3, new_code_cell(
        "import time\nwhile True:\n    try:\n        time.sleep(0.05)\n    except KeyboardInterrupt:\n"
        "        pass  # ignores the interrupt")))
    (subs / f"broken_{NOTEBOOK}").write_text('{"cells": [', encoding="utf-8")
    (subs / "notes.ipynb").write_text("{}", encoding="utf-8")  # matches no notebook: skipped
    out = tmp_path_factory.mktemp("grades")
    results = grade([subs, subs / f"blank_{NOTEBOOK}"], out, timeout=TIMEOUT, budget=120, memory=2,
                    instructor_dir=lab, registry=EXERCISES, jobs=2, progress=False)
    return {r.student: r for r in results}, out, subs


@needs_bwrap
def test_instructor_notebook_scores_full_marks_and_the_handout_zero(graded):
    results, out, _ = graded
    teacher, blank = results["teacher"], results["blank"]
    assert points(teacher) == {"alpha": 2, "combine": 3} and teacher.total == 5 and teacher.max_points == 7
    assert all(e.passed and e.message.startswith("PASS: my_") and "drawn for grading" in e.message
               for e in teacher.exercises)
    assert not teacher.notes
    assert blank.total == 0 and blank.max_points == 7
    assert messages(blank) == {"alpha": "not implemented yet — on gradients of shape (1, 3, 2, 2)",
                               "combine": "not implemented yet — on alpha (1, 3) and A^k (1, 3, 2, 2)"}


@needs_bwrap
def test_a_wrong_answer_that_passes_the_fixed_square_cases_fails_on_drawn_ones(graded):
    wrong = graded[0]["wrong"]
    assert points(wrong) == {"alpha": 0, "combine": 3}
    assert messages(wrong)["alpha"].startswith("wrong values — on gradients of shape (")


@needs_bwrap
def test_the_obvious_one_line_answer_is_not_flagged_and_the_class_report_is_written(graded):
    results, out, _ = graded
    copier, teacher = results["copier"], results["teacher"]  # alpha: the reference's one line, renamed
    assert points(copier)["alpha"] == 2 and [e.copied for e in copier.exercises + teacher.exercises] == [False] * 4
    assert copier.exercises[0].similarity == 1.0 and copier.exercises[0].solution.startswith("def my_alpha(g):")
    assert "FLAG" not in copier.report.read_text(encoding="utf-8")
    assert json.loads((out / "similarity.json").read_text(encoding="utf-8")) == {"pairs": []}  # too short to tell


@needs_bwrap
def test_an_older_handout_costs_only_the_exercise_whose_id_changed(graded):
    older = graded[0]["older"]
    assert points(older) == {"alpha": 0, "combine": 3}
    assert messages(older)["alpha"] == "no solution cell alpha-solution in this notebook (made from an older handout?)"


@needs_bwrap
def test_a_crashing_kernel_does_not_cost_points_that_scoring_decides(graded):
    crash = graded[0]["crash"]
    assert points(crash) == {"alpha": 2, "combine": 3}
    assert any("the kernel died in cell 3" in note for note in crash.notes)


@needs_bwrap
def test_the_cell_timeout_interrupts_the_sandboxed_kernel_and_the_notebook_goes_on(graded):
    results = graded[0]
    loop, stuck = results["loop"], results["stuck"]
    assert loop.total == stuck.total == 5  # scoring does not depend on the kernel
    report = loop.report.read_text(encoding="utf-8")
    assert f"cell 4: GraderTimeout: stopped: the cell ran longer than {TIMEOUT} s" in report
    assert not loop.notes  # the interrupt worked: the same kernel ran the cells after it
    assert report.count("data:image/png;base64,") == 1  # the figure drawn after the loop
    assert any("did not recover from the interrupt: a new kernel ran the cells after it" in n for n in stuck.notes)


@needs_bwrap
def test_unreadable_notebook_scores_zero_and_says_why(graded):
    broken = graded[0]["broken"]
    assert broken.total == 0 and "could not be read as a notebook" in messages(broken)["alpha"]


@needs_bwrap
def test_grades_csv_results_and_marks_template(graded):
    results, out, _ = graded
    rows = list(csv.reader((out / "grades.csv").open(encoding="utf-8")))
    assert rows[0] == ["student", "alpha", "combine", "why-z", "total", "max"]
    by_student = {row[0]: row[1:] for row in rows[1:]}
    assert sorted(by_student) == sorted(results) == ["blank", "broken", "copier", "crash", "loop", "older", "stuck",
                                                      "teacher", "wrong"]
    assert by_student["teacher"] == ["2", "3", "", "5", "7"]
    assert by_student["wrong"] == ["0", "3", "", "3", "7"]
    assert sorted(p.name for p in (out / "results").glob("*.json")) == [f"{s}.json" for s in sorted(results)]
    assert sorted(p.name for p in (out / "results").glob("*.notebooks.html")) == \
        [f"{s}.notebooks.html" for s in sorted(results)]  # what a merge of marks rewrites the reports around
    template = list(csv.reader((out / "marks-template.csv").open(encoding="utf-8")))
    assert template[0] == ["student", "question", "points", "max", "comment"]
    assert ["copier", "why-z", "", "2", ""] in template and len(template) == 1 + len(results)


@needs_bwrap
def test_report_shows_results_written_answers_next_to_the_mark_scheme_and_figures(graded):
    results, out, _ = graded
    report = results["copier"].report.read_text(encoding="utf-8")
    assert results["copier"].report == out / "copier.html"
    assert "2 / 7 points" in report
    assert "Because &lt;b&gt;1/Z&lt;/b&gt; scales every position alike." in report  # escaped, never HTML
    assert "Normalisation divides by the range, and 1/Z scales every value alike." in report
    assert report.index("Because &lt;b&gt;") < report.index("Normalisation divides")  # answer, then scheme
    assert "not marked yet / 2" in report
    assert "# my own words" in report  # the solution code
    teacher = results["teacher"].report.read_text(encoding="utf-8")
    figures = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", teacher)
    assert len(figures) == 1 and len(figures[0]) > 1000


@needs_bwrap
def test_rerun_skips_graded_students_and_regrade_grades_again(graded, lab, tmp_path):
    results, out, subs = graded
    copy = tmp_path / "grades"
    shutil.copytree(out, copy)
    before = (copy / "results" / "wrong.json").read_text(encoding="utf-8")
    (tmp_path / "marks.csv").write_text("student,question,points\nblank,why-z,1\n", encoding="utf-8")
    merge_marks(tmp_path / "marks.csv", copy)
    again = grade([subs / f"wrong_{NOTEBOOK}", subs / f"blank_{NOTEBOOK}"], copy, timeout=TIMEOUT, instructor_dir=lab,
                  registry=EXERCISES, regrade=("blank",), progress=False)
    assert [r.student for r in again] == ["blank", "wrong"]
    assert (copy / "results" / "wrong.json").read_text(encoding="utf-8") == before  # skipped, not re-run
    assert again[0].seconds > 0 and again[1].seconds == results["wrong"].seconds
    assert [q.points for q in again[0].questions] == [1]  # the mark stays with the unchanged answer
    rows = list(csv.reader((copy / "grades.csv").open(encoding="utf-8")))
    assert len(rows) == 1 + len(results)  # the students of the first run are still there
    with pytest.raises(LabError, match="--regrade nobody: no such student"):
        grade([subs / f"wrong_{NOTEBOOK}"], copy, instructor_dir=lab, registry=EXERCISES, regrade=("nobody",),
              progress=False)


@needs_bwrap
def test_manual_marks_merge_into_grades_csv_without_running_anything(graded, tmp_path, capsys):
    results, out, _ = graded
    copy = tmp_path / "grades"
    shutil.copytree(out, copy)
    marks = tmp_path / "marks.csv"
    marks.write_text("student,question,points,max,comment\ncopier,why-z,1.5,2,half right\nteacher,why-z,2,2,\n"
                     "wrong,why-z,,2,not marked yet\n", encoding="utf-8")
    assert main(["grade", "--marks", str(marks), "--out", str(copy)]) == 0
    rows = {row[0]: row[1:] for row in csv.reader((copy / "grades.csv").open(encoding="utf-8"))}
    assert rows["copier"] == ["2", "0", "1.5", "3.5", "7"]
    assert rows["teacher"] == ["2", "3", "2", "7", "7"]
    assert rows["wrong"] == ["0", "3", "", "3", "7"]
    assert "copier: 3.5 / 7" in capsys.readouterr().out
    for bad, why in (("nobody,why-z,1", "no graded student 'nobody'"), ("copier,what,1", "no written answer 'what'"),
                     ("copier,why-z,3", "3 points is outside 0..2"), ("copier,why-z,lots", "is not a number")):
        marks.write_text(f"student,question,points\n{bad}\n", encoding="utf-8")
        before = (copy / "grades.csv").read_bytes()
        assert main(["grade", "--marks", str(marks), "--out", str(copy)]) == 2
        err = capsys.readouterr().err
        assert why in err and err.count("\n") == 1, err
        assert (copy / "grades.csv").read_bytes() == before  # nothing written


def _merged(out: Path) -> tuple[dict, dict]:
    """grades.csv's rows, and what each report's title and written answer say (they must agree)."""
    rows = {row[0]: row[1:] for row in csv.reader((out / "grades.csv").open(encoding="utf-8"))}
    reports = {}
    for student in rows:
        if student != "student":
            page = (out / f"{student}.html").read_text(encoding="utf-8")
            reports[student] = (re.search(r"<h1>[^:]+: (\S+) / 7 points</h1>", page).group(1),
                                re.search(r"<td>(not marked yet|[\d.]+) / 2</td></tr>", page).group(1))
    return rows, reports


@needs_bwrap
def test_marks_merge_per_cell_in_any_order_and_reports_agree_with_grades_csv(graded, tmp_path, capsys):
    """Issue 20 item 4: two assistants fill marks-template.csv; the second merge erased the first's marks."""
    _, out, _ = graded
    first, second = tmp_path / "ta1.csv", tmp_path / "ta2.csv"
    first.write_text("student,question,points,max,comment\ncopier,why-z,1.5,2,\nteacher,why-z,,2,\n"
                     "wrong,why-z,,2,\n", encoding="utf-8")
    second.write_text("student,question,points,max,comment\ncopier,why-z,,2,\nteacher,why-z,2,2,\n"
                      "wrong,why-z,0.5,2,\n", encoding="utf-8")
    finals = []
    for order in ([first, second], [second, first], "together"):
        copy = tmp_path / f"grades-{len(finals)}"
        shutil.copytree(out, copy)
        if order == "together":
            assert main(["grade", "--marks", str(first), "--marks", str(second), "--out", str(copy)]) == 0
        for marks in ([] if order == "together" else order):
            assert main(["grade", "--marks", str(marks), "--out", str(copy)]) == 0
            rows, reports = _merged(copy)
            for student, (total, mark) in reports.items():  # after every merge, not only the last one
                assert (total, mark) == (rows[student][-2], rows[student][-3] or "not marked yet"), student
        finals.append(((copy / "grades.csv").read_text(encoding="utf-8"), _merged(copy)[1]))
    assert finals[0] == finals[1] == finals[2]
    rows, reports = _merged(tmp_path / "grades-0")
    assert rows["copier"] == ["2", "0", "1.5", "3.5", "7"]  # the first file's mark survived the second file
    assert rows["teacher"] == ["2", "3", "2", "7", "7"] and rows["wrong"] == ["0", "3", "0.5", "3.5", "7"]
    assert reports["copier"] == ("3.5", "1.5")
    assert "figure of cell" in (tmp_path / "grades-0" / "teacher.html").read_text(encoding="utf-8")  # still whole
    copy = tmp_path / "grades-0"
    capsys.readouterr()
    for late in ("copier,why-z,-", "wrong,why-z,2"):  # another file, in a later merge: the order would decide
        other = tmp_path / "late.csv"
        other.write_text(f"student,question,points\n{late}\n", encoding="utf-8")
        assert main(["grade", "--marks", str(other), "--out", str(copy)]) == 2
        err = capsys.readouterr().err
        gave = "ta1.csv, line 2" if late.startswith("copier") else "ta2.csv, line 4"
        assert gave in err and f"{other}, line 2" in err and "earlier merge" in err and err.count("\n") == 1, err
    # clearing is an explicit value, given in the file that gave the mark (corrected and merged again)
    first.write_text("student,question,points,max,comment\ncopier,why-z,-,2,\nteacher,why-z,,2,\n"
                     "wrong,why-z,,2,\n", encoding="utf-8")
    second.write_text("student,question,points,max,comment\ncopier,why-z,,2,\nteacher,why-z,clear,2,\n"
                      "wrong,why-z,0.5,2,\n", encoding="utf-8")
    assert main(["grade", "--marks", str(first), "--marks", str(second), "--out", str(copy)]) == 0
    rows, reports = _merged(copy)
    assert rows["copier"][-3:] == ["", "2", "7"] and reports["copier"] == ("2", "not marked yet")
    assert rows["teacher"][-3:] == ["", "5", "7"] and rows["wrong"][-3:] == ["0.5", "3.5", "7"]
    capsys.readouterr()
    before = (copy / "grades.csv").read_bytes()
    third = tmp_path / "ta3.csv"
    third.write_text("student,question,points\nteacher,why-z,1\nwrong,why-z,2\n", encoding="utf-8")
    assert main(["grade", "--marks", str(second), "--marks", str(third), "--out", str(copy)]) == 2
    err = capsys.readouterr().err
    assert f"{second}, line 3" in err and f"{third}, line 2" in err and err.count("\n") == 1, err
    twice = tmp_path / "twice.csv"
    twice.write_text("student,question,points\ncopier,why-z,1\ncopier,why-z,-\n", encoding="utf-8")
    assert main(["grade", "--marks", str(twice), "--out", str(copy)]) == 2
    err = capsys.readouterr().err
    assert f"{twice}, line 2" in err and f"{twice}, line 3" in err, err
    assert (copy / "grades.csv").read_bytes() == before  # nothing written
    second.write_text("student,question,points\nwrong,why-z,1\n", encoding="utf-8")  # the same file, corrected
    assert main(["grade", "--marks", str(second), "--out", str(copy)]) == 0
    assert _merged(copy)[0]["wrong"][-3:] == ["1", "4", "7"]


def test_two_assistants_files_of_the_same_name_are_two_files_and_lines_are_an_editors(graded, tmp_path, capsys):
    """Both assistants fill their copy of marks.csv: the second merge replaced the first one's mark silently
    (a mark remembered the file's name alone). And a conflict's line is the line an editor shows."""
    _, out, _ = graded
    copy = tmp_path / "grades"
    shutil.copytree(out, copy)
    (tmp_path / "ta1").mkdir()
    (tmp_path / "ta2").mkdir()
    mine, theirs = tmp_path / "ta1" / "marks.csv", tmp_path / "ta2" / "marks.csv"
    mine.write_text("student,question,points\ncopier,why-z,2\n", encoding="utf-8")
    theirs.write_text("student,question,points\ncopier,why-z,0\n", encoding="utf-8")
    assert main(["grade", "--marks", str(mine), "--out", str(copy)]) == 0
    capsys.readouterr()
    assert main(["grade", "--marks", str(theirs), "--out", str(copy)]) == 2
    err = capsys.readouterr().err
    assert f"{mine}, line 2" in err and f"{theirs}, line 2" in err and "earlier merge" in err, err
    assert _merged(copy)[0]["copier"][-3] == "2"  # the first mark kept
    shifted = tmp_path / "shifted.csv"  # a comment with a line break, a blank line, then the conflict
    shifted.write_text('student,question,points,comment\nteacher,why-z,1,"good,\nbut short"\n\n'
                       "teacher,why-z,2,\n", encoding="utf-8")
    assert main(["grade", "--marks", str(shifted), "--out", str(copy)]) == 2
    err = capsys.readouterr().err
    assert f"{shifted}, line 2" in err and f"{shifted}, line 5" in err, err


def test_spreadsheet_formulas_are_neutralised_and_ids_make_safe_file_names():
    for value in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"):
        assert spreadsheet_safe(value) == "'" + value and from_spreadsheet(spreadsheet_safe(value)) == value
    assert spreadsheet_safe("alice") == "alice" and from_spreadsheet("'quoted") == "'quoted"
    assert file_name("alice") == "alice"
    for student in ("../../etc/passwd", "a/b", "grades", ".hidden", "=x"):
        name = file_name(student)
        assert "/" not in name and not name.startswith(".") and name != "grades"
    assert file_name("a/b") != file_name("a_b")


@needs_bwrap
def test_no_sandbox_says_what_it_leaves_open_and_forgeries_still_earn_nothing(lab, handout, tmp_path, capsys,
                                                                             monkeypatch):
    subs = tmp_path / "subs"
    shutil.copy(lab / NOTEBOOK, subs.mkdir() or subs / f"teacher_{NOTEBOOK}")
    variant(handout, subs / f"forger_{NOTEBOOK}", lambda nb: (
        nb.cells.insert(2, new_code_cell("import torch\ntorch.allclose = lambda *a, **k: True\n"
                                         "get_ipython().showtraceback = lambda *a, **k: print('PASS')")),
        set_solution(nb, "alpha-solution", "    import torch\n    torch.allclose = lambda *a, **k: True\n"
                                           "    return torch.zeros(gradients.shape[:-2])")))
    monkeypatch.setattr("labutils.instructor.grading.default_registry", lambda: EXERCISES)
    assert main(["grade", str(subs), "--out", str(tmp_path / "g"), "--notebooks", str(lab), "--no-sandbox",
                 "--timeout", str(TIMEOUT)]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("warning: --no-sandbox") == 1 and "reads the answers from disk" in captured.err
    rows = {row[0]: row[1:] for row in csv.reader((tmp_path / "g" / "grades.csv").open(encoding="utf-8"))}
    assert rows["teacher"][:2] == ["2", "3"] and rows["forger"][:2] == ["0", "0"]


def test_without_bubblewrap_grade_refuses_in_one_line(lab, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    assert main(["grade", str(lab / NOTEBOOK), "--notebooks", str(lab), "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "apt-get install bubblewrap" in err and "--no-sandbox" in err
    assert not (tmp_path / "g").exists()


# ---------------------------------------------------------------- matching files to students


def test_student_id_comes_from_the_file_or_folder_name(tmp_path):
    lab = ["02_hooks.ipynb", "03_gradcam_math.ipynb"]
    assert match_submission(Path("x/alice_03_gradcam_math.ipynb"), lab) == ("alice", "03_gradcam_math.ipynb")
    assert match_submission(Path("bob/03_gradcam_math.ipynb"), lab) == ("bob", "03_gradcam_math.ipynb")
    assert match_submission(Path("Carol Smith - 02_hooks.ipynb"), lab) == ("Carol Smith", "02_hooks.ipynb")
    assert match_submission(Path("x03_gradcam_math.ipynb"), lab) is None
    assert match_submission(Path("alice_01_architectures.ipynb"), lab) is None
    (tmp_path / "dave").mkdir()
    for name in ("dave/02_hooks.ipynb", "dave/.ipynb_checkpoints/02_hooks-checkpoint.ipynb", "eve_02_hooks.ipynb",
                 "readme.ipynb"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}", encoding="utf-8")
    os.symlink("/etc/passwd", tmp_path / "link_02_hooks.ipynb")
    os.symlink(tmp_path / "dave", tmp_path / "linked")
    students, skipped = collect([tmp_path, tmp_path / "eve_02_hooks.ipynb"], lab)  # eve's file given twice
    assert students == {"dave": {"02_hooks.ipynb": [tmp_path / "dave/02_hooks.ipynb"]},
                        "eve": {"02_hooks.ipynb": [tmp_path / "eve_02_hooks.ipynb"]}}
    assert sorted(line.split(":")[0] for line in skipped) == [
        f"refused {tmp_path / 'link_02_hooks.ipynb'}", f"refused {tmp_path / 'linked'}",
        f"skipped {tmp_path / 'readme.ipynb'}"]
    (tmp_path / "dave_02_hooks.ipynb").write_text("{}", encoding="utf-8")
    students, _ = collect([tmp_path], lab)
    assert len(students["dave"]["02_hooks.ipynb"]) == 2  # a conflict, kept for dave's row to report
    with pytest.raises(LabError, match="does not exist"):
        collect([tmp_path / "nowhere"], lab)


def test_grade_command_errors_are_one_line(tmp_path, lab, capsys, monkeypatch):
    monkeypatch.setattr("labutils.instructor.grading.default_registry", lambda: EXERCISES)
    assert main(["grade", str(tmp_path / "nowhere"), "--notebooks", str(lab), "--no-sandbox"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not exist" in err and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    assert main(["grade", str(tmp_path / "empty"), "--notebooks", str(lab), "--out", str(tmp_path / "g"),
                 "--no-sandbox"]) == 2
    assert "no .ipynb files" in capsys.readouterr().err
    assert main(["grade", "--out", str(tmp_path / "g")]) == 2
    assert "give the submissions to grade" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


# ---------------------------------------------------------------- student versions (synthetic)


def test_student_version_replaces_solutions_and_keeps_the_rest(lab):
    source = nbformat.read(lab / NOTEBOOK, as_version=4)
    source.cells[3].outputs = [nbformat.v4.new_output("stream", name="stdout", text="PASS: alpha\n")]
    source.cells[3].execution_count = 4
    source.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    nb = student_version(source, NOTEBOOK)
    nbformat.validate(nb)
    assert "widgets" not in nb.metadata and "widgets" in source.metadata  # the original is untouched
    assert len(nb.cells) == len(source.cells)
    alpha = cell(nb, "alpha-solution").source
    assert alpha == ('def my_alpha(gradients):\n    """Equation (1): average over the h*w positions."""\n'
                     '    # YOUR CODE HERE\n    raise NotImplementedError()')
    namespace: dict = {}
    exec(compile(alpha, "cell", "exec"), namespace)  # still a valid function, that says it is unfinished
    with pytest.raises(NotImplementedError):
        namespace["my_alpha"](1)
    assert cell(nb, "why-z").source == "Why does 1/Z drop out after normalisation?\n\nYOUR ANSWER HERE"
    for before, after in zip(source.cells, nb.cells):
        assert after.metadata == before.metadata and after.get("id") == before.get("id")
        if after.cell_type == "code":
            assert after.outputs == [] and after.execution_count is None
            if "BEGIN SOLUTION" not in before.source:
                assert after.source == before.source


def test_student_command_writes_every_notebook(lab, tmp_path, capsys):
    assert main(["student", str(lab / "00_intro.ipynb"), str(lab / NOTEBOOK), "--out", str(tmp_path / "h")]) == 0
    written = capsys.readouterr().out.split()
    assert written == [str(tmp_path / "h" / "00_intro.ipynb"), str(tmp_path / "h" / NOTEBOOK)]
    assert "gradients.mean" not in (tmp_path / "h" / NOTEBOOK).read_text(encoding="utf-8")


def test_unpaired_markers_are_an_error_and_nothing_is_written(lab, tmp_path):
    bad = variant(lab / NOTEBOOK, tmp_path / "in" / "02_bad.ipynb",
                  lambda nb: setattr(cell(nb, "combine-solution"), "source",
                                     cell(nb, "combine-solution").source.replace("    ### END SOLUTION", "")))
    with pytest.raises(LabError, match=r"02_bad.ipynb, cell 6: the BEGIN marker on line 3 has no END marker"):
        make_student_versions([lab / NOTEBOOK, bad], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(LabError, match="would overwrite the solutions"):
        make_student_versions([lab / NOTEBOOK], lab)


# ---------------------------------------------------------------- the real lab


def lab_notebooks() -> list[Path]:
    return sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def solution_lines(nb: nbformat.NotebookNode) -> set[str]:
    """The non-trivial lines between the solution markers that appear nowhere else in the notebook."""
    inside, outside = set(), set()
    for cell in nb.cells:
        marked = False
        for line in cell.source.split("\n"):
            text = line.strip()
            if re.fullmatch(r"(### (BEGIN|END) SOLUTION|=== (BEGIN|END) MARK SCHEME ===)", text):
                marked = text.startswith(("### BEGIN", "=== BEGIN"))
                continue
            (inside if marked else outside).add(text)
    return {line for line in inside - outside if len(line) >= 8 and not line.startswith("#")}


def test_lab_student_versions_hold_no_solution(tmp_path):
    notebooks = lab_notebooks()
    written = make_student_versions(notebooks, tmp_path)
    assert [p.name for p in written] == [p.name for p in notebooks]
    secrets_found = 0
    for source, target in zip(notebooks, written):
        instructor = nbformat.read(source, as_version=4)
        student = nbformat.read(target, as_version=4)
        nbformat.validate(student)
        text = "\n".join(cell.source for cell in student.cells)
        lines = {line.strip() for line in text.split("\n")}
        secrets = solution_lines(instructor)
        secrets_found += len(secrets)
        assert not secrets & lines, f"solution lines left in {target.name}"
        assert "BEGIN SOLUTION" not in text and "MARK SCHEME" not in text
        assert all(c.outputs == [] and c.execution_count is None for c in student.cells if c.cell_type == "code")
        for cell in student.cells:
            if cell.cell_type == "code" and "raise NotImplementedError()" in cell.source:
                ast.parse("\n".join("#" + x if x.lstrip().startswith("%") else x for x in cell.source.split("\n")))
    assert secrets_found >= 6  # one exercise or more per id: the test would see a solution left behind


@pytest.fixture(scope="module")
def lab_env():
    """Untrained weights and the shared sample images, as CI runs the notebooks."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LABUTILS_WEIGHTS", "random")
        if not os.environ.get("LABUTILS_DATA"):
            mp.setenv("LABUTILS_DATA", str(REPO_ROOT.parent / "shared" / "data"))
        yield


def first_check(nb: nbformat.NotebookNode) -> int:
    """The index of the notebook's first check cell (len(nb.cells) if it has none)."""
    graded = [n for n, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade")]
    return graded[0] if graded else len(nb.cells)


def test_lab_student_notebook_reports_its_first_unfinished_exercise_in_one_line_and_goes_on(tmp_path, lab_env):
    """The student version of the notebook that reaches its first exercise soonest, run up to that check."""
    students = [nbformat.read(p, as_version=4) for p in make_student_versions(lab_notebooks(), tmp_path)]
    with_checks = [nb for nb in students if first_check(nb) < len(nb.cells)]
    nb = min(with_checks, key=lambda nb: sum(c.cell_type == "code" for c in nb.cells[: first_check(nb)]))
    check = first_check(nb)
    nb.cells = nb.cells[: check + 1]
    NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=False,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # no cell raises
    grade_id = nb.cells[check].metadata["nbgrader"]["grade_id"]
    printed = "".join(o.get("text", "") for o in nb.cells[check].outputs if o.output_type == "stream")
    assert len(printed.strip().splitlines()) == 1, printed
    assert printed.startswith(f"FAIL: {grade_id}: not implemented yet — write "), printed


@needs_bwrap
def test_lab_grading_instructor_full_marks_student_zero(tmp_path, lab_env):
    """The real lab end to end: the instructor's notebooks score full marks, their student versions zero."""
    from labutils.instructor.grading import default_registry

    registry = default_registry()
    notebooks = sorted({REPO_ROOT / "notebooks" / e.notebook for e in registry})
    (tmp_path / "instructor").mkdir()
    for path in notebooks:
        shutil.copy(path, tmp_path / "instructor" / path.name)
    make_student_versions(notebooks, tmp_path / "student")
    results = grade([tmp_path / "instructor", tmp_path / "student"], tmp_path / "grades", jobs=2, progress=False)
    by_student = {r.student: r for r in results}
    assert sorted(by_student) == ["instructor", "student"]
    instructor, student = by_student["instructor"], by_student["student"]
    assert sorted(e.grade_id for e in instructor.exercises) == sorted(e.grade_id for e in registry)
    assert all(e.passed for e in instructor.exercises), [e.message for e in instructor.exercises if not e.passed]
    auto = sum(e.max_points for e in instructor.exercises)
    assert sum(e.points for e in instructor.exercises) == auto > 0
    assert sum(e.points for e in student.exercises) == 0
    for e in student.exercises:
        assert "not implemented" in e.message.lower(), e.message
    assert instructor.questions and [q.grade_id for q in student.questions] == [q.grade_id for q in
                                                                                instructor.questions]
    assert all("YOUR ANSWER HERE" in q.answer and q.scheme and q.scheme not in q.answer for q in student.questions)
    report = instructor.report.read_text(encoding="utf-8")
    assert report.count("data:image/png;base64,") >= 3  # the notebooks' own figures
    print(f"graded the lab twice in {instructor.seconds:.0f} s (instructor) and {student.seconds:.0f} s (student) "
          "of notebook time")


# ---------------------------------------------------------------- a class: --no-execute, shards and merge, feedback


FORGED = "<script>document.title='owned'</script><b>PASS: alpha</b>"


@pytest.fixture(scope="module")
def fast(graded, lab, handout, tmp_path_factory):
    """The same submissions (and a forger whose file holds HTML, a script and a PASS) graded with --no-execute."""
    _, _, subs = graded
    extra = tmp_path_factory.mktemp("forger")

    def forge(nb):
        check = cell(nb, "alpha")
        check.outputs = [nbformat.v4.new_output("stream", name="stdout", text="PASS: alpha\n"),
                         nbformat.v4.new_output("display_data", data={"text/html": FORGED, "text/plain": "ok"})]
        check.execution_count = 4

    variant(handout, extra / f"forger_{NOTEBOOK}", forge)
    out = tmp_path_factory.mktemp("fast")
    results = grade([subs, subs / f"blank_{NOTEBOOK}", extra], out, instructor_dir=lab, registry=EXERCISES,
                    jobs=2, progress=False, execute=False, feedback=True)
    return {r.student: r for r in results}, out, [subs, subs / f"blank_{NOTEBOOK}", extra]


def without_timing(text: str) -> dict:
    data = json.loads(text)
    data.pop("seconds")
    for e in data["exercises"]:  # the cases drawn for grading are fresh in every run
        e["message"] = re.sub(r" — on .* \(drawn for grading\)$", " — on (a drawn case)", e["message"])
    return data


@needs_bwrap
def test_no_execute_gives_the_same_points_as_the_full_mode_for_every_submission(graded, fast):
    full, fast_results = graded[0], fast[0]
    assert sorted(fast_results) == sorted([*full, "forger"])
    for student, result in full.items():
        assert [(e.grade_id, e.points, e.passed) for e in fast_results[student].exercises] == \
               [(e.grade_id, e.points, e.passed) for e in result.exercises], student
    assert points(fast_results["forger"]) == {"alpha": 0, "combine": 0}  # its printed PASS counts for nothing
    assert fast_results["teacher"].total == 5 and not fast_results["loop"].notes  # nothing ran: no timeout


@needs_bwrap
def test_no_execute_report_shows_the_submitted_outputs_escaped_and_labelled(fast):
    results, out, _ = fast
    report = results["forger"].report.read_text(encoding="utf-8")
    assert "<script>" not in report and "&lt;script&gt;document.title" in report
    assert "NOT re-run by the grader" in report and "a PASS printed here proves nothing" in report
    assert "[text/html, shown as text, not rendered]" in report
    assert report.index("0 / 7 points") < report.index("Outputs as submitted")
    teacher = results["teacher"].report.read_text(encoding="utf-8")
    assert "holds no outputs" in teacher and "data:image/png" not in teacher  # no figure: nothing was run


@needs_bwrap
def test_feedback_holds_no_mark_scheme_no_flag_and_nothing_of_another_student(fast):
    results, out, _ = fast
    files = sorted(p.name for p in (out / "feedback").iterdir())
    assert files == sorted(f"{s}.html" for s in results)
    copier = (out / "feedback" / "copier.html").read_text(encoding="utf-8")
    assert "copier: 2 / 7 points" in copier and "judge it yourself" not in copier  # the FLAG's text
    assert "Because &lt;b&gt;1/Z&lt;/b&gt; scales every position alike." in copier and "not marked yet / 2" in copier
    for path in (out / "feedback").iterdir():
        text = path.read_text(encoding="utf-8")
        answers = "".join(q.answer for q in results[path.stem].questions)  # made from the instructor's notebook:
        assert text.count("Normalisation divides") == answers.count("Normalisation divides")  # the scheme is theirs
        assert "FLAG" not in text and "is in this solution" not in text  # the copy check's FLAG and score
        if path.name != "copier.html":
            assert "Because &lt;b&gt;1/Z" not in text  # another student's answer
        assert text.count("<h1>") == 1 and f"<h1>{path.stem}: " in text  # one student's page
    wrong = (out / "feedback" / "wrong.html").read_text(encoding="utf-8")
    cause = results["wrong"].exercises[0].message
    assert cause.startswith("wrong values — on ") and html.escape(cause) in wrong  # the cause of the FAIL


@needs_bwrap
def test_shards_merge_into_exactly_what_one_run_writes(fast, lab, tmp_path, capsys, monkeypatch):
    results, one, submissions = fast
    monkeypatch.setattr("labutils.instructor.grading.default_registry", lambda: EXERCISES)
    shards = []
    for i in (1, 2, 3):
        shards.append(tmp_path / f"shard{i}")
        given = [str(p) for p in (submissions if i != 2 else reversed(submissions))]  # the order does not matter
        assert main(["grade", *given, "--notebooks", str(lab), "--no-execute", "--shard", f"{i}/3", "--out",
                     str(shards[-1])]) == 0
    held = [json.loads((s / "shard.json").read_text())["students"] for s in shards]
    assert sorted(sum(held, [])) == sorted(results) and all(held)  # each student in exactly one shard
    assert [shard_of(s, 3) for s in held[1]] == [2] * len(held[1])
    merged = tmp_path / "merged"
    assert main(["grade", "--merge", *map(str, shards), "--out", str(merged), "--feedback"]) == 0
    assert (merged / "grades.csv").read_bytes() == (one / "grades.csv").read_bytes()
    assert (merged / "marks-template.csv").read_bytes() == (one / "marks-template.csv").read_bytes()
    assert (merged / "similarity.json").read_bytes() == (one / "similarity.json").read_bytes()
    names = sorted(p.name for p in (one / "results").iterdir())
    assert sorted(p.name for p in (merged / "results").iterdir()) == names
    for name in names:  # the results (timing aside), and the notebooks' part of each report (as written)
        mine, theirs = (merged / "results" / name).read_text(), (one / "results" / name).read_text()
        assert (without_timing(mine) == without_timing(theirs)) if name.endswith(".json") else mine == theirs, name
    assert sorted(p.name for p in (merged / "feedback").iterdir()) == sorted(p.name for p in (one / "feedback").iterdir())
    assert all((merged / f"{s}.html").is_file() for s in results) and not (merged / "shard.json").exists()
    capsys.readouterr()

    def refused(*folders, why):
        before = (merged / "grades.csv").read_bytes()
        assert main(["grade", "--merge", *map(str, folders), "--out", str(merged)]) == 2
        err = capsys.readouterr().err
        assert why in err and err.count("\n") == 1, err
        assert (merged / "grades.csv").read_bytes() == before  # nothing written

    refused(shards[0], shards[2], why="shard(s) 2/3 missing")
    refused(shards[0], shards[0], why="are both shard 1/3")
    other = tmp_path / "other"  # a student graded differently in another folder
    shutil.copytree(shards[0], other)
    (other / "shard.json").unlink()
    victim = held[0][0]
    data = json.loads((other / "results" / f"{victim}.json").read_text())
    data["exercises"][1]["points"] = 3.0 - data["exercises"][1]["points"]
    data["exercises"][1]["passed"] = not data["exercises"][1]["passed"]
    (other / "results" / f"{victim}.json").write_text(json.dumps(data))
    refused(*shards, other, why=f"{victim} was graded differently in")
    # marks given after a merge stay with their answers when the shards are merged again (the per-cell rule)
    (tmp_path / "marks.csv").write_text("student,question,points\ncopier,why-z,1.5\n", encoding="utf-8")
    assert main(["grade", "--marks", str(tmp_path / "marks.csv"), "--out", str(merged), "--feedback"]) == 0
    assert "1.5 / 2" in (merged / "feedback" / "copier.html").read_text(encoding="utf-8")
    assert main(["grade", "--merge", *map(str, shards), "--out", str(merged)]) == 0
    rows = {row[0]: row[1:] for row in csv.reader((merged / "grades.csv").open(encoding="utf-8"))}
    assert rows["copier"] == ["2", "0", "1.5", "3.5", "7"]


def test_a_shard_is_a_stable_hash_of_the_student_id(capsys, tmp_path):
    for student in ("alice", "bob", "Carol Smith", "émile"):
        digest = hashlib.sha256(student.encode()).digest()
        assert shard_of(student, 7) == 1 + int.from_bytes(digest[:8], "big") % 7
    assert shard_of("alice", 1) == 1
    counts = collections.Counter(shard_of(f"student{n:03d}", 4) for n in range(400))
    assert sorted(counts) == [1, 2, 3, 4] and min(counts.values()) > 70  # about 100 each
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/4", "5/4", "2", "a/b", "-1/3"):
        with pytest.raises(LabError, match="give I/N with 1 <= I <= N"):
            parse_shard(bad)
    assert main(["grade", "x.ipynb", "--shard", "5/4", "--out", str(tmp_path / "g")]) == 2
    assert "--shard 5/4" in capsys.readouterr().err
    assert main(["grade", "--merge", str(tmp_path / "nowhere"), "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert "holds no results/ folder" in err and err.count("\n") == 1 and not (tmp_path / "g").exists()


def test_progress_shows_students_failures_and_time_left():
    log = io.StringIO()
    progress = Progress(3, stream=log, terminal=False)
    progress.student("alice")
    progress.student("bob", failed=True)
    progress.student("carol")
    lines = log.getvalue().splitlines()
    assert lines[0] == "grading: 3 students to grade"
    assert re.fullmatch(r"grading: 1/3 students done, 0 failures, about \d+ s left \(last: alice\)", lines[1])
    assert re.fullmatch(r"grading: 2/3 students done, 1 failure, about \d+ s left \(last: bob, FAILED\)", lines[2])
    assert re.fullmatch(r"grading: 3/3 students done, 1 failure, took \d+ s \(last: carol\)", lines[3])
    screen = io.StringIO()
    bar = Progress(4, stream=screen, terminal=True)
    bar.student("alice", failed=True)
    bar.student("bob")
    bar.close()
    shown = screen.getvalue()
    assert "2/4" in shown and "failures=1" in shown and "<" in shown  # tqdm's elapsed<left
    quiet = io.StringIO()
    Progress(2, stream=quiet, enabled=False).student("alice")
    assert quiet.getvalue() == ""
