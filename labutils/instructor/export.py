"""Exporting: results/<student>.json, grades.csv, marks-template.csv, and the merge of manual marks.

Every file is written atomically; CSV cells a spreadsheet would read as a formula are protected.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path

from ..errors import LabError
from .report import notebooks_html, report_page, similarity_html
from .results import GradeResult, QuestionResult, Run, _points
from .similarity import Pair, class_pairs

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # OWASP: cells a spreadsheet would read as a formula


def spreadsheet_safe(value: str) -> str:
    """A CSV cell a spreadsheet shows as text: a leading ' before =, +, -, @, tab or CR (OWASP)."""
    return "'" + value if value.startswith(FORMULA_START) else value


def from_spreadsheet(value: str) -> str:
    """The value :func:`spreadsheet_safe` protected."""
    return value[1:] if value.startswith("'") and value[1:].startswith(FORMULA_START) else value


def file_name(student: str) -> str:
    """A file name for the student's files: the id if it is plain, else a cleaned id and a hash (no traversal)."""
    base = re.sub(r"[^\w.-]+", "_", student).strip("._")[:80] or "student"
    if base != student or base.lower() in ("grades", "results", "marks", "marks-template"):
        base += "-" + hashlib.sha256(student.encode()).hexdigest()[:10]
    return base


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_results(out_dir: Path) -> dict[str, GradeResult]:
    """The students graded so far in ``out_dir`` (``results/*.json``)."""
    found = {}
    for path in sorted((out_dir / "results").glob("*.json")):
        try:
            result = GradeResult.from_json(json.loads(path.read_text(encoding="utf-8")), out_dir)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise LabError(f"{path} is not a result the grader wrote ({type(error).__name__}); delete it and "
                           "grade that student again") from None
        found[result.student] = result
    return found


def write_csv(results: list[GradeResult], path: Path) -> None:
    """grades.csv: student, points per exercise, marks per written answer (empty until marked), total, max."""
    exercise_ids = list(dict.fromkeys(e.grade_id for r in results for e in r.exercises))
    question_ids = list(dict.fromkeys(q.grade_id for r in results for q in r.questions))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([spreadsheet_safe(c) for c in ["student", *exercise_ids, *question_ids, "total", "max"]])
    for r in sorted(results, key=lambda r: r.student):
        earned = {e.grade_id: _points(e.points) for e in r.exercises}
        marked = {q.grade_id: "" if q.points is None else _points(q.points) for q in r.questions}
        writer.writerow([spreadsheet_safe(r.student), *(earned.get(g, "") for g in exercise_ids),
                         *(marked.get(g, "") for g in question_ids), _points(r.total), _points(r.max_points)])
    _write_text(path, buffer.getvalue())


def write_marks_template(results: list[GradeResult], path: Path) -> None:
    """marks-template.csv: one row per student and written answer, points left empty for the instructor."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["student", "question", "points", "max", "comment"])
    for r in sorted(results, key=lambda r: r.student):
        for q in r.questions:
            writer.writerow([spreadsheet_safe(r.student), spreadsheet_safe(q.grade_id),
                             "" if q.points is None else _points(q.points), _points(q.max_points), ""])
    _write_text(path, buffer.getvalue())


def write_similarity(results: list[GradeResult], out_dir: Path) -> list[Pair]:
    """similarity.json and similarity.html: the class's pairs of unusually similar answers, per exercise."""
    pairs = class_pairs({r.student: {e.grade_id: e.solution for e in r.exercises if e.solution} for r in results})
    _write_text(out_dir / "similarity.json", json.dumps({"pairs": [p.to_json() for p in pairs]}, indent=1))
    _write_text(out_dir / "similarity.html", similarity_html(pairs))
    return pairs


CLEAR = ("-", "clear")  # a marks cell that clears a mark; an empty cell changes nothing


def save(result: GradeResult, runs: dict[str, Run], out_dir: Path) -> None:
    """The student's report and result file; a report that cannot be written becomes a note.

    The notebooks' part of the report is kept in ``results/<student>.notebooks.html``, so that a merge of
    marks can rewrite the report around it."""
    (out_dir / "results").mkdir(exist_ok=True)
    try:
        notebooks = notebooks_html(runs)
    except Exception as error:
        result.notes.append(f"the report could not be written: {type(error).__name__}: {error}")
        notebooks = ""
    _write_text(out_dir / "results" / f"{result.report.stem}.notebooks.html", notebooks)
    _write_text(result.report, report_page(result, notebooks))
    _write_text(out_dir / "results" / f"{result.report.stem}.json", json.dumps(result.to_json(), indent=1))


def _read_marks(marks: Path) -> list[tuple[str, int, str, str, str]]:
    """(file, line, student, question, points text) of each row of a marks CSV. The file is named by its full
    path (two assistants' ``marks.csv`` are two files); the line is the one the row starts on in an editor."""
    try:
        reader = csv.reader(io.StringIO(Path(marks).read_text(encoding="utf-8-sig"), newline=""))
        rows, header, before = [], None, 0
        for row in reader:
            start, before = before + 1, reader.line_num
            if not row:
                continue  # a blank line
            if header is None:
                header = row
                continue
            rows.append((start, dict(zip(header, row))))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise LabError(f"--marks {marks}: not a readable CSV file ({error})") from None
    if header is not None and rows and not {"student", "question", "points"} <= set(header):
        raise LabError(f"--marks {marks}: the header must name the columns student, question, points")
    where = str(Path(marks).resolve())
    return [(where, n, from_spreadsheet(row.get("student") or ""), from_spreadsheet(row.get("question") or ""),
             (row.get("points") or "").strip()) for n, row in rows]


def _same_file(marked_at: str, where: str) -> bool:
    """Whether the mark ``marked_at`` ("FILE, line N") came from the marks file ``where`` (a full path; marks
    merged by an older grader name the file alone)."""
    given = marked_at.rsplit(", line ", 1)[0]
    return given == where or (Path(given).name == given and given == Path(where).name)


def merge_marks(marks: Path | list[Path], out_dir: Path) -> list[GradeResult]:
    """Merge manual marks into ``out_dir``'s results; rewrite grades.csv and the reports; no notebook is run.

    ``marks`` is one CSV, or several (e.g. one per teaching assistant), with a header row and the columns
    ``student,question,points`` (more columns, e.g. ``max`` and ``comment`` of ``marks-template.csv``, are
    ignored). Merging is per cell: an empty ``points`` changes nothing, ``-`` or ``clear`` removes a mark,
    a number sets it. The same answer given different points in the files being merged (or twice in one
    file) is refused, naming both lines, so the files merge to the same result in any order; so is a mark
    that another file (by its full path) gave in an earlier merge: each mark remembers its file and line
    (``marked_at``), and only that file, corrected and merged again, changes it. Every row is checked before
    anything is written.
    """
    out_dir = Path(out_dir)
    results = load_results(out_dir)
    if not results:
        raise LabError(f"{out_dir} holds no graded students (results/*.json); grade the submissions first")
    rows = [row for path in ([marks] if isinstance(marks, (str, Path)) else list(marks)) for row in _read_marks(path)]
    updates: dict[tuple[str, str], tuple[QuestionResult, float | None, str]] = {}
    for where, n, student, question, text in rows:
        line = f"{where}, line {n}"
        if student not in results:
            raise LabError(f"--marks {line}: no graded student {student!r} in {out_dir}")
        found = [q for q in results[student].questions if q.grade_id == question]
        if not found:
            raise LabError(f"--marks {line}: {student} has no written answer {question!r}")
        if text == "":
            continue  # an empty cell: this file says nothing about this answer
        if text.lower() in CLEAR:
            value = None
        else:
            try:
                value = float(text)
            except ValueError:
                raise LabError(f"--marks {line}: points {text!r} is not a number (or - to clear a mark)") from None
            if not 0 <= value <= found[0].max_points:
                raise LabError(f"--marks {line}: {value:g} points is outside 0..{found[0].max_points:g}")
        earlier = updates.get((student, question))
        if earlier is not None and earlier[1] != value:
            said = "cleared" if earlier[1] is None else f"{earlier[1]:g}"
            now = "clears it" if value is None else f"gives {value:g}"
            raise LabError(f"--marks: {student}'s {question} is {said} at {earlier[2]} but {line} {now}; "
                           "agree on one mark and merge again")
        before = found[0]
        if before.marked_at and before.points != value and not _same_file(before.marked_at, where):
            said = "cleared" if before.points is None else f"{before.points:g}"
            now = "clears it" if value is None else f"gives {value:g}"
            raise LabError(f"--marks: {student}'s {question} was given {said} by {before.marked_at} (an earlier merge) "
                           f"but {line} {now}; agree on one mark, then correct {before.marked_at.rsplit(', line ', 1)[0]} "
                           "and merge it again")
        updates[(student, question)] = (found[0], value, line)
    for question, value, line in updates.values():
        sheet, _, number = line.rpartition(", line ")
        question.points = value
        question.marked_at = None if value is None else f"{sheet}, line {number}"
    changed = {student for student, _ in updates}
    for student in sorted(changed):
        result = results[student]
        _write_text(out_dir / "results" / f"{result.report.stem}.json", json.dumps(result.to_json(), indent=1))
        kept = out_dir / "results" / f"{result.report.stem}.notebooks.html"
        try:
            notebooks = kept.read_text(encoding="utf-8")
        except OSError:
            notebooks = "<p>(graded by an older version of the grader: grade again with --regrade to show the " \
                        "notebooks here)</p>"
        _write_text(result.report, report_page(result, notebooks))
    write_csv(list(results.values()), out_dir / "grades.csv")
    return list(results.values())
