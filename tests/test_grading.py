"""Student versions and grading (``python -m labutils student`` / ``grade``).

Most cases run on a tiny synthetic lab written into a temporary folder: two notebooks whose check
cells call a tiny check module (``tinychecks``, no torch), so a kernel runs each in a second or two.
One grading run covers every kind of submission (right, untouched, wrong, cheating, looping, stuck,
crashing, missing import, megabytes of output, unreadable, incomplete). The real lab is graded once:
its instructor notebooks and their student versions, with untrained weights.
"""

from __future__ import annotations

import ast
import csv
import os
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from labutils.cli import main
from labutils.errors import LabError
from labutils.grading import OUTPUT_CAP, collect, grade, match_submission
from labutils.student import REPO_ROOT, make_student_versions, student_version

TINYCHECKS = '''
class ExerciseError(AssertionError):
    def _render_traceback_(self):
        return [f"FAIL: {self}"]


def _call(exercise, fn, *args):
    try:
        return fn(*args)
    except NotImplementedError:
        raise ExerciseError(f"{exercise}: not implemented yet — write {fn.__name__} above") from None


def _check(exercise, fn, arg, expected):
    got = _call(exercise, fn, arg)
    if got != expected:
        raise ExerciseError(f"{exercise}: {fn.__name__}({arg!r}) should be {expected!r}, got {got!r}")
    print(f"PASS: {exercise} — {fn.__name__}({arg!r}) == {expected!r}")


def check_double(fn):
    _check("double", fn, 21, 42)


def check_square(fn):
    _check("square", fn, 7, 49)


def check_shout(fn):
    _check("shout", fn, "hi", "HI!")
'''

KERNELSPEC = {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}}


def solution_meta(grade_id: str) -> dict:
    return {"nbgrader": {"grade": False, "solution": True, "locked": False, "grade_id": grade_id,
                         "schema_version": 3}}


def check_meta(grade_id: str, points: int) -> dict:
    return {"nbgrader": {"grade": True, "solution": False, "locked": True, "grade_id": grade_id, "points": points,
                         "schema_version": 3}}


def exercise(name: str, doc: str, body: str, points: int) -> list:
    """An exercise cell (the solution between the markers) and its check cell."""
    lines = "\n".join("    " + line for line in body.split("\n"))
    source = f'def {name}(x):\n    """{doc}"""\n    ### BEGIN SOLUTION\n{lines}\n    ### END SOLUTION'
    return [new_code_cell(source, metadata=solution_meta(f"{name}-solution")),
            new_code_cell(f"# NBVAL_CHECK_OUTPUT\ncheck_{name}({name})", metadata=check_meta(name, points))]


def tiny_lab(folder: Path) -> Path:
    """The synthetic lab: 00_intro (no exercise), 01_tiny (double 2 points, square 3), 02_more (shout 1)."""
    folder.mkdir(parents=True)
    intro = new_notebook(metadata=KERNELSPEC, cells=[new_markdown_cell("# Intro"), new_code_cell("print('hello')")])
    tiny = new_notebook(metadata=KERNELSPEC, cells=[
        new_markdown_cell("# Tiny lab"),
        new_code_cell("%matplotlib inline\nfrom tinychecks import check_double, check_square"),
        *exercise("double", "Twice x.", "y = 2 * x\nreturn y", 2),
        new_code_cell("import matplotlib.pyplot as plt\n\nfig, ax = plt.subplots(figsize=(2, 2))\n"
                      "ax.plot([1, 3, 2])\nax.set_title('tiny')\nplt.show()"),
        *exercise("square", "x squared.", "return x ** 2", 3),
        new_markdown_cell("Why do squares grow?\n\n=== BEGIN MARK SCHEME ===\nBecause x * x > x for x > 1.\n"
                          "=== END MARK SCHEME ===\n"),
    ])  # fmt: skip
    more = new_notebook(metadata=KERNELSPEC, cells=[
        new_code_cell("from tinychecks import check_shout"),
        *exercise("shout", "x in capitals, with '!'.", "return x.upper() + '!'", 1),
    ])  # fmt: skip
    for name, nb in (("00_intro", intro), ("01_tiny", tiny), ("02_more", more)):
        nbformat.write(nb, folder / f"{name}.ipynb")
    return folder


def edited(source: Path, target: Path, change) -> Path:
    """A copy of notebook ``source`` at ``target``, changed by ``change(nb)``."""
    nb = nbformat.read(source, as_version=4)
    change(nb)
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)
    return target


def cell_with(nb: nbformat.NotebookNode, grade_id: str) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def set_body(nb: nbformat.NotebookNode, grade_id: str, old: str, new: str) -> None:
    cell = cell_with(nb, grade_id)
    assert old in cell.source
    cell.source = cell.source.replace(old, new)


def points(result) -> dict[str, float]:
    return {e.grade_id: e.points for e in result.exercises}


def messages(result) -> dict[str, str]:
    return {e.grade_id: e.message for e in result.exercises}


# ---------------------------------------------------------------- one grading run of the synthetic lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tinylab")
    (root / "modules").mkdir()
    (root / "modules" / "tinychecks.py").write_text(TINYCHECKS, encoding="utf-8")
    return tiny_lab(root / "instructor")


@pytest.fixture(scope="module")
def kernel_path(lab):
    """The kernels find ``tinychecks`` on PYTHONPATH."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(lab.parent / "modules"),
                                                              os.environ.get("PYTHONPATH")])))
        yield


@pytest.fixture(scope="module")
def graded(lab, kernel_path, tmp_path_factory):
    """Every kind of submission, graded in one run: (results by student, output folder)."""
    subs = tmp_path_factory.mktemp("submissions")
    tiny, more = lab / "01_tiny.ipynb", lab / "02_more.ipynb"
    shutil.copytree(lab, subs / "teacher")  # alice/01_tiny.ipynb style; 00_intro is skipped (no exercise)
    blank = make_student_versions([tiny, more], subs / "handout")
    for path in blank:
        shutil.copy(path, subs / f"blank_{path.name}")  # blank_01_tiny.ipynb style
    shutil.rmtree(subs / "handout")
    edited(tiny, subs / "wrong_01_tiny.ipynb", lambda nb: set_body(nb, "double-solution", "2 * x", "3 * x"))

    def cheat(nb):  # a wrong double, its own check_double, and an edited check cell
        set_body(nb, "double-solution", "2 * x", "3 * x")
        nb.cells.insert(1, new_code_cell('def check_double(fn):\n    print("PASS: double — trust me")'))
        cell_with(nb, "double").source = 'print("PASS: double")'

    edited(tiny, subs / "cheat_01_tiny.ipynb", cheat)
    edited(tiny, subs / "deleted_01_tiny.ipynb", lambda nb: nb.cells.remove(cell_with(nb, "square")))
    edited(tiny, subs / "loop_01_tiny.ipynb",
           lambda nb: set_body(nb, "double-solution", "y = 2 * x", "while True:\n        pass"))
    stuck_cell = "import time\nwhile True:\n    try:\n        time.sleep(0.05)\n    except KeyboardInterrupt:\n" \
                 "        pass  # ignores the interrupt"
    edited(tiny, subs / "stuck_01_tiny.ipynb", lambda nb: nb.cells.insert(4, new_code_cell(stuck_cell)))
    edited(tiny, subs / "noimport_01_tiny.ipynb",
           lambda nb: set_body(nb, "double-solution", "def double", "import nonexistent_module_xyz\n\ndef double"))

    def spam(nb):  # 5 MB printed by a cell, 3 MB printed by square while its check runs
        nb.cells.insert(2, new_code_cell("for _ in range(5000):\n    print('x' * 1000)"))
        set_body(nb, "square-solution", "return x ** 2", "print('y' * 3_000_000)\n    return x ** 2")

    edited(tiny, subs / "spam_01_tiny.ipynb", spam)
    edited(tiny, subs / "crash_01_tiny.ipynb",
           lambda nb: set_body(nb, "double-solution", "y = 2 * x", "import os\n    os._exit(1)"))
    shutil.copy(tiny, subs / "broken_01_tiny.ipynb")
    (subs / "broken_02_more.ipynb").write_text('{"cells": [', encoding="utf-8")
    (subs / "notes.ipynb").write_text("{}", encoding="utf-8")  # matches no notebook: skipped
    out = tmp_path_factory.mktemp("grades")
    results = grade([subs], out, timeout=6, instructor_dir=lab, jobs=2, progress=False)
    return {r.student: r for r in results}, out


def test_instructor_notebooks_score_full_marks(graded):
    results, out = graded
    teacher = results["teacher"]
    assert points(teacher) == {"double": 2, "square": 3, "shout": 1}
    assert teacher.total == teacher.max_points == 6
    assert all(e.passed and e.message.startswith(f"PASS: {e.grade_id}") for e in teacher.exercises)
    assert not teacher.notes


def test_grades_csv(graded):
    results, out = graded
    rows = list(csv.reader((out / "grades.csv").open(encoding="utf-8")))
    assert rows[0] == ["student", "double", "square", "shout", "total", "max"]
    by_student = {row[0]: row[1:] for row in rows[1:]}
    assert sorted(by_student) == sorted(results) == sorted(
        ["teacher", "blank", "wrong", "cheat", "deleted", "loop", "stuck", "noimport", "spam", "crash", "broken"])
    assert by_student["teacher"] == ["2", "3", "1", "6", "6"]
    assert by_student["wrong"] == ["0", "3", "0", "3", "6"]


def test_untouched_student_versions_score_zero(graded):
    blank = graded[0]["blank"]
    assert blank.total == 0 and blank.max_points == 6
    for e in blank.exercises:
        assert e.message == f"ExerciseError: {e.grade_id}: not implemented yet — write {e.grade_id} above"


def test_one_wrong_exercise_loses_exactly_its_points(graded):
    wrong = graded[0]["wrong"]
    assert points(wrong) == {"double": 0, "square": 3, "shout": 0}
    assert messages(wrong)["double"] == "ExerciseError: double: double(21) should be 42, got 63"
    assert messages(wrong)["shout"] == "02_more.ipynb was not submitted"


def test_redefined_check_function_and_edited_check_cell_do_not_pass(graded):
    cheat = graded[0]["cheat"]
    assert points(cheat)["double"] == 0 and points(cheat)["square"] == 3
    assert messages(cheat)["double"] == "ExerciseError: double: double(21) should be 42, got 63"
    assert any("check cell double was edited" in note for note in cheat.notes)


def test_deleted_check_cell_is_restored(graded):
    deleted = graded[0]["deleted"]
    assert points(deleted)["square"] == 3
    assert any("check cell square was missing" in note for note in deleted.notes)


def test_infinite_loop_is_stopped_at_the_timeout_and_the_rest_is_graded(graded):
    loop = graded[0]["loop"]
    assert points(loop) == {"double": 0, "square": 3, "shout": 0}
    assert "ran longer than 6 s" in messages(loop)["double"]


def test_a_kernel_stuck_after_the_interrupt_is_replaced(graded):
    stuck = graded[0]["stuck"]
    assert points(stuck) == {"double": 2, "square": 3, "shout": 0}  # the loop sat between the two exercises
    assert any("did not recover from the interrupt" in note for note in stuck.notes)


def test_missing_import_costs_that_exercise_only(graded):
    results, out = graded
    noimport = results["noimport"]
    assert points(noimport) == {"double": 0, "square": 3, "shout": 0}
    assert messages(noimport)["double"] == "NameError: name 'double' is not defined"
    report = results["noimport"].report.read_text(encoding="utf-8")
    assert "ModuleNotFoundError: No module named &#x27;nonexistent_module_xyz&#x27;" in report


def test_megabytes_of_output_are_cut(graded):
    spam = graded[0]["spam"]
    assert points(spam) == {"double": 2, "square": 3, "shout": 0}  # the PASS line after 3 MB still counts
    cut = [note for note in spam.notes if f"more than {OUTPUT_CAP} characters of text" in note]
    assert len(cut) == 2
    assert spam.report.stat().st_size < 200_000


def test_a_crashing_kernel_costs_the_exercise_it_crashed_in(graded):
    crash = graded[0]["crash"]
    assert points(crash) == {"double": 0, "square": 3, "shout": 0}
    assert "died" in messages(crash)["double"]
    assert any("the kernel died" in note for note in crash.notes)


def test_unreadable_notebook_scores_zero_and_says_why(graded):
    broken = graded[0]["broken"]
    assert points(broken) == {"double": 2, "square": 3, "shout": 0}
    assert "02_more.ipynb could not be read as a notebook" in messages(broken)["shout"]


def test_report_shows_results_errors_and_figures(graded):
    results, out = graded
    report = (out / "wrong.html").read_text(encoding="utf-8")
    assert results["wrong"].report == out / "wrong.html"
    assert "3 / 6 points" in report
    assert "double(21) should be 42, got 63" in report
    assert report.count("class='fail'") == 2 and report.count("class='pass'") == 1
    assert "y = 3 * x" in report  # the student's own solution code
    figures = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", report)
    assert len(figures) == 1 and len(figures[0]) > 1000


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
    students, skipped = collect([tmp_path], lab)
    assert students == {"dave": {"02_hooks.ipynb": tmp_path / "dave/02_hooks.ipynb"},
                        "eve": {"02_hooks.ipynb": tmp_path / "eve_02_hooks.ipynb"}}
    assert len(skipped) == 1 and "readme.ipynb" in skipped[0]
    (tmp_path / "dave_02_hooks.ipynb").write_text("{}", encoding="utf-8")
    with pytest.raises(LabError, match="two submissions of 02_hooks.ipynb for dave"):
        collect([tmp_path], lab)
    with pytest.raises(LabError, match="does not exist"):
        collect([tmp_path / "nowhere"], lab)


def test_grade_command_errors_are_one_line(tmp_path, lab, capsys):
    assert main(["grade", str(tmp_path / "nowhere"), "--notebooks", str(lab)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not exist" in err and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    assert main(["grade", str(tmp_path / "empty"), "--notebooks", str(lab), "--out", str(tmp_path / "g")]) == 2
    assert "no .ipynb files" in capsys.readouterr().err
    assert main(["grade", str(lab / "01_tiny.ipynb"), "--notebooks", str(tmp_path / "empty")]) == 2
    assert "no notebook with graded check cells" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


# ---------------------------------------------------------------- student versions (synthetic)


def test_student_version_replaces_solutions_and_keeps_the_rest(lab, tmp_path):
    source = nbformat.read(lab / "01_tiny.ipynb", as_version=4)
    source.cells[3].outputs = [nbformat.v4.new_output("stream", name="stdout", text="PASS: double — ok\n")]
    source.cells[3].execution_count = 4
    source.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    nb = student_version(source, "01_tiny")
    nbformat.validate(nb)
    assert "widgets" not in nb.metadata and "widgets" in source.metadata  # the original is untouched
    assert len(nb.cells) == len(source.cells)
    double = nb.cells[2].source
    assert double == 'def double(x):\n    """Twice x."""\n    # YOUR CODE HERE\n    raise NotImplementedError()'
    namespace: dict = {}
    exec(compile(double, "cell", "exec"), namespace)  # still a valid function, that says it is unfinished
    with pytest.raises(NotImplementedError):
        namespace["double"](1)
    assert nb.cells[7].source == "Why do squares grow?\n\nYOUR ANSWER HERE\n"
    for before, after in zip(source.cells, nb.cells):
        assert after.metadata == before.metadata and after.get("id") == before.get("id")
        if after.cell_type == "code":
            assert after.outputs == [] and after.execution_count is None
            if "BEGIN SOLUTION" not in before.source:
                assert after.source == before.source


def test_student_command_writes_every_notebook(lab, tmp_path, capsys):
    assert main(["student", str(lab / "00_intro.ipynb"), str(lab / "01_tiny.ipynb"), "--out",
                 str(tmp_path / "handout")]) == 0
    written = capsys.readouterr().out.split()
    assert written == [str(tmp_path / "handout" / "00_intro.ipynb"), str(tmp_path / "handout" / "01_tiny.ipynb")]
    assert "2 * x" not in (tmp_path / "handout" / "01_tiny.ipynb").read_text(encoding="utf-8")


def test_unpaired_markers_are_an_error_and_nothing_is_written(lab, tmp_path):
    bad = edited(lab / "01_tiny.ipynb", tmp_path / "in" / "02_bad.ipynb",
                 lambda nb: set_body(nb, "square-solution", "    ### END SOLUTION", ""))
    with pytest.raises(LabError, match=r"02_bad.ipynb, cell 6: the BEGIN marker on line 3 has no END marker"):
        make_student_versions([lab / "01_tiny.ipynb", bad], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(LabError, match="would overwrite the solutions"):
        make_student_versions([lab / "01_tiny.ipynb"], lab)


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


def test_lab_student_notebook_stops_at_the_first_exercise_with_one_line(tmp_path, lab_env):
    """The student version of the notebook that reaches its first exercise soonest, run up to that check."""
    students = [nbformat.read(p, as_version=4) for p in make_student_versions(lab_notebooks(), tmp_path)]
    with_checks = [nb for nb in students if first_check(nb) < len(nb.cells)]
    nb = min(with_checks, key=lambda nb: sum(c.cell_type == "code" for c in nb.cells[: first_check(nb)]))
    check = first_check(nb)
    nb.cells = nb.cells[: check + 1]
    NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [(n, o) for n, c in enumerate(nb.cells) if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert len(errors) == 1 and errors[0][0] == check, f"errors before the first exercise: {errors}"
    error = errors[0][1]
    grade_id = nb.cells[check].metadata["nbgrader"]["grade_id"]
    assert error.ename == "ExerciseError"
    assert error.evalue.startswith(f"{grade_id}: not implemented yet — write ")
    assert error.traceback == [f"FAIL: {error.evalue}"]  # one line, not a wall of traceback


def test_lab_grading_instructor_full_marks_student_zero(tmp_path, lab_env):
    notebooks = [p for p in lab_notebooks() if '"grade": true' in p.read_text(encoding="utf-8")]
    assert [p.name for p in notebooks] == ["02_hooks.ipynb", "03_gradcam_math.ipynb",
                                           "04_guided_and_counterfactual.ipynb"]
    (tmp_path / "instructor").mkdir()
    for path in notebooks:
        shutil.copy(path, tmp_path / "instructor" / path.name)
    make_student_versions(notebooks, tmp_path / "student")
    results = grade([tmp_path / "instructor", tmp_path / "student"], tmp_path / "grades", jobs=2, progress=False)
    by_student = {r.student: r for r in results}
    assert sorted(by_student) == ["instructor", "student"]
    ids = ["save_gradient", "alpha", "combine", "postprocess", "guided_relu", "counterfactual"]
    instructor, student = by_student["instructor"], by_student["student"]
    assert [e.grade_id for e in instructor.exercises] == ids
    declared = sum(float(c.metadata["nbgrader"]["points"]) for p in notebooks
                   for c in nbformat.read(p, as_version=4).cells if c.metadata.get("nbgrader", {}).get("grade"))
    assert instructor.total == instructor.max_points == declared > 0, [e.message for e in instructor.exercises]
    assert student.total == 0 and student.max_points == declared
    for e in student.exercises:
        assert e.message.startswith(f"ExerciseError: {e.grade_id}: not implemented yet"), e.message
    report = instructor.report.read_text(encoding="utf-8")
    assert report.count("data:image/png;base64,") >= 3  # the notebooks' own figures
    print(f"graded the lab twice in {instructor.seconds:.0f} s (instructor) and {student.seconds:.0f} s (student) "
          "of notebook time")
