"""Reporting: one student's HTML report (scores, flags, written answers and mark schemes, notes, code, figures).

Everything a submission wrote is escaped; figures are shown only as base64 images.
"""

from __future__ import annotations

import html
import os
import re

import nbformat

from .collect import nbgrader
from .results import GradeResult, Run, _points
from .similarity import Pair
from .submitted import outputs_html

FIGURE_CAP = 60  # figures shown per notebook in the report


def _first_line(text: str, limit: int = 400) -> str:
    line = next((line.strip() for line in str(text).splitlines() if line.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _error_line(out: nbformat.NotebookNode) -> str:
    evalue = _first_line(out.get("evalue", ""))
    return f"{out.get('ename', 'Error')}: {evalue}" if evalue else str(out.get("ename", "Error"))



STYLE = """body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
.pass{color:#176317;font-weight:bold}.fail{color:#b00020;font-weight:bold}.flag{color:#8a5a00;font-weight:bold}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;white-space:pre-wrap}figure{display:inline-block;margin:.5em}
img{max-width:100%;border:1px solid #ddd}figcaption{font-size:small;color:#555}"""


def report_html(result: GradeResult, runs: dict[str, Run]) -> str:
    """One student's report: scores, flags, written answers and mark schemes, notes, code, figures (escaped)."""
    return report_page(result, notebooks_html(runs))


def report_page(result: GradeResult, notebooks: str) -> str:
    """The report around ``notebooks`` (:func:`notebooks_html`): what a merge of marks rewrites."""
    e = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(result.student)}: grading report"
             f"</title><style>{STYLE}</style></head><body>",
             f"<h1>{e(result.student)}: {_points(result.total)} / {_points(result.max_points)} points</h1>",
             "<table><tr><th>notebook</th><th>exercise</th><th>points</th><th>result</th><th>message</th></tr>"]
    for x in result.exercises:
        verdict = "<span class='pass'>PASS</span>" if x.passed else "<span class='fail'>FAIL</span>"
        flag = (f"<br><span class='flag'>FLAG: {x.similarity:.0%} of {e(x.similar_to)} is in this solution, once "
                "names, order, layout and dead code are set aside; judge it yourself</span>") if x.copied else ""
        parts.append(f"<tr><td>{e(x.notebook)}</td><td>{e(x.grade_id)}</td><td>{_points(x.points)} / "
                     f"{_points(x.max_points)}</td><td>{verdict}</td><td>{e(x.message)}{flag}</td></tr>")
    parts.append("</table>")
    if result.questions:
        parts.append("<h2>Written answers (marked by hand: marks-template.csv)</h2><table><tr><th>question</th>"
                     "<th>answer</th><th>mark scheme</th><th>points</th></tr>")
        for q in result.questions:
            marked = "not marked yet" if q.points is None else _points(q.points)
            parts.append(f"<tr><td>{e(q.notebook)}<br>{e(q.grade_id)}</td><td><pre>{e(q.answer)}</pre></td>"
                         f"<td><pre>{e(q.scheme)}</pre></td><td>{marked} / {_points(q.max_points)}</td></tr>")
        parts.append("</table>")
    if result.notes:
        parts.append("<h2>What happened</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in result.notes) + "</ul>")
    parts.append(notebooks)
    parts.append("</body></html>")
    return "\n".join(parts)


def notebooks_html(runs: dict[str, Run]) -> str:
    """The part of the report that shows each submitted notebook: errors, solution code, figures."""
    e = html.escape
    parts: list[str] = []
    for name, run in runs.items():
        parts.append(f"<h2>{e(name)}</h2>")
        if run.nb is None:
            parts.append("<p>Not graded (see above).</p>")
            continue
        if run.submitted is not None:  # --no-execute: nothing ran; the file's own outputs, as data
            parts += [f"<h3>{e(nbgrader(c).get('grade_id', 'answer'))}</h3><pre>{e(c.source)}</pre>"
                      for c in run.nb.cells if c.cell_type == "code" and nbgrader(c).get("solution")]
            parts.append(outputs_html(run.submitted) or "<p>The submitted file holds no outputs (not run by the "
                                                         "grader: --no-execute).</p>")
            continue
        parts.append(f"<p>{e(weights_line())}</p>")
        errors = [(n, o) for n, c in enumerate(run.nb.cells) if c.cell_type == "code"
                  for o in c.outputs if o.output_type == "error"]
        if errors:
            parts.append("<h3>Errors while the notebook ran</h3><ul>" + "".join(
                f"<li>cell {n + 1}: {e(_error_line(o))}</li>" for n, o in errors) + "</ul>")
        for cell in run.nb.cells:
            meta = cell.metadata.get("nbgrader", {})
            if meta.get("solution") and cell.cell_type == "code":
                parts.append(f"<h3>{e(meta.get('grade_id', 'answer'))}</h3><pre>{e(cell.source)}</pre>")
        figures = [(n, out) for n, c in enumerate(run.nb.cells) if c.cell_type == "code" for out in c.outputs
                   if out.output_type in ("display_data", "execute_result")
                   and ("image/png" in out.get("data", {}) or "image/jpeg" in out.get("data", {}))]
        if figures:
            parts.append("<h3>Figures</h3>")
        for n, out in figures[:FIGURE_CAP]:
            mime = "image/png" if "image/png" in out.data else "image/jpeg"
            data = "".join(str(out.data[mime]).split())
            if re.fullmatch(r"[A-Za-z0-9+/=]*", data) and data:
                parts.append(f"<figure><img src='data:{mime};base64,{data}' alt='figure of cell {n + 1}'>"
                             f"<figcaption>cell {n + 1}</figcaption></figure>")
        if len(figures) > FIGURE_CAP:
            parts.append(f"<p>{len(figures) - FIGURE_CAP} more figures not shown.</p>")
    return "\n".join(parts)


def weights_line() -> str:
    """Which weights the outputs of the grader's re-run came from (the kernels' ``LABUTILS_WEIGHTS``, set as in
    :mod:`labutils.instructor.kernel`): the marker reads a written answer beside them."""
    weights = os.environ.get("LABUTILS_WEIGHTS") or "random"
    if weights == "random":
        return ("The outputs below come from the grader's re-run with untrained weights (LABUTILS_WEIGHTS=random): "
                "a student who ran the lab with the pretrained weights saw other numbers and maps (the mark schemes "
                "cover both).")
    return f"The outputs below come from the grader's re-run with LABUTILS_WEIGHTS={weights}."


def similarity_html(pairs: list[Pair]) -> str:
    """The class's pairs of unusually similar answers, most similar first (escaped), for the instructor to judge."""
    e = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Similar answers</title><style>{STYLE}"
             "</style></head><body><h1>Pairs of students with unusually similar answers</h1>",
             f"<p>{len(pairs)} pair(s). The score is the share of the smaller answer's fingerprints (k-grams of "
             "its code once names, order, layout and dead code are set aside; what much of the class shares left "
             "out) found in the other's. A pair is a question, not a verdict: read the two answers.</p>"]
    if pairs:
        parts.append("<table><tr><th>exercise</th><th>students</th><th>score</th><th>shared / counted</th></tr>")
        parts += [f"<tr><td>{e(p.exercise)}</td><td>{e(p.first)}<br>{e(p.second)}</td><td>{p.score:.0%}</td>"
                  f"<td>{p.shared} / {p.size}</td></tr>" for p in pairs]
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
