#!/usr/bin/env python
"""Benchmark: grading the whole lab, per submission, with and without re-running the notebooks.

    python bench/grading.py                         # 32 submissions, --no-execute, --jobs 2
    python bench/grading.py --students 32 --full 2  # and 2 of them in the full mode (about 80 s each)
    python bench/grading.py --out bench/grading.md  # also write the printed report

The class is built from the lab itself: each student submits every graded notebook of ``notebooks/``,
each notebook chosen at random (seeded) between the instructor's version (all exercises right) and the
students' handout (``python -m labutils student``: nothing done), so the class holds every mix of right
and unfinished exercises. It is graded with the grader's defaults (sandboxed kernels and scorers,
``LABUTILS_WEIGHTS=random``), ``--jobs 2``, and timed from the call to the last result written. The
per-submission figure is wall time / submissions. The machine's load average is printed with it: on a
shared machine the figure depends on it, so compare the two modes measured in the same run (``--full``).

Every submission's points are checked against what its mix must earn (the sum of the points of the
instructor's notebooks it submitted): a fast wrong grader cannot win. With ``--full N`` the first N
students are graded again in the full mode, and their points compared between the two modes.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LABUTILS_WEIGHTS", "random")

from labutils.instructor.grading import default_registry, grade, lab_notebooks  # noqa: E402
from labutils.instructor.student import make_student_versions  # noqa: E402


def build_class(folder: Path, students: int, seed: int) -> tuple[Path, dict[str, float]]:
    """``folder/submissions/<student>/<notebook>`` for each student; the points each one must earn."""
    lab = lab_notebooks(ROOT / "notebooks", default_registry())
    handout = folder / "handout"
    make_student_versions([ROOT / "notebooks" / name for name in lab], handout)
    rng, expected = random.Random(seed), {}
    for n in range(students):
        student = f"student{n:03d}"
        mine = folder / "submissions" / student
        mine.mkdir(parents=True)
        expected[student] = 0.0
        for name, notebook in lab.items():
            right = n == 0 or (n != 1 and rng.random() < 0.5)  # student000 all right, student001 nothing done
            shutil.copy((ROOT / "notebooks" if right else handout) / name, mine / name)
            expected[student] += sum(g.points for g in notebook.exercises) if right else 0.0
    return folder / "submissions", expected


def timed(submissions: list[Path], out: Path, execute: bool, jobs: int) -> tuple[float, dict[str, dict]]:
    """Wall seconds and each student's points. (Not CPU time: the sandboxed scorers are killed, not reaped by
    the grader, at the end of a run, so getrusage would leave out most of their work.)"""
    began = time.perf_counter()
    results = grade(submissions, out, jobs=jobs, execute=execute, progress=False)
    return time.perf_counter() - began, {r.student: {e.grade_id: e.points for e in r.exercises} for r in results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=32)
    parser.add_argument("--full", type=int, default=0, metavar="N", help="also grade N students in the full mode")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the report to this file")
    args = parser.parse_args()
    lines = [f"# Grading the whole lab: {args.students} submissions, --jobs {args.jobs}",
             f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
             f"LABUTILS_WEIGHTS={os.environ['LABUTILS_WEIGHTS']}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"]
    with tempfile.TemporaryDirectory(prefix="labutils-bench-") as tmp:
        folder = Path(tmp)
        submissions, expected = build_class(folder, args.students, args.seed)
        students = sorted(submissions.iterdir())
        load = os.getloadavg()
        seconds, fast = timed(students, folder / "no-execute", False, args.jobs)
        after = os.getloadavg()
        wrong = {s: sum(p.values()) for s, p in fast.items() if sum(p.values()) != expected[s]}
        lines.append(f"--no-execute: {seconds:.1f} s for {len(fast)} submissions, "
                     f"**{seconds / len(fast):.2f} s per submission**; load average before "
                     f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, after {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}")
        lines.append("points as expected for every submission" if not wrong else f"WRONG POINTS: {wrong}")
        if args.full:
            some = students[: args.full]
            load = os.getloadavg()
            seconds, full = timed(some, folder / "full", True, args.jobs)
            after = os.getloadavg()
            same = all(full[s] == fast[s] for s in full)
            lines.append(f"full mode (notebooks re-run): {seconds:.1f} s for {len(full)} submissions, "
                         f"**{seconds / len(full):.2f} s per submission**; load average before "
                         f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, after {after[0]:.2f} {after[1]:.2f} "
                         f"{after[2]:.2f}; points {'the same as' if same else 'DIFFERENT FROM'} --no-execute")
    report = "\n\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).write_text(report, encoding="utf-8")
    if wrong:
        sys.exit(1)


if __name__ == "__main__":
    main()
