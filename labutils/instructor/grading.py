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
"""

from __future__ import annotations

import asyncio
import copy
import csv
import hashlib
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import nbformat
from jupyter_core.utils import run_sync
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError
from tqdm import tqdm

from ..errors import LabError
from ..exercise import Exercise
from .kernel import KernelSetup, kernel_manager
from .sandbox import NO_SANDBOX_WARNING, Limits, bwrap_works, cgroups_work, make_cgroup, INSTALL_HINT
from .scoring import ScoringPool, ScoringSetup, Verdict, copies_reference, import_lines
from .student import REPO_ROOT, TEXT_BEGIN, TEXT_END

OUTPUT_CAP = 100_000  # characters of text output kept per cell
FIGURES_CAP = 8_000_000  # characters of figures (base64) kept per notebook
FIGURE_CAP = 60  # figures shown per notebook in the report
KERNEL_STARTS = 4  # kernels per notebook at most: the first one and 3 replacements
TIMEOUT_ERROR = "GraderTimeout"
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # OWASP: cells a spreadsheet would read as a formula


# ---------------------------------------------------------------- results


@dataclass
class ExerciseResult:
    """One exercise of one submission: what scoring found and the points it earned."""

    grade_id: str
    notebook: str
    points: float
    max_points: float
    passed: bool
    message: str  # the PASS line, or the one line that says why not
    copied: bool = False  # the solution's code is the reference's, once normalised: the instructor judges


@dataclass
class QuestionResult:
    """One written (manually graded) answer: the student's text next to the mark scheme."""

    grade_id: str
    notebook: str
    max_points: float
    answer: str
    scheme: str
    points: Optional[float] = None  # from the marks CSV


@dataclass
class GradeResult:
    """One student's graded lab."""

    student: str
    exercises: list[ExerciseResult]
    report: Path
    notes: list[str] = field(default_factory=list)  # what happened beyond the exercises (timeouts, crashes...)
    seconds: float = 0.0  # wall time spent on this student's notebooks
    questions: list[QuestionResult] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(e.points for e in self.exercises) + sum(q.points or 0.0 for q in self.questions)

    @property
    def max_points(self) -> float:
        return sum(e.max_points for e in self.exercises) + sum(q.max_points for q in self.questions)

    def to_json(self) -> dict:
        return {"student": self.student, "exercises": [asdict(e) for e in self.exercises],
                "questions": [asdict(q) for q in self.questions], "report": self.report.name, "notes": self.notes,
                "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: dict, folder: Path) -> "GradeResult":
        return cls(str(data["student"]), [ExerciseResult(**e) for e in data["exercises"]],
                   folder / Path(str(data["report"])).name, list(data.get("notes", [])),
                   float(data.get("seconds", 0.0)), [QuestionResult(**q) for q in data.get("questions", [])])


@dataclass(frozen=True)
class Graded:
    """An exercise of the lab: the registry's entry and the points of its check cell."""

    exercise: Exercise
    points: float


@dataclass(frozen=True)
class Question:
    """A manually graded cell of the instructor's notebook (nbgrader ``grade`` and ``solution``)."""

    grade_id: str
    points: float
    scheme: str


@dataclass(frozen=True)
class LabNotebook:
    name: str
    exercises: tuple[Graded, ...]
    questions: tuple[Question, ...]


@dataclass
class Run:
    """One submitted notebook after execution and scoring."""

    notebook: str
    nb: nbformat.NotebookNode | None
    notes: list[str] = field(default_factory=list)
    timed_out: set[int] = field(default_factory=set)
    not_run: dict[int, str] = field(default_factory=dict)  # cell index -> why it did not run
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    copied: set[str] = field(default_factory=set)
    answers: dict[str, str] = field(default_factory=dict)  # question grade_id -> the student's cell
    seconds: float = 0.0


# ---------------------------------------------------------------- the instructor's notebooks


def nbgrader(cell: Any) -> dict:
    """A cell's nbgrader metadata with a string grade_id, or {} (whatever types a submission holds)."""
    meta = cell.get("metadata") if isinstance(cell, dict) else None
    found = meta.get("nbgrader") if isinstance(meta, dict) else None
    if not isinstance(found, dict) or not isinstance(found.get("grade_id"), str):
        return {}
    return found


def _declared(meta: dict, where: str) -> float:
    try:
        value = float(meta.get("points", 0))
    except (TypeError, ValueError):
        raise LabError(f"{where}: nbgrader points {meta.get('points')!r} is not a number") from None
    if not value >= 0:
        raise LabError(f"{where}: nbgrader points must be 0 or more, got {value}")
    return value


def mark_scheme(source: str) -> str:
    """The marked region(s) of an instructor's answer cell, or the whole cell."""
    lines, inside, kept = source.split("\n"), False, []
    for line in lines:
        if TEXT_BEGIN.match(line):
            inside = True
        elif TEXT_END.match(line):
            inside = False
        elif inside:
            kept.append(line)
    return "\n".join(kept).strip() or source.strip()


def lab_notebooks(folder: Path, registry: list[Exercise]) -> dict[str, LabNotebook]:
    """The instructor's notebooks that hold exercises or questions, checked against the registry."""
    by_id = {e.grade_id: e for e in registry}
    if len(by_id) != len(registry):
        raise LabError("the registry lists one grade_id twice; give each exercise its own")
    found, seen = {}, set()
    for path in sorted(Path(folder).glob("*.ipynb")):
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception as error:
            raise LabError(f"the instructor's notebook {path} is not readable ({type(error).__name__}: {error})"
                           ) from None
        exercises, questions = [], []
        for n, cell in enumerate(nb.cells):
            meta = nbgrader(cell)
            if not meta.get("grade"):
                continue
            grade_id, where = meta["grade_id"], f"{path.name}, cell {n + 1}"
            if grade_id in seen:
                raise LabError(f"{where}: grade_id {grade_id} is used twice; make each one unique")
            seen.add(grade_id)
            if meta.get("solution"):
                questions.append(Question(grade_id, _declared(meta, where), mark_scheme(cell.source)))
            elif grade_id in by_id:
                exercise = by_id[grade_id]
                if exercise.notebook != path.name:
                    raise LabError(f"{where}: exercise {grade_id} belongs to {exercise.notebook} in the registry")
                exercises.append(Graded(exercise, _declared(meta, where)))
            else:
                raise LabError(f"{where}: the check cell {grade_id} has no exercise in the registry "
                               "(labutils.checks.EXERCISES); add one, or remove grade: true from the cell")
        if exercises or questions:
            found[path.name] = LabNotebook(path.name, tuple(exercises), tuple(questions))
    missing = sorted(set(by_id) - {g.exercise.grade_id for lab in found.values() for g in lab.exercises})
    if missing:
        raise LabError(f"{folder} has no check cell for the registry's exercise(s) {', '.join(missing)}")
    if not found:
        raise LabError(f"{folder} holds no notebook with graded cells (nbgrader metadata grade: true); "
                       "pass the folder of the instructor's notebooks")
    return found


def default_registry() -> list[Exercise]:
    """The lab's exercises: ``labutils.checks.EXERCISES`` (imported in the grader's process only)."""
    try:
        from .. import checks
    except ImportError as error:
        raise LabError(f"labutils.checks cannot be imported ({error})") from None
    registry = getattr(checks, "EXERCISES", None)
    if not isinstance(registry, (list, tuple)) or not all(isinstance(e, Exercise) for e in registry):
        raise LabError("labutils.checks has no EXERCISES list of labutils.exercise.Exercise: the grader scores "
                       "exercises from that registry")
    return list(registry)


# ---------------------------------------------------------------- which file is whose


def match_submission(path: Path, notebooks: list[str]) -> tuple[str, str] | None:
    """(student id, lab notebook name) of a submitted file, or None when it matches no lab notebook."""
    stem = path.stem
    for name in sorted(notebooks, key=len, reverse=True):
        lab = Path(name).stem
        if stem == lab:
            return path.absolute().parent.name, name
        if stem.endswith(lab) and stem[: -len(lab)][-1:] in ("_", "-", ".", " "):
            return stem[: -len(lab)].rstrip("_-. "), name
    return None


def _files(item: Path, skipped: list[str]) -> list[Path]:
    """The notebooks of a submitted file or folder, symbolic links refused (not followed)."""
    if item.is_symlink():
        skipped.append(f"refused {item}: a symbolic link (submit the file itself)")
        return []
    if item.is_file():
        return [item]
    if not item.is_dir():
        raise LabError(f"{item} does not exist; pass submitted notebooks or folders of them")
    found = []
    for root, dirs, names in os.walk(item, followlinks=False):
        for name in sorted(dirs):
            if Path(root, name).is_symlink():
                skipped.append(f"refused {Path(root, name)}: a symbolic link (submit the folder itself)")
        dirs[:] = sorted(d for d in dirs if d != ".ipynb_checkpoints" and not Path(root, d).is_symlink())
        for name in sorted(names):
            path = Path(root, name)
            if name.endswith(".ipynb"):
                if path.is_symlink():
                    skipped.append(f"refused {path}: a symbolic link (submit the file itself)")
                else:
                    found.append(path)
    if not found and not skipped:
        raise LabError(f"{item} is a folder with no .ipynb files")
    return found


def collect(submissions: list[Path], notebooks: list[str]) -> tuple[dict[str, dict[str, list[Path]]], list[str]]:
    """student -> {lab notebook -> the files that claim it (more than one: a conflict)}, and skipped files."""
    skipped: list[str] = []
    files: dict[Path, Path] = {}
    for item in map(Path, submissions):
        for path in _files(item, skipped):
            files.setdefault(path.resolve(), path)  # the same file given twice counts once
    students: dict[str, dict[str, list[Path]]] = {}
    for path in files.values():
        match = match_submission(path, notebooks)
        if match is None:
            skipped.append(f"skipped {path}: its name ends with none of {', '.join(notebooks)}")
            continue
        student, name = match
        students.setdefault(student or "unnamed", {}).setdefault(name, []).append(path)
    return students, skipped


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """Read a submitted file without following a symbolic link put in its place."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "r", encoding="utf-8") as f:
        return nbformat.read(f, as_version=4)


# ---------------------------------------------------------------- the notebook that runs


def runnable_copy(submitted: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, list[str]]:
    """The submission's cells without outputs; malformed cells left out."""
    metadata = submitted.get("metadata")
    nb = nbformat.v4.new_notebook(metadata=copy.deepcopy(dict(metadata)) if isinstance(metadata, dict) else {})
    nb.metadata.pop("widgets", None)
    notes = []
    cells = submitted.get("cells")
    for cell in cells if isinstance(cells, list) else []:
        if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown", "raw") \
                or not isinstance(cell.get("source"), str):
            notes.append("a malformed cell was left out")
            continue
        new = nbformat.v4.new_code_cell(cell["source"]) if cell["cell_type"] == "code" else \
            nbformat.v4.new_markdown_cell(cell["source"]) if cell["cell_type"] == "markdown" else \
            nbformat.v4.new_raw_cell(cell["source"])
        meta = nbgrader(cell)
        if meta:
            new.metadata["nbgrader"] = {"grade_id": meta["grade_id"], "solution": bool(meta.get("solution"))}
        nb.cells.append(new)
    return nb, notes


class _GraderClient(NotebookClient):
    """nbclient, with caps on output and figures, and a record of the cells that ran past the timeout."""

    def __init__(self, nb: nbformat.NotebookNode, run: Run, sizes: dict, **kw: object) -> None:
        super().__init__(nb, **kw)
        self.run, self.sizes = run, sizes  # sizes: (cell, "text") and "figures" -> characters received
        self.on_cell_executed = self._executed

    def output(self, outs, msg, display_id, cell_index):  # type: ignore[no-untyped-def]
        content = msg.get("content", {})
        data = content.get("data", {}) if isinstance(content.get("data"), dict) else {}
        figure = any(str(mime).startswith("image/") for mime in data)
        size = len(str(content.get("text", ""))) + sum(len(str(v)) for v in data.values())
        key = "figures" if figure else (cell_index, "text")
        self.sizes[key] = self.sizes.get(key, 0) + size
        if self.sizes[key] > (FIGURES_CAP if figure else OUTPUT_CAP) and msg["msg_type"] != "error":
            return None
        return super().output(outs, msg, display_id, cell_index)

    def _executed(self, cell, cell_index, execute_reply):  # type: ignore[no-untyped-def]
        if self.sizes.get((cell_index, "text"), 0) > OUTPUT_CAP:
            note = f"cell {cell_index + 1} printed more than {OUTPUT_CAP} characters: the rest was cut"
            self.run.notes.append(note)
            cell.outputs.append(nbformat.v4.new_output("stream", name="stderr", text=f"\n[grader: {note}]\n"))
            self.sizes[(cell_index, "text")] = 0
        if self.sizes.get("figures", 0) > FIGURES_CAP and not self.sizes.get("figures noted"):
            self.sizes["figures noted"] = 1
            self.run.notes.append(f"the figures passed {FIGURES_CAP} characters in cell {cell_index + 1}: "
                                  "later figures were left out")
        content = (execute_reply or {}).get("content", {})
        if content.get("ename") == TIMEOUT_ERROR:
            self.run.timed_out.add(cell_index)
            cell.outputs.append(nbformat.v4.new_output(
                "error", ename=TIMEOUT_ERROR, evalue=content["evalue"], traceback=[content["evalue"]]))

    async def responsive(self, seconds: float) -> bool:
        """Whether the kernel answers a trivial request within ``seconds`` (after an interrupt)."""
        saved, self.timeout = self.timeout, seconds
        try:
            msg_id = self.kc.execute("pass", store_history=False)
            return await self.async_wait_for_reply(msg_id) is not None
        finally:
            self.timeout = saved


@dataclass
class Settings:
    """One grading run's settings."""

    timeout: int
    budget: int
    kernel: KernelSetup
    plain_env: dict[str, str]  # the kernel's environment without a sandbox


async def execute(nb: nbformat.NotebookNode, run: Run, rundir: Path, settings: Settings) -> None:
    """Run every code cell of ``nb`` in place; a new kernel takes over after a crash or a stuck cell."""
    start, kernels, sizes = 0, 0, {}
    code = [n for n, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]
    deadline = time.monotonic() + settings.budget
    cgroup = make_cgroup(settings.kernel.limits) if settings.kernel.sandboxed and settings.kernel.cgroups else None
    launched: list = []  # the kernels' processes (subprocess.Popen)
    try:
        while start < len(nb.cells):
            if kernels == KERNEL_STARTS or time.monotonic() >= deadline:
                why = f"{KERNEL_STARTS} kernels died or got stuck in this notebook" if kernels == KERNEL_STARTS \
                    else f"the notebook's time budget of {settings.budget} s was used up"
                for n in (n for n in code if n >= start):
                    run.not_run[n] = f"not run: {why}"
                run.notes.append(f"cells from {start + 1} on were not run: {why}")
                return
            kernels += 1
            km = kernel_manager(settings.kernel, rundir, cgroup, kernels)
            client = _GraderClient(
                nb, run, sizes, km=km, timeout=settings.timeout, kernel_name="python3", allow_errors=True,
                interrupt_on_timeout=True, record_timing=False, resources={"metadata": {"path": str(rundir)}},
                error_on_timeout={"ename": TIMEOUT_ERROR, "evalue": "stopped: the cell ran out of time",
                                  "traceback": []},
            )  # fmt: skip
            index = start
            quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
            try:
                env = settings.plain_env if km is None else {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
                async with client.async_setup_kernel(env=env, **quiet):  # sandboxed: bwrap gets no secrets
                    launched.append(getattr(getattr(client.km, "provisioner", None), "process", None))
                    for index in range(start, len(nb.cells)):
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        client.timeout = max(1, int(min(settings.timeout, left)))
                        client.error_on_timeout = {"ename": TIMEOUT_ERROR, "traceback": [], "evalue":
                                                   f"stopped: the cell ran longer than {client.timeout} s"}
                        await client.async_execute_cell(nb.cells[index], index, execution_count=index + 1)
                        if index in run.timed_out and not await client.responsive(min(settings.timeout, 10)):
                            run.notes.append(f"cell {index + 1} ran past the timeout and the kernel did not recover "
                                             "from the interrupt: a new kernel ran the cells after it")
                            break
                    else:
                        return
                    if time.monotonic() >= deadline:
                        start = index
                        continue
            except DeadKernelError:
                oom = cgroup is not None and cgroup.oom_killed()
                why = f"ran out of memory (limit {settings.kernel.limits.memory / 2**30:g} GiB)" if oom else "died"
                run.notes.append(f"the kernel {why} in cell {index + 1}; a new kernel ran the cells after it "
                                 "(without what the earlier cells defined)")
                nb.cells[index].outputs.append(nbformat.v4.new_output(
                    "error", ename="DeadKernelError", evalue=f"the kernel {why} while running this cell",
                    traceback=[]))
            except Exception as error:  # the kernel did not start, a broken connection...
                if index == start and not client.kc:
                    for n in (n for n in code if n >= start):
                        run.not_run[n] = f"not run: the kernel did not start ({type(error).__name__}: {error})"
                    run.notes.append(f"the kernel did not start: {type(error).__name__}: {error}")
                    return
                run.notes.append(f"execution stopped in cell {index + 1}: {type(error).__name__}: {error}")
            start = index + 1
    finally:
        if cgroup is not None:
            await asyncio.get_running_loop().run_in_executor(None, cgroup.remove)
        for process in filter(None, launched):  # reaped, never left as zombies
            try:
                process.kill()
                await asyncio.get_running_loop().run_in_executor(None, process.wait)
            except (OSError, AttributeError):
                pass


async def score_notebook(submitted: nbformat.NotebookNode, lab: LabNotebook, run: Run, pool: ScoringPool) -> None:
    """Score each exercise of the notebook from the solution cells of the grader's own copy."""
    cells = [c for c in submitted.get("cells", []) if isinstance(c, dict)] \
        if isinstance(submitted.get("cells"), list) else []
    for graded in lab.exercises:
        exercise = graded.exercise
        where = [n for n, c in enumerate(cells) if nbgrader(c).get("grade_id") == exercise.solution_grade_id
                 and c.get("cell_type") == "code" and isinstance(c.get("source"), str)]
        if not where:
            run.verdicts[exercise.grade_id] = Verdict(False, f"no solution cell {exercise.solution_grade_id} in "
                                                             "this notebook (made from an older handout?)")
            continue
        if len(where) > 1:
            run.notes.append(f"{len(where)} cells claim to be the solution {exercise.solution_grade_id}: the first "
                             "was scored")
        code = cells[where[0]]["source"]
        prelude = import_lines([c["source"] for c in cells[: where[0]] if c.get("cell_type") == "code"
                                and isinstance(c.get("source"), str)])
        run.verdicts[exercise.grade_id] = await pool.score(exercise, code, prelude)
        if copies_reference(code, exercise):
            run.copied.add(exercise.grade_id)
    for question in lab.questions:
        answers = [c["source"] for c in cells if nbgrader(c).get("grade_id") == question.grade_id
                   and isinstance(c.get("source"), str)]
        run.answers[question.grade_id] = answers[0] if answers else "(no answer cell: deleted, or an older handout)"


async def grade_notebook(name: str, paths: list[Path], lab: LabNotebook, settings: Settings,
                         pool: ScoringPool) -> Run:
    """Read, score and execute one submitted notebook (never raises for what the submission does)."""
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
    run = Run(name, nb, notes)
    rundir = Path(tempfile.mkdtemp(prefix="labutils-kernel-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK)
                                   else None))
    try:
        await asyncio.gather(execute(nb, run, rundir, settings), score_notebook(submitted, lab, run, pool))
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
    run.seconds = time.monotonic() - began
    return run


# ---------------------------------------------------------------- scores


def _first_line(text: str, limit: int = 400) -> str:
    line = next((line.strip() for line in str(text).splitlines() if line.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _error_line(out: nbformat.NotebookNode) -> str:
    evalue = _first_line(out.get("evalue", ""))
    return f"{out.get('ename', 'Error')}: {evalue}" if evalue else str(out.get("ename", "Error"))


def score(run: Run, lab: LabNotebook) -> tuple[list[ExerciseResult], list[QuestionResult]]:
    """Each exercise of the notebook: passed (points) or not (0, and why); each written answer."""
    exercises = []
    for graded in lab.exercises:
        grade_id = graded.exercise.grade_id
        found = run.verdicts.get(grade_id) or Verdict(False, run.notes[0] if run.notes else "not graded")
        exercises.append(ExerciseResult(grade_id, lab.name, graded.points if found.passed else 0.0, graded.points,
                                        found.passed, found.message, grade_id in run.copied))
    questions = [QuestionResult(q.grade_id, lab.name, q.points, run.answers.get(q.grade_id, "(not submitted)"),
                                q.scheme) for q in lab.questions]
    return exercises, questions


def not_submitted(lab: LabNotebook) -> tuple[list[ExerciseResult], list[QuestionResult]]:
    return ([ExerciseResult(g.exercise.grade_id, lab.name, 0.0, g.points, False, f"{lab.name} was not submitted")
             for g in lab.exercises],
            [QuestionResult(q.grade_id, lab.name, q.points, "(not submitted)", q.scheme) for q in lab.questions])


# ---------------------------------------------------------------- files


def _points(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


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


def save(result: GradeResult, runs: dict[str, Run], out_dir: Path) -> None:
    """The student's report and result file; a report that cannot be written becomes a note."""
    try:
        _write_text(result.report, report_html(result, runs))
    except Exception as error:
        result.notes.append(f"the report could not be written: {type(error).__name__}: {error}")
        _write_text(result.report, report_html(result, {}))
    (out_dir / "results").mkdir(exist_ok=True)
    _write_text(out_dir / "results" / f"{result.report.stem}.json", json.dumps(result.to_json(), indent=1))


def merge_marks(marks: Path, out_dir: Path) -> list[GradeResult]:
    """Merge manual marks into ``out_dir``'s results and rewrite grades.csv; no notebook is run.

    ``marks`` is a CSV with a header row and the columns ``student,question,points`` (more columns,
    e.g. ``max`` and ``comment`` of ``marks-template.csv``, are ignored); an empty ``points`` leaves
    that answer unmarked. Every row is checked before anything is written.
    """
    out_dir = Path(out_dir)
    results = load_results(out_dir)
    if not results:
        raise LabError(f"{out_dir} holds no graded students (results/*.json); grade the submissions first")
    try:
        rows = list(csv.DictReader(Path(marks).read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise LabError(f"--marks {marks}: not a readable CSV file ({error})") from None
    if rows and not {"student", "question", "points"} <= set(rows[0]):
        raise LabError(f"--marks {marks}: the header must name the columns student, question, points")
    updates = []
    for n, row in enumerate(rows, start=2):
        student, question = from_spreadsheet(row["student"] or ""), from_spreadsheet(row["question"] or "")
        text = (row["points"] or "").strip()
        if student not in results:
            raise LabError(f"--marks {marks}, line {n}: no graded student {student!r} in {out_dir}")
        found = [q for q in results[student].questions if q.grade_id == question]
        if not found:
            raise LabError(f"--marks {marks}, line {n}: {student} has no written answer {question!r}")
        try:
            value = None if text == "" else float(text)
        except ValueError:
            raise LabError(f"--marks {marks}, line {n}: points {text!r} is not a number") from None
        if value is not None and not 0 <= value <= found[0].max_points:
            raise LabError(f"--marks {marks}, line {n}: {value:g} points is outside 0..{found[0].max_points:g}")
        updates.append((found[0], value))
    for question, value in updates:
        question.points = value
    for result in results.values():
        _write_text(out_dir / "results" / f"{result.report.stem}.json", json.dumps(result.to_json(), indent=1))
    write_csv(list(results.values()), out_dir / "grades.csv")
    return list(results.values())


# ---------------------------------------------------------------- reports


STYLE = """body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
.pass{color:#176317;font-weight:bold}.fail{color:#b00020;font-weight:bold}.flag{color:#8a5a00;font-weight:bold}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;white-space:pre-wrap}figure{display:inline-block;margin:.5em}
img{max-width:100%;border:1px solid #ddd}figcaption{font-size:small;color:#555}"""


def report_html(result: GradeResult, runs: dict[str, Run]) -> str:
    """One student's report: scores, flags, written answers and mark schemes, notes, code, figures (escaped)."""
    e = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(result.student)}: grading report"
             f"</title><style>{STYLE}</style></head><body>",
             f"<h1>{e(result.student)}: {_points(result.total)} / {_points(result.max_points)} points</h1>",
             "<table><tr><th>notebook</th><th>exercise</th><th>points</th><th>result</th><th>message</th></tr>"]
    for x in result.exercises:
        verdict = "<span class='pass'>PASS</span>" if x.passed else "<span class='fail'>FAIL</span>"
        flag = ("<br><span class='flag'>FLAG: the solution is the reference implementation's code "
                "(normalised); judge it yourself</span>") if x.copied else ""
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
    for name, run in runs.items():
        parts.append(f"<h2>{e(name)}</h2>")
        if run.nb is None:
            parts.append("<p>Not graded (see above).</p>")
            continue
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
    parts.append("</body></html>")
    return "\n".join(parts)


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
) -> list[GradeResult]:
    """Grade every submission (files or folders of .ipynb); write reports, results and ``grades.csv``.

    ``timeout`` is per cell and ``budget`` per notebook, in seconds; ``jobs`` notebooks run at a time;
    ``memory`` GiB per sandbox. Students already graded in ``out_dir`` are skipped unless in ``regrade``.
    ``readable``: more folders the kernels may read (e.g. a module the notebooks import);
    ``score_timeout``: seconds for the scoring of one exercise (all its cases).
    """
    if timeout < 1 or jobs < 1 or budget < 1 or not memory > 0:
        raise LabError(f"--timeout, --budget and --jobs must be at least 1 and --memory above 0, got {timeout}, "
                       f"{budget}, {jobs} and {memory}")
    if sandbox and not bwrap_works():
        raise LabError(INSTALL_HINT)
    lab = lab_notebooks(Path(instructor_dir), default_registry() if registry is None else list(registry))
    students, skipped = collect([Path(s) for s in submissions], list(lab))
    for line in skipped:
        tqdm.write(line, file=sys.stderr)
    if not students:
        raise LabError("no submission matches a notebook of the lab: name the files like the lab's notebooks, "
                       f"e.g. alice_{next(iter(lab))} or alice/{next(iter(lab))}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = load_results(out_dir)
    unknown = sorted(set(regrade) - set(students))
    if unknown:
        raise LabError(f"--regrade {', '.join(unknown)}: no such student among the submissions")
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
                                                     {"OMP_NUM_THREADS": threads}, cgroups), plain_env)
    every = tuple(sorted({m for notebook in lab.values() for g in notebook.exercises for m in g.exercise.modules}))
    pool_setup = ScoringSetup(sandbox, Limits(memory=int(min(memory, 2.0) * 2**30), pids=64), hidden, cgroups, 1,
                              score_timeout, every)
    results = run_sync(_run_all)(todo, students, lab, settings, pool_setup, jobs, out_dir, done, progress)
    return [results[s] for s in sorted(students) if s in results]


def _fetch_samples() -> None:
    """Get the sample images before any sandbox starts (the sandboxes have no network)."""
    try:
        from ..data import sample_images, sample_path

        for sample in sample_images():
            sample_path(sample.name, progress=False)
    except Exception as error:
        tqdm.write(f"warning: the sample images are not all here ({' '.join(str(error).split())[:200]}); "
                   "notebooks that load them will fail: run python -m labutils fetch", file=sys.stderr)


async def _run_all(todo: list[str], students: dict, lab: dict[str, LabNotebook], settings: Settings,
                   pool_setup: ScoringSetup, jobs: int, out_dir: Path, done: dict[str, GradeResult],
                   progress: bool) -> dict[str, GradeResult]:
    """Grade the students of ``todo``, ``jobs`` notebooks at a time; save each one as soon as it is known."""
    slots = asyncio.Semaphore(jobs)
    pool = ScoringPool(pool_setup)
    results = dict(done)
    saving = asyncio.Lock()
    total = sum(len(students[s]) for s in todo)
    bar = tqdm(total=total, desc="grading", unit="notebook", disable=not progress)

    async def notebook(name: str, paths: list[Path]) -> Run:
        async with slots:
            try:
                return await grade_notebook(name, paths, lab[name], settings, pool)
            except Exception as error:  # whatever went wrong, the other notebooks are still graded
                return Run(name, None, [f"grading {name} failed: {type(error).__name__}: {error}"])
            finally:
                bar.update()

    async def student(sid: str) -> None:
        mine = students[sid]
        names = [name for name in lab if name in mine]
        runs = dict(zip(names, await asyncio.gather(*(notebook(n, mine[n]) for n in names))))
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
                q.points = earlier[q.grade_id].points
        result = GradeResult(sid, exercises, out_dir / f"{file_name(sid)}.html", notes,
                             sum(r.seconds for r in runs.values()), questions)
        async with saving:
            try:
                save(result, runs, out_dir)
            except Exception as error:
                result.notes.append(f"saving failed: {type(error).__name__}: {error}")
            results[sid] = result
            write_csv(list(results.values()), out_dir / "grades.csv")

    try:
        await asyncio.gather(*(student(s) for s in todo))
    finally:
        bar.close()
        await pool.close()
    write_csv(list(results.values()), out_dir / "grades.csv")
    write_marks_template(list(results.values()), out_dir / "marks-template.csv")
    return results
