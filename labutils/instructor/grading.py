"""Grading: score every exercise where the student's code cannot decide, run each notebook in a sandbox, report.

    python -m labutils grade submissions/ --out grades/
    python -m labutils grade alice_03_gradcam_math.ipynb bob/ --timeout 60 --jobs 2
    python -m labutils grade --marks marks.csv --out grades/      # merge the manual marks, run nothing

**Which notebook, which student.** A submission is a notebook file or a folder (searched recursively
for ``*.ipynb``; symbolic links are refused, not followed). Each file is matched to the lab notebook
whose name ends its own name, and the student id is what comes before it (``alice_03_gradcam_math.ipynb``
-> ``alice``); a file named exactly like the lab notebook takes the name of the folder that holds it
(``alice/03_gradcam_math.ipynb`` -> ``alice``). Two files that claim the same student and notebook are
both left ungraded, with a note in that student's row; the same file given twice counts once.

**The points** (:mod:`labutils.instructor.scoring`). For each exercise of the registry
(``labutils.checks.EXERCISES``), the solution cell's code is taken from the grader's own copy of the
submitted file and called in a separate sandboxed scoring process on the fixed cases and on cases
drawn fresh for this submission; the outcomes come back as plain data and ``exercise.diagnose``
judges them here. An exercise earns the ``points`` of its check cell's nbgrader metadata (in the
instructor's notebook) only if every case is right. Nothing the notebook's kernel does counts.

**The notebook** still runs top to bottom for the report (its figures and errors), outputs cleared,
in a fresh kernel inside the sandbox (:mod:`labutils.instructor.kernel`), with ``LABUTILS_WEIGHTS=random``
unless the environment sets it. A cell that runs past ``timeout`` is interrupted; the notebook as a
whole has a time ``budget``; a kernel that dies (``os._exit``, out of memory) or stays stuck is
replaced and the cells after it still run. Output beyond ``OUTPUT_CAP`` characters per cell, and
figures beyond ``FIGURES_CAP`` characters per notebook, are cut.

**Results.** ``results/<student>.json`` is written as soon as a student is graded, and ``grades.csv``
(atomically) after each student; a re-run skips the students already graded unless ``regrade`` names
them. ``<student>.html`` shows each exercise's result, written answers next to the mark scheme,
errors, notes, the solution code and the figures. Manual marks come from a CSV (:func:`merge_marks`).

**The stages**, one module each: :mod:`~labutils.instructor.collect` (the lab's notebooks, whose file is
which), :mod:`~labutils.instructor.execute` (the notebook in its kernels), :mod:`~labutils.instructor.scoring`
(the points), :mod:`~labutils.instructor.report` (the HTML report) and :mod:`~labutils.instructor.export`
(results, grades.csv, marks); :mod:`~labutils.instructor.results` holds the records they pass on. This
module is the driver that ties them together.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import nbformat
from jupyter_core.utils import run_sync
from tqdm import tqdm

from ..errors import LabError
from ..exercise import Exercise
from .collect import (Graded, LabNotebook, Question, collect, default_registry, lab_notebooks, mark_scheme,
                      match_submission, nbgrader, read_notebook)
from .execute import FIGURES_CAP, KERNEL_STARTS, OUTPUT_CAP, TIMEOUT_ERROR, Settings, execute, runnable_copy
from .export import (FORMULA_START, file_name, from_spreadsheet, load_results, merge_marks, save,
                     spreadsheet_safe, write_csv, write_marks_template, write_similarity)
from .kernel import KernelSetup
from .progress import Progress
from .report import FIGURE_CAP, STYLE, report_html
from .results import ExerciseResult, GradeResult, NotGraded, QuestionResult, Run
from .sandbox import NO_SANDBOX_WARNING, Limits, bwrap_problem, cgroups_work, fix_for
from .scoring import START_TIMEOUT, ScoringPool, ScoringSetup, Verdict, all_of, not_submitted, score, score_notebook
from .release import current_release, release_note
from .student import REPO_ROOT

__all__ = [  # the stages' names, importable from here as before the split
    "ExerciseResult", "FIGURES_CAP", "FIGURE_CAP", "FORMULA_START", "GradeResult", "Graded", "KERNEL_STARTS",
    "LabNotebook", "NotGraded", "OUTPUT_CAP", "Question", "QuestionResult", "Run", "STYLE", "Settings",
    "TIMEOUT_ERROR", "Verdict",
    "collect", "default_registry", "execute", "file_name", "from_spreadsheet", "grade", "grade_notebook",
    "lab_notebooks", "load_results", "mark_scheme", "match_submission", "merge_marks", "nbgrader", "not_submitted",
    "read_notebook", "report_html", "runnable_copy", "save", "score", "score_notebook", "spreadsheet_safe",
    "write_csv", "write_marks_template", "write_similarity",
]


async def grade_notebook(name: str, paths: list[Path], lab: LabNotebook, settings: Settings,
                         pool: ScoringPool, release: str | None = None) -> Run:
    """Read, score and execute one submitted notebook (never raises for what the submission does).

    ``release``: the current release's version; a notebook made from another release gets a note."""
    began = time.monotonic()
    if len(paths) > 1:
        return Run(name, None, [f"{len(paths)} files claim this notebook: {', '.join(map(str, paths))}; none was "
                                "graded (keep one, then grade again with --regrade)"])
    try:
        submitted = read_notebook(paths[0])
    except Exception as error:
        return Run(name, None, [f"{paths[0].name} could not be read as a notebook: {type(error).__name__}: "
                                f"{' '.join(str(error).split())[:300]}"])
    nb, notes = runnable_copy(submitted)
    other = release_note(submitted, release)
    run = Run(name, nb, notes + ([other] if other else []))
    if not settings.execute:  # --no-execute: the points alone; the report shows the file's own outputs
        run.submitted = submitted
        await score_notebook(submitted, lab, run, pool)
        run.seconds = time.monotonic() - began
        return run
    rundir = kernel_folder()
    try:
        await all_of(execute(nb, run, rundir, settings), score_notebook(submitted, lab, run, pool))
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
    run.seconds = time.monotonic() - began
    return run


# ---------------------------------------------------------------- the whole run


def grade(
    submissions: list[Path],
    out_dir: Path,
    *,
    timeout: int = 120,
    budget: int = 900,
    instructor_dir: Path = REPO_ROOT / "notebooks",
    registry: Optional[list[Exercise]] = None,
    jobs: int = 1,
    sandbox: bool = True,
    memory: float = 4.0,
    regrade: tuple[str, ...] = (),
    readable: tuple[Path, ...] = (),
    score_timeout: float = 60.0,
    progress: bool = True,
    execute: bool = True,
    shard: Optional[tuple[int, int]] = None,
    feedback: bool = False,
) -> list[GradeResult]:
    """Grade every submission (files or folders of .ipynb); write reports, results and ``grades.csv``.

    ``timeout`` is per cell and ``budget`` per notebook, in seconds; ``jobs`` notebooks run at a time;
    ``memory`` GiB per sandbox. Students already graded in ``out_dir`` are skipped unless in ``regrade``.
    ``readable``: more folders the kernels may read (e.g. a module the notebooks import);
    ``score_timeout``: seconds for the scoring of one exercise (all its cases).
    ``execute=False`` (``--no-execute``): the points from the scorers alone, no notebook is run; the reports
    show the submitted outputs as data (:mod:`labutils.instructor.submitted`). ``shard=(I, N)``: grade only
    the students of shard I of N (:mod:`labutils.instructor.shards`). ``feedback``: also write
    ``feedback/<student>.html`` for the students (:mod:`labutils.instructor.feedback`).
    """
    if timeout < 1 or jobs < 1 or budget < 1 or not memory > 0:
        raise LabError(f"--timeout, --budget and --jobs must be at least 1 and --memory above 0, got {timeout}, "
                       f"{budget}, {jobs} and {memory}")
    problem = bwrap_problem() if sandbox else ""
    if problem:
        raise LabError(problem)
    lab = lab_notebooks(Path(instructor_dir), default_registry() if registry is None else list(registry))
    students, skipped = collect([Path(s) for s in submissions], list(lab))
    for line in skipped:
        tqdm.write(line, file=sys.stderr)
    if not students:
        raise LabError("no submission matches a notebook of the lab: name the files like the lab's notebooks, "
                       f"e.g. alice_{next(iter(lab))} or alice/{next(iter(lab))}")
    unknown = sorted(set(regrade) - set(students))
    if unknown:
        raise LabError(f"--regrade {', '.join(unknown)}: no such student among the submissions")
    if shard is not None:  # the same share of the class whatever the order of the files
        from .shards import in_shard, write_marker

        students = {s: students[s] for s in in_shard(sorted(students), shard)}
    out_dir = Path(out_dir)
    done = load_results(out_dir)  # out_dir is written only once the preflight has passed
    todo = sorted(s for s in students if s not in done or s in regrade)
    if not sandbox:
        tqdm.write(NO_SANDBOX_WARNING, file=sys.stderr)
    limits = Limits(memory=int(memory * 2**30), pids=128)
    cgroups = sandbox and cgroups_work(limits)
    if sandbox and not cgroups:
        tqdm.write("warning: no writable cgroup here (run as root, or delegate one): memory is limited per process "
                   "(RLIMIT_DATA), the number of processes is not", file=sys.stderr)
    _fetch_samples()
    checkout = [REPO_ROOT.resolve()] if (REPO_ROOT / "pyproject.toml").is_file() else []  # not site-packages
    hidden = [*checkout, out_dir.resolve(), Path(instructor_dir).resolve(), *{Path(s).resolve() for s in submissions}]
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    plain_env = {**os.environ, "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    plain_env.setdefault("LABUTILS_WEIGHTS", "random")
    plain_env.setdefault("OMP_NUM_THREADS", threads)
    settings = Settings(timeout, budget, KernelSetup(sandbox, limits, hidden, [Path(p) for p in readable],
                                                     {"OMP_NUM_THREADS": threads}, cgroups), plain_env, execute)
    every = tuple(sorted({m for notebook in lab.values() for g in notebook.exercises for m in g.exercise.modules}))
    pool_setup = ScoringSetup(sandbox, Limits(memory=int(min(memory, 2.0) * 2**30), pids=64), hidden, cgroups, 1,
                              score_timeout, every)
    release = current_release(Path(instructor_dir))
    not_graded: dict[str, str] = {}
    results = run_sync(_run_all)(todo, students, lab, settings, pool_setup, jobs, out_dir, done, progress,
                                 Path(instructor_dir), not_graded, release)
    graded = [results[s] for s in sorted(students) if s in results]
    if shard is not None:  # this folder holds shard I of N (read by --merge)
        (out_dir / "results").mkdir(parents=True, exist_ok=True)
        write_marker(out_dir, shard, list(students))
    if feedback:
        from .feedback import write_feedback

        write_feedback(graded, out_dir)
    if not_graded:
        raise NotGraded(graded, not_graded)
    return graded


def _fetch_samples() -> None:
    """Get the sample images before any sandbox starts (the sandboxes have no network)."""
    try:
        from ..data import sample_images, sample_path

        for sample in sample_images():
            sample_path(sample.name, progress=False)
    except Exception as error:
        tqdm.write(f"warning: the sample images are not all here ({' '.join(str(error).split())[:200]}); "
                   "notebooks that load them will fail: run python -m labutils fetch", file=sys.stderr)


def kernel_folder() -> Path:
    """A folder for one notebook's kernel connection files, in memory where possible (named after the grader)."""
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=f"labutils-kernel-{os.getpid()}-", dir=shm))


def outside_limit(settings: Settings, pool_setup: ScoringSetup, notebook: LabNotebook) -> float:
    """Seconds one notebook may take in all (its run, its scoring, the kernels' and scorers' starts), after
    which the grader stops waiting on it."""
    return settings.budget + len(notebook.exercises) * (pool_setup.timeout + 30) + 2 * START_TIMEOUT + 60


PREFLIGHT_CELL = "import labutils, numpy, torch, matplotlib.pyplot\nprint('preflight', 1 + 1)"


async def preflight(lab: dict[str, LabNotebook], instructor_dir: Path, settings: Settings, pool: ScoringPool) -> str:
    """Why this run cannot grade anyone ('' when it can): the instructor's own solutions, scored by the run's
    scoring processes, must earn full marks, and (unless ``--no-execute``) a kernel must start in the run's
    sandbox and import the lab. Every scoring process and the kernel start at once."""
    runs = {name: Run(name, None) for name in lab}
    scoring = [score_notebook(nbformat.read(instructor_dir / name, as_version=4), notebook, runs[name], pool)
               for name, notebook in lab.items()]
    checks = await all_of(*scoring, *([_kernel_problem(settings)] if settings.execute else []))
    problem = checks[-1] if settings.execute else ""
    for name, notebook in lab.items():
        for graded in notebook.exercises:
            found = runs[name].verdicts[graded.exercise.grade_id]
            if not found.passed:
                if found.infrastructure:
                    return f"no scoring process can run here: {found.message}; {fix_for(found.message)}"
                return (f"the instructor's own solution to {graded.exercise.grade_id} ({instructor_dir / name}) does "
                        f"not earn its points here: {found.message}; check the registry, the notebook and that the "
                        "modules the exercise needs are installed (--notebooks DIR names the instructor's notebooks)")
    return problem


async def _kernel_problem(settings: Settings) -> str:
    """Why a notebook kernel cannot run in this run's sandbox and import the lab ('' when it can)."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(PREFLIGHT_CELL)])
    run = Run("preflight", nb)
    rundir = kernel_folder()
    slow = max(settings.timeout, int(START_TIMEOUT))  # importing torch on a busy machine is not a failure
    try:
        await execute(nb, run, rundir, dataclasses.replace(settings, timeout=slow, budget=max(settings.budget, slow)))
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
    if run.infrastructure:
        return f"no notebook kernel can run here: {run.infrastructure[0]}; {fix_for(run.infrastructure[0])}"
    outputs = nb.cells[0].get("outputs", [])
    errors = [o for o in outputs if o.get("output_type") == "error"]
    if errors or not any("preflight 2" in str(o.get("text", "")) for o in outputs):
        said = f"{errors[0].get('ename')}: {errors[0].get('evalue')}" if errors else "; ".join(run.notes) or "no output"
        return (f"a notebook kernel in the sandbox cannot import the lab ({' '.join(said.split())[:400]}); "
                "install labutils, torch and matplotlib in the Python environment that runs the grader")
    return ""


async def _run_all(todo: list[str], students: dict, lab: dict[str, LabNotebook], settings: Settings,
                   pool_setup: ScoringSetup, jobs: int, out_dir: Path, done: dict[str, GradeResult],
                   progress: bool, instructor_dir: Path, not_graded: dict[str, str],
                   release: str | None = None) -> dict[str, GradeResult]:
    """The preflight, then the students of ``todo``, ``jobs`` notebooks at a time; each one is saved as soon as
    it is known, except those the grader's side failed (``not_graded``: student -> cause)."""
    slots = asyncio.Semaphore(jobs)
    pool = ScoringPool(pool_setup)
    stopped_by: list[str] = []
    running: list[asyncio.Future] = []

    def stop(name: str) -> None:  # SIGINT, SIGTERM: every sandbox, cgroup and folder is removed on the way out
        stopped_by.append(name)
        for future in running:
            future.cancel()

    loop = asyncio.get_running_loop()
    signals = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop, sig.name)
            signals.append(sig)
        except (RuntimeError, ValueError, NotImplementedError):  # not the main thread: the caller's handlers
            pass
    try:
        return await _grade_all(todo, students, lab, settings, pool, slots, out_dir, done, progress, instructor_dir,
                                not_graded, release, stopped_by, running)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await pool.close()


async def _grade_all(todo: list[str], students: dict, lab: dict[str, LabNotebook], settings: Settings,
                     pool: ScoringPool, slots: asyncio.Semaphore, out_dir: Path, done: dict[str, GradeResult],
                     progress: bool, instructor_dir: Path, not_graded: dict[str, str], release: str | None,
                     stopped_by: list[str], running: list[asyncio.Future]) -> dict[str, GradeResult]:
    """_run_all's work: what it runs is put in ``running``, for a signal to cancel."""
    running.append(asyncio.ensure_future(preflight(lab, instructor_dir, settings, pool)))
    try:
        problem = await running[-1]
    except asyncio.CancelledError:
        if stopped_by:
            raise LabError(f"stopped by {stopped_by[0]} during the preflight: nothing was graded or written") \
                from None
        raise
    if problem:
        raise LabError(f"preflight: {problem}")
    pool_setup = pool.setup
    out_dir.mkdir(parents=True, exist_ok=True)
    results = dict(done)
    saving = asyncio.Lock()
    bar = Progress(len(todo), enabled=progress)  # students done, failures so far, time left

    async def notebook(name: str, paths: list[Path]) -> Run:
        limit = outside_limit(settings, pool_setup, lab[name])
        async with slots:
            try:
                return await asyncio.wait_for(grade_notebook(name, paths, lab[name], settings, pool, release), limit)
            except asyncio.TimeoutError:  # the grader waited on something that did not end: not a grade
                why = f"{name} was stopped after {limit:.0f} s, the grader's outside limit for one notebook"
                return Run(name, None, [why], infrastructure=[why])
            except Exception as error:  # whatever went wrong, the other notebooks are still graded
                why = f"grading {name} failed: {type(error).__name__}: {error}"
                return Run(name, None, [why], infrastructure=[why])

    async def student(sid: str) -> None:
        mine = students[sid]
        names = [name for name in lab if name in mine]
        runs = dict(zip(names, await all_of(*(notebook(n, mine[n]) for n in names))))
        causes = [f"{name}: {why}" for name, run in runs.items() for why in run.infrastructure] + \
            [f"{name}, {grade_id}: {v.message}" for name, run in runs.items() for grade_id, v in run.verdicts.items()
             if v.infrastructure]
        if causes:  # the grader's side failed: no grade (never a 0), and a re-run grades this student
            not_graded[sid] = causes[0] + (f" (and {len(causes) - 1} more)" if len(causes) > 1 else "")
            bar.student(sid, True)
            return
        exercises, questions, notes = [], [], []
        for name, notebook_lab in lab.items():
            if name in runs:
                found, answers = score(runs[name], notebook_lab)
                notes += [f"{name}: {note}" for note in runs[name].notes]
            else:
                found, answers = not_submitted(notebook_lab)
            exercises += found
            questions += answers
        earlier = {q.grade_id: q for q in done[sid].questions} if sid in done else {}
        for q in questions:  # a mark stays with an answer that did not change
            if q.grade_id in earlier and earlier[q.grade_id].answer == q.answer:
                q.points, q.marked_at = earlier[q.grade_id].points, earlier[q.grade_id].marked_at
        result = GradeResult(sid, exercises, out_dir / f"{file_name(sid)}.html", notes,
                             sum(r.seconds for r in runs.values()), questions)
        async with saving:
            failed = any(r.nb is None and len(mine[r.notebook]) == 1 for r in runs.values())  # unreadable, crashed
            try:
                save(result, runs, out_dir)
            except Exception as error:
                result.notes.append(f"saving failed: {type(error).__name__}: {error}")
                failed = True
            results[sid] = result
            write_csv(list(results.values()), out_dir / "grades.csv")
            bar.student(sid, failed)

    everyone = asyncio.ensure_future(all_of(*(student(s) for s in todo)))
    running.append(everyone)
    if stopped_by:  # a signal came as the preflight ended
        everyone.cancel()
    try:
        await everyone
    except asyncio.CancelledError:
        if not stopped_by:
            raise
    finally:
        bar.close()
    write_csv(list(results.values()), out_dir / "grades.csv")
    if stopped_by:
        write_marks_template(list(results.values()), out_dir / "marks-template.csv")
        raise LabError(f"stopped by {stopped_by[0]}: the {len(results)} student(s) graded so far are kept in "
                       f"{out_dir}; run the same command again to grade the rest")
    write_marks_template(list(results.values()), out_dir / "marks-template.csv")
    write_similarity(list(results.values()), out_dir)
    return results
