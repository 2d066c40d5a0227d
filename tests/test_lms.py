"""Grades out to Canvas and Moodle (labutils.instructor.lms): the files each platform's importer reads.

Plain data only: results written as the grader writes them (results/<student>.json), no notebook runs.
The expected files are written out by hand from Canvas's importer (instructure/canvas-lms,
app/models/gradebook_importer.rb: header ``Student, ID, SIS User ID, SIS Login ID, Section``, then
assignments; a ``Points Possible`` row) and Moodle's CSV grade import (an identity column, then one
column per grade item; an empty cell is no grade).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labutils.cli import main
from labutils.errors import LabError
from labutils.instructor.export import write_csv
from labutils.instructor.results import ExerciseResult, GradeResult, QuestionResult
from labutils.instructor.lms import Enrolment, export_grades, grade_of, read_roster

HEADER = "student,name,id,sis_user_id,sis_login_id,section,email"
ROSTER = f"""{HEADER}
alice,"Lovelace, Ada",101,S-1,ada,Sec A,ada@uni.example
bob,"Babbage, Charles",102,S-2,charles,Sec B,charles@uni.example
carol,"=HYPERLINK(""http://evil.example"")",103,,,Sec A,carol@uni.example
dave,"Hopper, Grace",104,S-4,grace,Sec B,grace@uni.example
"""


def result(student: str, earned: tuple[float, float], marks: tuple[float | None, ...] = ()) -> GradeResult:
    """A graded student of a lab worth 2 + 3 automatic points and one written answer of 2 per mark given."""
    exercises = [ExerciseResult("alpha", "01_tiny.ipynb", earned[0], 2, earned[0] == 2, "PASS" if earned[0] else "x"),
                 ExerciseResult("combine", "01_tiny.ipynb", earned[1], 3, earned[1] == 3, "PASS" if earned[1] else "x")]
    questions = [QuestionResult(f"q{n}", "01_tiny.ipynb", 2, "my answer", "scheme", mark) for n, mark in
                 enumerate(marks)]
    return GradeResult(student, exercises, Path(f"{student}.html"), [], 1.0, questions)


def write_results(out: Path, results: list[GradeResult]) -> Path:
    (out / "results").mkdir(parents=True)
    for r in results:
        (out / "results" / f"{r.student}.json").write_text(json.dumps(r.to_json()), encoding="utf-8")
    write_csv(results, out / "grades.csv")
    return out


@pytest.fixture
def graded(tmp_path) -> Path:
    """alice: full marks; bob: 2 + 0 + 1.5; carol: her written answer not marked yet; eve: not in the roster."""
    return write_results(tmp_path / "grades", [result("alice", (2, 3), (2,)), result("bob", (2, 0), (1.5,)),
                                               result("carol", (0, 3), (None,)), result("eve", (2, 3), (0,))])


@pytest.fixture
def roster(tmp_path) -> Path:
    path = tmp_path / "roster.csv"
    path.write_text(ROSTER, encoding="utf-8")
    return path


def test_canvas_csv_is_what_the_gradebook_importer_reads(graded, roster):
    done = export_grades(graded, roster, "canvas", assignment="Grad-CAM lab (5501)")
    assert done.path == graded / "canvas.csv"
    assert done.path.read_text(encoding="utf-8") == (
        "Student,ID,SIS User ID,SIS Login ID,Section,Grad-CAM lab (5501)\n"
        "Points Possible,,,,,7\n"
        '"Lovelace, Ada",101,S-1,ada,Sec A,7\n'
        '"Babbage, Charles",102,S-2,charles,Sec B,3.5\n'
        "\"'=HYPERLINK(\"\"http://evil.example\"\")\",103,,,Sec A,\n")  # not marked yet: empty, never 0
    assert done.exported == ["alice", "bob"]
    assert list(done.not_graded) == ["carol"] and "q0" in done.not_graded["carol"]
    assert done.not_in_roster == ["eve"] and done.no_submission == ["dave"]


def test_moodle_csv_has_an_identity_column_then_the_grade_item(graded, roster):
    done = export_grades(graded, roster, "moodle")
    assert done.path.read_text(encoding="utf-8") == (
        "Email address,ID number,Full name,Grad-CAM lab\n"
        "ada@uni.example,S-1,\"Lovelace, Ada\",7\n"
        "charles@uni.example,S-2,\"Babbage, Charles\",3.5\n"
        "carol@uni.example,,\"'=HYPERLINK(\"\"http://evil.example\"\")\",\n")


def test_who_was_left_out_is_listed_in_the_check_file(graded, roster):
    done = export_grades(graded, roster, "canvas")
    lines = (graded / "canvas-check.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == ("2 student(s) with points in canvas.csv, 1 left empty (not graded), 1 not in the roster, "
                        "1 roster entries without a submission")
    assert lines[1:] == done.lines()
    assert [line.split(": ")[1].split(" ")[0] for line in lines[1:]] == ["carol", "eve", "dave"]
    assert lines[1].startswith("not graded, left empty in canvas.csv: carol (written answer(s) not marked yet: q0")


def test_a_student_the_grader_could_not_grade_is_left_empty_not_zero(tmp_path, roster):
    failed = result("alice", (0, 0))
    failed.not_graded = "the sandbox did not start (bwrap: no user namespaces)"  # the grader's "not graded" state
    out = write_results(tmp_path / "grades", [result("bob", (2, 3))])
    assert grade_of(failed).points is None and "sandbox did not start" in grade_of(failed).why_not
    assert grade_of(result("bob", (2, 0), (0,))).points == 2  # a mark of 0 is a grade, not a missing one
    unjudged = result("carol", (2, 0))
    unjudged.exercises[1].graded = False  # an exercise the grader could not judge
    assert grade_of(unjudged).points is None and grade_of(unjudged).why_not == "not graded: combine"
    done = export_grades(out, roster, "canvas")
    assert done.exported == ["bob"] and done.no_submission == ["alice", "carol", "dave"]


def test_grades_csv_alone_is_enough_and_its_empty_cells_are_not_graded(tmp_path, roster):
    out = tmp_path / "grades"
    out.mkdir()
    write_csv([result("alice", (2, 3), (2,)), result("carol", (2, 3), (None,))], out / "grades.csv")
    done = export_grades(out, roster, "moodle")
    assert done.exported == ["alice"] and list(done.not_graded) == ["carol"] and "q0" in done.not_graded["carol"]
    assert done.path.read_text(encoding="utf-8").splitlines()[1:] == [
        "ada@uni.example,S-1,\"Lovelace, Ada\",7", "carol@uni.example,,\"'=HYPERLINK(\"\"http://evil.example\"\")\","]


@pytest.mark.parametrize("text, platform, says", [
    ("student,name,id,sis_user_id,section,email\nalice,A,1,,S,a@x\n", "canvas", "missing column(s) sis_login_id"),
    (f"{HEADER},grade\nalice,A,1,,,S,a@x,3\n", "canvas", "unknown column(s) 'grade'"),
    (f"{HEADER}\nalice,A,1,,,S,a@x\nalice,B,2,,,S,b@x\n", "canvas", "student 'alice' is on lines 2 and 3"),
    (f"{HEADER}\nalice,A,1,,,S,a@x\nbob,B,1,,,S,b@x\n", "canvas", "id '1' is on lines 2 and 3"),
    (f"{HEADER}\nalice,A,1,,,S,a@x\nbob,B,2,,,S,A@X\n", "moodle", "email 'A@X' is on lines 2 and 3"),
    (f"{HEADER}\nalice,A,1,,,S,\n", "moodle", "line 2: alice has no email"),
    (f"{HEADER}\nalice,A,,,,S,a@x\n", "canvas", "alice has no id and no sis_user_id and no sis_login_id"),
    (f"{HEADER}\n", "canvas", "lists no student"),
    (f"{HEADER}\n,A,1,,,S,a@x\n", "canvas", "line 2: the student column is empty"),
    (f"{HEADER}\nalice,A,1\n", "canvas", "line 2: 3 cells, the header has 7"),
])  # fmt: skip
def test_a_bad_roster_is_one_clear_line_and_nothing_is_written(graded, tmp_path, text, platform, says):
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LabError) as caught:
        export_grades(graded, path, platform)
    assert says in str(caught.value) and "\n" not in str(caught.value)
    assert not (graded / f"{platform}.csv").exists() and not (graded / f"{platform}-check.txt").exists()


def test_a_roster_that_is_not_utf8_text_is_refused(graded, tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(f"{HEADER}\nzoé,Zoé,1,,,S,z@x\n".encode("latin-1"))
    with pytest.raises(LabError, match="not a readable UTF-8 CSV file"):
        read_roster(path, "canvas")


def test_a_roster_saved_by_a_spreadsheet_reads_the_same(tmp_path):
    path = tmp_path / "excel.csv"  # a byte-order mark, CRLF line ends, columns in another order, a blank line
    path.write_bytes(b"\xef\xbb\xbfemail,student,name,id,sis_user_id,sis_login_id,section\r\n"
                     b"a@x, alice ,Ada,7,,,S\r\n\r\n")
    assert read_roster(path, "moodle") == {"alice": Enrolment("alice", "Ada", "7", "", "", "S", "a@x")}


def test_students_graded_against_different_labs_are_not_exported_together(tmp_path, roster):
    other = result("bob", (2, 3))
    other.exercises = other.exercises[:1]
    out = write_results(tmp_path / "grades", [result("alice", (2, 3)), other])
    with pytest.raises(LabError, match="maximum points differ \\(2, 5\\)"):
        export_grades(out, roster, "canvas")
    assert not (out / "canvas.csv").exists()


def test_an_empty_output_folder_and_an_unknown_platform_are_refused(tmp_path, roster):
    with pytest.raises(LabError, match="holds no graded students"):
        export_grades(tmp_path, roster, "canvas")
    with pytest.raises(LabError, match="choose one of canvas, moodle"):
        export_grades(tmp_path, roster, "blackboard")


def test_grade_command_exports_from_an_output_folder_and_after_marks(graded, roster, tmp_path, capsys):
    assert main(["grade", "--out", str(graded), "--roster", str(roster), "--export", "canvas"]) == 0
    out, err = capsys.readouterr()
    assert out == f"wrote {graded / 'canvas.csv'} (2 student(s) with points; who was left out: " \
                  f"{graded / 'canvas-check.txt'})\n"
    assert err.splitlines() == [f"warning: {line}" for line in export_grades(graded, roster, "canvas").lines()]
    marks = tmp_path / "marks.csv"
    marks.write_text("student,question,points\ncarol,q0,1\n", encoding="utf-8")
    assert main(["grade", "--marks", str(marks), "--out", str(graded), "--roster", str(roster), "--export",
                 "moodle", "--assignment", "Lab 3"]) == 0
    assert (graded / "moodle.csv").read_text(encoding="utf-8").splitlines()[::3] == [
        "Email address,ID number,Full name,Lab 3", "carol@uni.example,,\"'=HYPERLINK(\"\"http://evil.example\"\")\",4"]


@pytest.mark.parametrize("extra, says", [
    (["--roster", "r.csv"], "--roster FILE and --export canvas|moodle go together"),
    (["--export", "canvas"], "--roster FILE and --export canvas|moodle go together"),
    (["--roster", "BAD", "--export", "moodle"], "missing column(s)"),
    (["--roster", "GOOD", "--export", "moodle", "--assignment", " "], "--assignment ' ': give the lab's title"),
    (["--roster", "GOOD", "--export", "d2l"], "argument --export: invalid choice: 'd2l'"),
])  # fmt: skip
def test_export_errors_come_before_any_grading_in_one_line(tmp_path, roster, capsys, extra, says):
    bad = tmp_path / "bad.csv"
    bad.write_text("student,email\nalice,a@x\n", encoding="utf-8")
    extra = [str(bad) if x == "BAD" else str(roster) if x == "GOOD" else x for x in extra]
    out = tmp_path / "out"
    assert main(["grade", str(tmp_path / "no-such-submissions"), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and not out.exists()
