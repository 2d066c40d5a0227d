"""Before handing in: what the grader will find in your saved notebooks.

    python -m labutils handin-check notebooks/ --student alice
    python -m labutils handin-check alice_03_gradcam_math.ipynb alice_06_can_you_trust_the_map.ipynb

For the notebooks given (files, or folders: the ``.ipynb`` files inside), it says

- which student and which lab notebook the grader will take each file for (the grader's naming rule:
  ``alice_03_gradcam_math.ipynb``, or ``alice/03_gradcam_math.ipynb`` in a folder named after you), and
  which graded notebooks are missing;
- for each exercise, the in-notebook check re-run on the code **saved** in the file: the solution cell
  (with the import lines of the cells above it) runs in a fresh Python process and its check prints
  ``PASS`` or ``FAIL`` with the cause, as in the notebook. Unsaved edits do not count: save first;
- which written questions are still unanswered (``YOUR ANSWER HERE``);
- whether every notebook comes from the same release of the lab.

Exit status 0 when everything is in order, 1 when something is listed to fix, 2 on bad input. It is a
help for you, not the grade: the grader runs your notebooks again on its own.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import nbformat

from .errors import LabError
from .submission import match_submission, prelude, python_source

TEXT_STUB = "YOUR ANSWER HERE"
CHECK_SECONDS = 300  # per notebook checked

_RUNNER = r"""
import contextlib, io, json, sys
jobs, results = json.loads(sys.stdin.read()), {}
from labutils.checks import BY_ID, VERIFIED, diagnose
for job in jobs:
    exercise, space, said = BY_ID[job["grade_id"]], {"__name__": "__main__"}, io.StringIO()
    try:
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            exec(compile(job["code"], "<your solution cell>", "exec"), space)
    except BaseException as error:
        first = (str(error).strip().splitlines() or [""])[0]
        results[job["key"]] = f"FAIL: {job['grade_id']}: the solution cell does not run ({type(error).__name__}: {first})"
        continue
    fn = space.get(exercise.function)
    if fn is None:
        results[job["key"]] = f"FAIL: {job['grade_id']}: the solution cell defines no {exercise.function}"
        continue
    with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
        failure = diagnose(exercise, fn)
    results[job["key"]] = f"FAIL: {failure}" if failure else f"PASS: {job['grade_id']} — {VERIFIED[job['grade_id']]}"
print(json.dumps(results))
"""


def graded_notebooks() -> dict[str, list]:
    """Lab notebook name -> its exercises (``labutils.checks.EXERCISES``): the notebooks to hand in."""
    from .checks import EXERCISES

    found: dict[str, list] = {}
    for exercise in EXERCISES:
        found.setdefault(exercise.notebook, []).append(exercise)
    return dict(sorted(found.items()))


def _files(items: list[Path]) -> list[Path]:
    files = []
    for item in items:
        if item.is_dir():
            files += sorted(p for p in item.glob("*.ipynb") if p.is_file())
        elif item.is_file():
            files.append(item)
        else:
            raise LabError(f"{item} does not exist; give your saved notebooks or the folder that holds them")
    if not files:
        raise LabError(f"no .ipynb file in {', '.join(map(str, items))}")
    return files


def _grade_id(cell: dict) -> str:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta.get("grade_id", "") if isinstance(meta, dict) else ""


def exercise_lines(notebooks: list[tuple[nbformat.NotebookNode, list]]) -> list[list[str]]:
    """For each (notebook, its exercises): the PASS/FAIL line of each exercise, its check re-run on the saved
    solution cell. All of them run in one fresh Python process (torch is imported once)."""
    jobs, lines = [], {}
    for n, (nb, exercises) in enumerate(notebooks):
        cells = nb.cells
        for exercise in exercises:
            key = f"{n}:{exercise.grade_id}"
            index = next((i for i, c in enumerate(cells) if _grade_id(c) == exercise.solution_grade_id), None)
            if index is None:
                lines[key] = f"FAIL: {exercise.grade_id}: its solution cell is not in this file " \
                             f"(grade id {exercise.solution_grade_id}); was it deleted?"
                continue
            before = [c.source for c in cells[:index] if c.cell_type == "code"]
            given = dict.fromkeys(ast.unparse(node) for node in prelude(before))  # what the solution may use
            code = "\n".join(given) + "\n" + python_source(cells[index].source)
            jobs.append({"key": key, "grade_id": exercise.grade_id, "code": code})
    if jobs:
        seconds = CHECK_SECONDS * len(notebooks)
        try:
            done = subprocess.run([sys.executable, "-c", _RUNNER], input=json.dumps(jobs), capture_output=True,
                                  text=True, timeout=seconds)
            results = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {}
            why = "" if done.returncode == 0 else (done.stderr.strip().splitlines() or ["no message"])[-1]
        except subprocess.TimeoutExpired:
            results, why = {}, f"the checks did not finish in {seconds} s (a loop that never ends?)"
        except (ValueError, IndexError):
            results, why = {}, "the checks printed no result"
        for job in jobs:
            lines[job["key"]] = results.get(job["key"], f"FAIL: {job['grade_id']}: not checked ({why})")
    return [[lines[f"{n}:{e.grade_id}"] for e in exercises] for n, (_, exercises) in enumerate(notebooks)]


def unanswered(nb: nbformat.NotebookNode) -> list[str]:
    """The grade ids of the written questions still holding ``YOUR ANSWER HERE`` (or empty)."""
    missing = []
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.cell_type == "markdown" and meta.get("solution") and meta.get("grade"):
            text = cell.source.replace("**Your answer:**", "").strip()
            if not text or TEXT_STUB in cell.source:
                missing.append(meta.get("grade_id", "?"))
    return missing


def handin_check(items: list[Path], student: str | None = None, out=print) -> int:
    """Print what the grader will find in these notebooks; 0 when all is in order, 1 when something is to fix."""
    labs = graded_notebooks()
    files = _files([Path(p) for p in items])
    to_fix, releases, seen = [], {}, {}
    passed = total = 0
    found = []
    for path in files:
        match = match_submission(path, list(labs))
        if match is None:
            out(f"{path}: no graded exercise or question in it; the grader skips it (graded: {', '.join(labs)})")
            continue
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception as error:
            out(f"{path}: not a readable notebook ({type(error).__name__}: {error})")
            to_fix.append(f"{path} is not readable")
            continue
        found.append((path, match, nb))
    checked = exercise_lines([(nb, labs[name]) for _, (_, name), nb in found])
    for (path, (sid, name), nb), results in zip(found, checked):
        seen.setdefault(name, []).append(path)
        out(f"{path}: the grader takes it for student '{sid}', notebook {name}")
        if student is not None and sid != student:
            to_fix.append(f"{path.name}: the grader would file it under '{sid}', not '{student}': rename it "
                          f"{student}_{name} (or put it in a folder named {student}/)")
        for line in results:
            out(f"  {line}")
            total += 1
            passed += line.startswith("PASS")
        missing = unanswered(nb)
        if missing:
            out(f"  unanswered question(s): {', '.join(missing)}")
            to_fix.append(f"{name}: {len(missing)} question(s) unanswered")
        release = (nb.metadata.get("labutils") or {}).get("release")
        releases.setdefault(release or "none", []).append(path.name)
    for name, paths in seen.items():
        if len(paths) > 1:
            to_fix.append(f"{len(paths)} files claim {name} ({', '.join(map(str, paths))}): the grader grades neither")
    absent = [name for name in labs if name not in seen]
    if absent:
        to_fix.append(f"not among the files: {', '.join(absent)} (a notebook not handed in earns no points)")
    if len(releases) > 1:
        to_fix.append("the notebooks come from different releases of the lab (" + "; ".join(
            f"{r}: {', '.join(n)}" for r, n in releases.items()) + "): work in one copy")
    if total and passed < total:
        to_fix.append(f"{total - passed} exercise(s) do not pass their check yet")
    out(f"Exercises: {passed} of {total} pass.")
    for item in to_fix:
        out(f"To fix: {item}")
    out("Ready to hand in." if not to_fix else "Not ready yet: see 'To fix' above (you may still hand in).")
    return 0 if not to_fix else 1
