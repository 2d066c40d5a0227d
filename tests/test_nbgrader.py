"""nbgrader stays a working route: its own ``generate_assignment`` and ``autograde`` on the lab's notebooks.

The lab's notebooks carry nbgrader metadata (solution and grade cells, points, mark schemes), and the
checks raise under nbgrader's autograder (``NBGRADER_EXECUTION=autograde``) so that a failed check is a
failed grade cell. This test runs nbgrader itself in a temporary course directory on the instructor's
notebook and on the handout that ``python -m labutils student`` makes, and compares the points with
those labutils' own grader gives the same two files.

One notebook, 02_hooks (the ``capture`` exercise, 3 points, and one written answer): nbgrader's
autograde runs each notebook in a kernel, one student after the other, and the whole lab twice
would take many minutes on two cores; 02_hooks is the route end to end (generate, autograde, the
gradebook's scores) for a quarter of a minute of notebook per student.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook

from labutils.instructor import sandbox
from labutils.instructor.grading import default_registry, grade
from labutils.instructor.student import REPO_ROOT

NOTEBOOK = "02_hooks.ipynb"
ASSIGNMENT = "lab"


def run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "ERROR" not in output, f"{' '.join(command[2:])} failed:\n{output[-3000:]}"
    return output


def auto_points(path: Path) -> dict[str, float]:
    """The notebook's autograded cells (grade, not solution) and their points, from its nbgrader metadata."""
    cells = nbformat.read(path, as_version=4).cells
    return {c.metadata.nbgrader.grade_id: float(c.metadata.nbgrader.points) for c in cells
            if c.metadata.get("nbgrader", {}).get("grade") and not c.metadata.nbgrader.get("solution")}


@pytest.mark.skipif(not sandbox.bwrap_works(), reason="labutils' grader needs bubblewrap (apt-get install bubblewrap)")
def test_nbgrader_generate_and_autograde_give_the_points_labutils_gives(tmp_path):
    source = REPO_ROOT / "notebooks" / NOTEBOOK
    expected = auto_points(source)
    assert expected == {"capture": 3.0}  # the lab's points for this notebook (24 over the whole lab)
    env = {**os.environ, "LABUTILS_WEIGHTS": "random",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # nbgrader runs alembic
    env.setdefault("LABUTILS_DATA", str(REPO_ROOT.parent / "shared" / "data"))
    run([sys.executable, "-m", "labutils", "student", str(source), "--out", str(tmp_path / "handout")], tmp_path, env)
    handout = tmp_path / "handout" / NOTEBOOK

    course = tmp_path / "course"
    for folder, notebook in (("source", source), ("submitted/instructor", source), ("submitted/handout", handout)):
        (course / folder / ASSIGNMENT).mkdir(parents=True)
        shutil.copy(notebook, course / folder / ASSIGNMENT / NOTEBOOK)
    root = f"--CourseDirectory.root={course}"
    start = time.perf_counter()
    run([sys.executable, "-m", "nbgrader", "generate_assignment", ASSIGNMENT, root], course, env)
    release = nbformat.read(course / "release" / ASSIGNMENT / NOTEBOOK, as_version=4)
    assert "BEGIN SOLUTION" not in str(release) and "BEGIN MARK SCHEME" not in str(release)
    run([sys.executable, "-m", "nbgrader", "autograde", ASSIGNMENT, root, "--Execute.timeout=300"], course, env)
    nbgrader_seconds = time.perf_counter() - start

    found = {}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        for student in ("instructor", "handout"):
            scored = gradebook.find_submission_notebook(Path(NOTEBOOK).stem, ASSIGNMENT, student)
            found[student] = ({g.name: g.auto_score for g in scored.grades if not g.needs_manual_grade},
                              sorted(g.name for g in scored.grades if g.needs_manual_grade), scored.max_code_score)
    assert found["instructor"][0] == expected and found["instructor"][2] == sum(expected.values())
    assert found["handout"][0] == {grade_id: 0.0 for grade_id in expected}

    # labutils' own grader on the same two files
    (tmp_path / "lab").mkdir()
    shutil.copy(source, tmp_path / "lab" / NOTEBOOK)
    for student, notebook in (("instructor", source), ("handout", handout)):
        (tmp_path / "submissions" / student).mkdir(parents=True)
        shutil.copy(notebook, tmp_path / "submissions" / student / NOTEBOOK)
    start = time.perf_counter()
    results = grade([tmp_path / "submissions"], tmp_path / "grades", instructor_dir=tmp_path / "lab", jobs=2,
                    registry=[e for e in default_registry() if e.notebook == NOTEBOOK], progress=False)
    labutils_seconds = time.perf_counter() - start
    ours = {r.student: ({e.grade_id: e.points for e in r.exercises}, sorted(q.grade_id for q in r.questions),
                        sum(e.max_points for e in r.exercises)) for r in results}
    assert ours == found  # the same points per exercise, the same written answers left to mark, the same maximum
    print(f"{NOTEBOOK}: nbgrader generate_assignment + autograde of 2 students {nbgrader_seconds:.0f} s, "
          f"labutils grade {labutils_seconds:.0f} s")
