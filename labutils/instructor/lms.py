"""Grades out to a learning platform: ``canvas.csv`` for Canvas's gradebook import, ``moodle.csv`` for Moodle's.

    python -m labutils grade submissions/ --out grades/ --roster roster.csv --export canvas
    python -m labutils grade --marks marks.csv --out grades/ --roster roster.csv --export moodle

**The roster** maps the grader's student id (the name of the submitted file or folder) to the
platform's identity. It is a CSV file whose header is exactly ``student,name,id,sis_user_id,
sis_login_id,section,email`` (in any order); a column the platform does not use may be left empty.
Canvas finds a student by ``id`` (Canvas's user id), else ``sis_user_id``, else ``sis_login_id``:
each roster entry needs one of them. Moodle finds a student by ``email`` (its "Email address"
mapping): each entry needs one. The same student, Canvas id, SIS id, login or email on two lines is
refused. A bad roster is one line of error and nothing is written.

**canvas.csv** follows what Canvas's gradebook importer reads (``GradebookImporter`` of
instructure/canvas-lms): the header ``Student, ID, SIS User ID, SIS Login ID, Section`` and then
one column per assignment, here one: the lab, titled ``assignment`` (give ``"Grad-CAM lab (1234)"``,
Canvas's "Name (assignment id)" convention, to update an existing assignment; a title Canvas does
not know creates one); a second row ``Points Possible`` holds the lab's maximum. **moodle.csv**
follows Moodle's CSV grade import: ``Email address`` (map it to "Email address" under "Identify
user by"), ``ID number`` (the roster's ``sis_user_id``, for mapping by ID number instead), ``Full
name`` (for reading; map it to "ignore"), then the lab's column, mapped to its grade item.

**Who is exported.** A graded student in the roster gets the lab's total. A student who is not
graded, or whose written answers are not all marked yet, is not given 0: the cell is left empty
(no grade) and the student is listed. Graded students missing from the roster, and roster
entries without a submission, are left out of the file and listed. The lists go to stderr and to
``canvas-check.txt`` / ``moodle-check.txt`` beside the export. Cells a spreadsheet would read as a
formula are protected as in grades.csv.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LabError
from .export import _write_text, from_spreadsheet, load_results, spreadsheet_safe
from .results import GradeResult, _points

ROSTER_COLUMNS = ("student", "name", "id", "sis_user_id", "sis_login_id", "section", "email")
PLATFORMS = ("canvas", "moodle")
DEFAULT_ASSIGNMENT = "Grad-CAM lab"
CANVAS_HEADER = ("Student", "ID", "SIS User ID", "SIS Login ID", "Section")
MOODLE_HEADER = ("Email address", "ID number", "Full name")
IDENTITY = {"canvas": ("id", "sis_user_id", "sis_login_id"), "moodle": ("email",)}  # any one of them finds a student


@dataclass(frozen=True)
class Enrolment:
    """One line of the roster: the grader's student id and the platform's identity of that student."""

    student: str
    name: str
    id: str
    sis_user_id: str
    sis_login_id: str
    section: str
    email: str


@dataclass(frozen=True)
class Grade:
    """What the export knows of one graded student: the lab's points, or why there are none yet."""

    student: str
    points: float | None  # None: not graded (the cell is left empty, never 0)
    max_points: float
    why_not: str = ""


@dataclass
class Export:
    """What :func:`export_grades` wrote and what it left out."""

    path: Path
    check: Path
    exported: list[str] = field(default_factory=list)  # students with points in the file
    not_graded: dict[str, str] = field(default_factory=dict)  # student -> why (an empty cell in the file)
    not_in_roster: list[str] = field(default_factory=list)  # graded, but the roster does not name them
    no_submission: list[str] = field(default_factory=list)  # in the roster, nothing graded

    def lines(self) -> list[str]:
        """The lists, one line each, for stderr and the check file."""
        found = [f"not graded, left empty in {self.path.name}: {s} ({why})" for s, why in self.not_graded.items()]
        found += [f"graded but not in the roster, left out: {s}" for s in self.not_in_roster]
        found += [f"in the roster, no submission graded, left out: {s}" for s in self.no_submission]
        return found


def read_roster(path: Path, platform: str) -> dict[str, Enrolment]:
    """The roster, checked in full for ``platform``: student id -> :class:`Enrolment`; one LabError if bad."""
    if platform not in PLATFORMS:
        raise LabError(f"--export {platform}: choose one of {', '.join(PLATFORMS)}")
    where = f"--roster {path}"
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise LabError(f"{where}: not a readable UTF-8 CSV file ({error})") from None
    if not rows:
        raise LabError(f"{where} is empty; its header is {','.join(ROSTER_COLUMNS)}")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in ROSTER_COLUMNS if c not in header]
    unknown = [h for h in header if h not in ROSTER_COLUMNS]
    twice = sorted({h for h in header if header.count(h) > 1})
    if missing or unknown or twice:
        what = "; ".join(x for x in (missing and f"missing column(s) {', '.join(missing)}",
                                     unknown and f"unknown column(s) {', '.join(map(repr, unknown))}",
                                     twice and f"column(s) {', '.join(twice)} given twice") if x)
        raise LabError(f"{where}: {what}; the header is exactly {','.join(ROSTER_COLUMNS)}")
    roster: dict[str, Enrolment] = {}
    first_line: dict[tuple[str, str], int] = {}  # (column, value) -> the line that used it first
    for n, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # a blank line
        if len(row) != len(header):
            raise LabError(f"{where}, line {n}: {len(row)} cells, the header has {len(header)}")
        values = {h: cell.strip() for h, cell in zip(header, row)}
        if not values["student"]:
            raise LabError(f"{where}, line {n}: the student column is empty (the grader's student id)")
        for column in ("student", *IDENTITY["canvas"], "email"):
            value = values[column].lower() if column == "email" else values[column]
            if not value:
                continue
            earlier = first_line.setdefault((column, value), n)
            if earlier != n:
                raise LabError(f"{where}: {column} {values[column]!r} is on lines {earlier} and {n}; "
                               "each student is on one line with their own ids")
        if not any(values[c] for c in IDENTITY[platform]):
            raise LabError(f"{where}, line {n}: {values['student']} has no {' and no '.join(IDENTITY[platform])}; "
                           f"{platform.capitalize()} cannot find the student without one")
        roster[values["student"]] = Enrolment(**{c: values[c] for c in ROSTER_COLUMNS})
    if not roster:
        raise LabError(f"{where} lists no student; add one line per student under the header")
    return roster


def check_assignment(assignment: str) -> None:
    """The lab's column title: one line of text (Canvas's "Name (assignment id)" or a new assignment's name)."""
    if not assignment.strip() or any(c in assignment for c in "\r\n"):
        raise LabError(f"--assignment {assignment!r}: give the lab's title in the gradebook, on one line")


def grade_of(result: GradeResult) -> Grade:
    """The lab's points of one graded student, or None and why when the grading is not complete."""
    not_graded = getattr(result, "not_graded", None)  # the grader's own "not graded" state, where it has one
    if not_graded:
        why = not_graded if isinstance(not_graded, str) else "; ".join(map(str, not_graded))
        return Grade(result.student, None, result.max_points, f"not graded: {why}")
    unjudged = [e.grade_id for e in result.exercises if getattr(e, "graded", True) is False]
    if unjudged:
        return Grade(result.student, None, result.max_points, f"not graded: {', '.join(unjudged)}")
    unmarked = [q.grade_id for q in result.questions if q.points is None]
    if unmarked:
        return Grade(result.student, None, result.max_points,
                     f"written answer(s) not marked yet: {', '.join(unmarked)} (marks-template.csv, then --marks)")
    return Grade(result.student, result.total, result.max_points)


def grades_from_csv(path: Path) -> dict[str, Grade]:
    """The grades of a grades.csv (for an output folder without results/): an empty cell means not graded."""
    try:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"), newline="")))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise LabError(f"{path}: not a readable grades.csv ({error})") from None
    if not rows or rows[0][:1] != ["student"] or rows[0][-2:] != ["total", "max"]:
        raise LabError(f"{path} is not a grades.csv the grader wrote (student, ..., total, max)")
    grades = {}
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != len(rows[0]):
            raise LabError(f"{path}, line {n}: {len(row)} cells, the header has {len(rows[0])}")
        student = from_spreadsheet(row[0])
        try:
            total, top = float(row[-2]), float(row[-1])
        except ValueError:
            raise LabError(f"{path}, line {n}: total {row[-2]!r} and max {row[-1]!r} must be numbers") from None
        empty = [rows[0][k] for k in range(1, len(row) - 2) if not row[k].strip()]
        grades[student] = (Grade(student, None, top, f"no points yet for {', '.join(empty)}") if empty
                           else Grade(student, total, top))
    return grades


def graded_students(out_dir: Path) -> dict[str, Grade]:
    """The grades in the grader's output folder: results/*.json, else grades.csv."""
    results = load_results(out_dir)
    if results:
        return {s: grade_of(r) for s, r in results.items()}
    if (out_dir / "grades.csv").is_file():
        return grades_from_csv(out_dir / "grades.csv")
    raise LabError(f"{out_dir} holds no graded students (results/*.json or grades.csv); grade the submissions first")


def _rows(platform: str, roster: dict[str, Enrolment], grades: dict[str, Grade], assignment: str,
          top: float) -> list[list[str]]:
    cell, score = spreadsheet_safe, lambda g: "" if g.points is None else _points(g.points)  # noqa: E731
    students = sorted(s for s in grades if s in roster)
    if platform == "canvas":
        rows = [[*CANVAS_HEADER, cell(assignment)], ["Points Possible", "", "", "", "", _points(top)]]
        for s in students:
            e = roster[s]
            rows.append([cell(e.name or s), cell(e.id), cell(e.sis_user_id), cell(e.sis_login_id), cell(e.section),
                         score(grades[s])])
        return rows
    rows = [[*MOODLE_HEADER, cell(assignment)]]
    for s in students:
        e = roster[s]
        rows.append([cell(e.email), cell(e.sis_user_id), cell(e.name or s), score(grades[s])])
    return rows


def export_grades(out_dir: Path, roster: Path | dict[str, Enrolment], platform: str, *,
                  assignment: str = DEFAULT_ASSIGNMENT) -> Export:
    """Write ``canvas.csv`` or ``moodle.csv`` (and its check file) in the grader's output folder ``out_dir``.

    ``roster`` is the roster file (or what :func:`read_roster` read from it). Everything is read and
    checked before anything is written; the lists of who was left out are in the result.
    """
    out_dir = Path(out_dir)
    check_assignment(assignment)
    if platform not in PLATFORMS:
        raise LabError(f"--export {platform}: choose one of {', '.join(PLATFORMS)}")
    enrolments = read_roster(Path(roster), platform) if not isinstance(roster, dict) else roster
    grades = graded_students(out_dir)
    tops = {g.max_points for g in grades.values()}
    if len(tops) != 1:
        raise LabError(f"{out_dir}: the students' maximum points differ ({', '.join(map(_points, sorted(tops)))}); "
                       "grade them all against the same lab before exporting")
    result = Export(out_dir / f"{platform}.csv", out_dir / f"{platform}-check.txt")
    for student in sorted(grades):
        if student not in enrolments:
            result.not_in_roster.append(student)
        elif grades[student].points is None:
            result.not_graded[student] = grades[student].why_not
        else:
            result.exported.append(student)
    result.no_submission = sorted(set(enrolments) - set(grades))
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(_rows(platform, enrolments, grades, assignment, tops.pop()))
    _write_text(result.path, buffer.getvalue())
    summary = (f"{len(result.exported)} student(s) with points in {result.path.name}, "
               f"{len(result.not_graded)} left empty (not graded), {len(result.not_in_roster)} not in the roster, "
               f"{len(result.no_submission)} roster entries without a submission")
    _write_text(result.check, "\n".join([summary, *result.lines()]) + "\n")
    return result

