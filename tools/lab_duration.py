"""How long the lab takes a student, notebook by notebook: an estimate from the notebooks themselves.

    python tools/lab_duration.py          # the table notebook 00 and docs/instructors.md show

Not a timing with students. The method, with every rate in one place (change one, re-run, paste the table):

* prose: the markdown cells' words (mark schemes left out: students do not get them) at ``WORDS_PER_MINUTE``;
* given code: the non-blank, non-comment lines of the code cells outside the solutions, read to follow what they
  do (not to study them) at ``CODE_LINES_PER_MINUTE``; the same rate for the labutils modules a notebook asks
  the student to read (``MODULES_TO_READ``);
* exercises: a time by the size of the instructor's solution (its non-blank lines), writing and debugging against
  the check included (``exercise_minutes``);
* written and predict-then-run questions: ``QUESTION_MINUTES`` each;
* running the cells: ``RUN_SECONDS``, measured with ``tools/refresh_notebooks.py`` (untrained weights, which cost
  the same compute as pretrained ones, on 2 CPU cores shared with other work, so an upper bound for a laptop);
* set-up (notebook 00): ``SETUP_MINUTES`` for the environment, the 760 MB of weights and the environment check.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
WORDS_PER_MINUTE = 100  # technical prose with equations
CODE_LINES_PER_MINUTE = 8  # reading given code to follow it
QUESTION_MINUTES = 10
FAST = 1.5  # a fast student: reads 1.5 times as fast, writes exercises and answers in half the time
SETUP_MINUTES = 20
MODULES_TO_READ = {"02_hooks": ["hooks.py"], "04_guided_and_counterfactual": ["guided.py"],
                   "06_can_you_trust_the_map": ["sanity.py"]}  # "read labutils/X.py", in the notebook's text
RUN_SECONDS = {"00_start_here": 37, "01_architectures": 67, "02_hooks": 92, "03_gradcam_math": 132,
               "04_guided_and_counterfactual": 81, "05_results": 139, "06_can_you_trust_the_map": 83}
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
HEADING = "## How long each notebook takes"  # notebook 00's cell that shows the table: not counted itself
SCHEME = re.compile(r"=== BEGIN MARK SCHEME ===.*?=== END MARK SCHEME ===", re.S)


def exercise_minutes(solution_lines: int) -> float:
    """Writing one exercise and getting it through its check, by the size of the instructor's solution."""
    return 10 if solution_lines <= 3 else 20 if solution_lines <= 9 else 30


def code_lines(source: str) -> tuple[int, list[int]]:
    """(given lines, [lines of each solution]) of a code cell: non-blank; comments count only inside solutions."""
    given, solutions, inside = 0, [], False
    for line in source.splitlines():
        text = line.strip()
        if text == BEGIN:
            inside = True
            solutions.append(0)
        elif text == END:
            inside = False
        elif text and inside:
            solutions[-1] += 1
        elif text and not text.startswith("#"):
            given += 1
    return given, solutions


def minutes(path: Path, fast: bool = False) -> dict[str, float]:
    """The estimate's parts for one notebook, in minutes (``fast``: for a fast student, see ``FAST``)."""
    nb = nbformat.read(path, as_version=4)
    words = given = questions = 0
    solutions: list[int] = []
    for cell in nb.cells:
        if cell.cell_type == "markdown" and not cell.source.startswith(HEADING):
            words += len(SCHEME.sub("", cell.source).split())
            questions += bool(cell.metadata.get("nbgrader", {}).get("solution"))
        elif cell.cell_type == "code":
            lines, found = code_lines(cell.source)
            given, solutions = given + lines, solutions + found
    module_lines = sum(sum(1 for line in (ROOT / "labutils" / name).read_text().splitlines() if line.strip())
                       for name in MODULES_TO_READ.get(path.stem, []))
    reading, writing = (FAST, 0.5) if fast else (1.0, 1.0)
    return {
        "prose": words / WORDS_PER_MINUTE / reading,
        "code": (given + module_lines) / CODE_LINES_PER_MINUTE / reading,
        "exercises": sum(exercise_minutes(n) for n in solutions) * writing,
        "questions": questions * QUESTION_MINUTES * writing,
        "run": RUN_SECONDS[path.stem] / 60,
        "setup": SETUP_MINUTES if path.stem.startswith("00_") else 0,
        "n_exercises": len(solutions), "n_questions": questions, "words": words, "lines": given + module_lines,
    }


PARTS = ("prose", "code", "exercises", "questions", "run", "setup")


def hours(paths: list[Path], fast: bool = False) -> float:
    """The whole estimate, in hours."""
    return sum(sum(minutes(path, fast)[part] for part in PARTS) for path in paths) / 60


def table(paths: list[Path]) -> str:
    """The markdown table: one row per notebook, then the total, each rounded to 5 minutes."""
    rows = ["| notebook | reading (words / lines of code) | exercises | questions | running, set-up | about |",
            "| --- | --- | --- | --- | --- | --- |"]
    total = 0.0
    for path in paths:
        m = minutes(path)
        spent = m["prose"] + m["code"] + m["exercises"] + m["questions"] + m["run"] + m["setup"]
        total += spent
        rows.append(f"| {path.stem[:2]} | {m['prose'] + m['code']:.0f} min ({m['words']:,} / {m['lines']}) | "
                    f"{m['exercises']:.0f} min ({m['n_exercises']}) | {m['questions']:.0f} min ({m['n_questions']}) | "
                    f"{m['run'] + m['setup']:.0f} min | {5 * round(spent / 5):.0f} min |")
    rows.append(f"| all | | | | | **{total / 60:.1f} h** (a fast student: {hours(paths, fast=True):.1f} h) |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table(sorted((ROOT / "notebooks").glob("*.ipynb"))))
    sys.exit(0)
