"""Feedback a student may receive: ``feedback/<student>.html``, made from the grader's results alone.

    python -m labutils grade submissions/ --out grades/ --feedback
    python -m labutils grade --marks marks.csv --out grades/ --feedback     # again, with the marks
    python -m labutils grade --merge grades/shards/* --out grades/ --feedback

Each file holds one student's points, each exercise's PASS or the one-line cause of its FAIL, their
solution code as graded, their written answers with the marks given (or "not marked yet"), and what happened while their notebooks
were graded. It never holds a mark scheme, a FLAG or a similarity score (the copy check is for the instructor),
or anything of another student: it is built from that
student's ``results/<student>.json`` only, and every text in it is escaped.
"""

from __future__ import annotations

import html
from pathlib import Path

from .export import _write_text
from .report import STYLE
from .results import GradeResult, _points


def feedback_html(result: GradeResult) -> str:
    """One student's feedback page (no mark scheme, no FLAG)."""
    e = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(result.student)}: your grade</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<h1>{e(result.student)}: {_points(result.total)} / {_points(result.max_points)} points</h1>",
             "<h2>Exercises (scored by the grader)</h2>",
             "<table><tr><th>notebook</th><th>exercise</th><th>points</th><th>result</th><th>why</th></tr>"]
    for x in result.exercises:
        verdict = "<span class='pass'>PASS</span>" if x.passed else "<span class='fail'>FAIL</span>"
        parts.append(f"<tr><td>{e(x.notebook)}</td><td>{e(x.grade_id)}</td><td>{_points(x.points)} / "
                     f"{_points(x.max_points)}</td><td>{verdict}</td><td>{e(x.message)}</td></tr>")
    parts.append("</table>")
    solutions = [x for x in result.exercises if getattr(x, "solution", "")]
    if solutions:
        parts.append("<h2>Your solutions, as graded</h2>" + "".join(
            f"<h3>{e(x.grade_id)}</h3><pre>{e(x.solution)}</pre>" for x in solutions))
    if result.questions:
        parts.append("<h2>Written answers (marked by hand)</h2><table><tr><th>question</th><th>your answer</th>"
                     "<th>points</th></tr>")
        for q in result.questions:
            marked = "not marked yet" if q.points is None else _points(q.points)
            parts.append(f"<tr><td>{e(q.notebook)}<br>{e(q.grade_id)}</td><td><pre>{e(q.answer)}</pre></td>"
                         f"<td>{marked} / {_points(q.max_points)}</td></tr>")
        parts.append("</table>")
    if result.notes:
        parts.append("<h2>What happened while your notebooks were graded</h2><ul>"
                     + "".join(f"<li>{e(n)}</li>" for n in result.notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_feedback(results: list[GradeResult], out_dir: Path) -> list[Path]:
    """``out_dir/feedback/<student>.html`` for each result (the same file name as the student's report)."""
    folder = Path(out_dir) / "feedback"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for result in results:
        path = folder / f"{result.report.stem}.html"
        _write_text(path, feedback_html(result))
        written.append(path)
    return written
