"""Grading: re-execute each submitted notebook with the instructor's checks, score it, write a report.

    python -m labutils grade submissions/ --out grades/
    python -m labutils grade alice_03_gradcam_math.ipynb bob/ --timeout 60 --jobs 2

**Which notebook, which student.** A submission is a notebook file or a folder (searched recursively
for ``*.ipynb``). Each file is matched to the lab notebook whose name ends its own name, and the student
id is what comes before it (``alice_03_gradcam_math.ipynb`` -> ``alice``, ``03_gradcam_math``); a file
named exactly like the lab notebook takes the name of the folder that holds it
(``alice/03_gradcam_math.ipynb`` -> ``alice``). Files that match no notebook with exercises are
skipped, and the run says so. One student's notebooks form one submission: one row of ``grades.csv``
and one report.

**How a notebook is run.** Its stored outputs are cleared (they are never trusted), each check cell is
replaced by the instructor's locked one (matched by its nbgrader ``grade_id``; a check cell the student
deleted or edited is restored), and the result runs top to bottom in a fresh ``python3`` kernel
(nbclient), in a temporary folder, with ``LABUTILS_WEIGHTS=random`` unless the environment sets it. The
locked check cell first re-imports its check function (``from labutils.checks import check_alpha``),
so a student who defined their own ``check_alpha`` earlier does not replace it, and ends by printing a
secret token that only a check that returned normally can print. Errors do not stop the notebook. A
cell that runs past the timeout is interrupted; if the kernel does not recover, or dies (``os._exit``,
out of memory), a new kernel runs the cells that follow. Output beyond ``OUTPUT_CAP`` characters of text
(or ``FIGURES_CAP`` of figures) in one cell is cut.

**The score.** An exercise earns the ``points`` of its check cell's nbgrader metadata when that cell ran
without an error, printed its ``PASS`` line and its token. ``grades.csv`` has one row per student: the
points per exercise (columns named by grade id), ``total`` and ``max``. ``<student>.html`` shows each
exercise's result and error line, errors of the other cells, the student's solution code and every
figure the notebook drew.

The grader runs the students' code with your permissions: grade on a machine or account where that is
acceptable.
"""

from __future__ import annotations

import ast
import asyncio
import copy
import csv
import html
import io
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from jupyter_core.utils import run_sync
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError
from tqdm import tqdm

from .errors import LabError
from .student import REPO_ROOT

OUTPUT_CAP = 100_000  # characters of text output kept per cell
FIGURES_CAP = 20_000_000  # characters of figures (base64) kept per cell
CAPS = {"text": OUTPUT_CAP, "figures": FIGURES_CAP}
FIGURE_CAP = 60  # figures shown per notebook in the report
KERNEL_STARTS = 4  # kernels per notebook at most: the first one and 3 replacements
TIMEOUT_ERROR = "GraderTimeout"


# ---------------------------------------------------------------- results


@dataclass
class ExerciseResult:
    """One exercise of one submission: its check's outcome and the points it earned."""

    grade_id: str
    notebook: str
    points: float
    max_points: float
    passed: bool
    message: str  # the PASS line, or the one line that says why not


@dataclass
class GradeResult:
    """One student's graded lab."""

    student: str
    exercises: list[ExerciseResult]
    report: Path
    notes: list[str] = field(default_factory=list)  # what happened beyond the checks (timeouts, crashes...)
    seconds: float = 0.0  # wall time spent running this student's notebooks

    @property
    def total(self) -> float:
        return sum(e.points for e in self.exercises)

    @property
    def max_points(self) -> float:
        return sum(e.max_points for e in self.exercises)


@dataclass(frozen=True)
class Check:
    """A locked check cell of the instructor's notebook."""

    grade_id: str
    points: float
    cell: nbformat.NotebookNode  # the instructor's cell, as committed
    guard: str  # import lines that rebind the check function inside the cell
    after: str | None  # grade_id of the instructor cell just before it (the exercise), if any


@dataclass
class Run:
    """One submitted notebook after execution."""

    notebook: str
    nb: nbformat.NotebookNode | None
    tokens: dict[str, tuple[int, str]]  # grade_id -> (cell index, the token its check prints)
    notes: list[str] = field(default_factory=list)
    timed_out: set[int] = field(default_factory=set)
    not_run: dict[int, str] = field(default_factory=dict)  # cell index -> why it did not run
    seen: dict[int, list[str]] = field(default_factory=dict)  # PASS/token lines found in cut output
    seconds: float = 0.0


# ---------------------------------------------------------------- the instructor's notebooks


def _nbgrader(cell: nbformat.NotebookNode) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def _python(source: str) -> ast.Module | None:
    """The cell's code as an AST, IPython magics and shell lines commented out; None if it does not parse."""
    lines = ["#" + line if line.lstrip().startswith(("%", "!")) else line for line in source.split("\n")]
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


def _imports(nb: nbformat.NotebookNode) -> dict[str, str]:
    """Every name an import of the notebook binds -> that import, as one line of code."""
    bound: dict[str, str] = {}
    for cell in nb.cells:
        tree = _python(cell.source) if cell.cell_type == "code" else None
        for node in ast.walk(tree) if tree else ():
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    if alias.name != "*":
                        line = f"from {node.module} import {alias.name}"
                        bound[alias.asname or alias.name] = line + (f" as {alias.asname}" if alias.asname else "")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        bound[alias.asname] = f"import {alias.name} as {alias.asname}"
                    else:
                        bound[alias.name.split(".")[0]] = f"import {alias.name}"
    return bound


def _guard(source: str, imports: dict[str, str]) -> str:
    """The imports that rebind, inside the check cell, every name the cell calls (check_alpha, checks...)."""
    tree = _python(source)
    called = []
    for node in ast.walk(tree) if tree else ():
        if isinstance(node, ast.Call):
            root = node.func
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id not in called:
                called.append(root.id)
    lines = []
    for name in called:
        if name in imports:
            lines.append(imports[name])
        elif name.startswith("check_"):
            lines.append(f"from labutils.checks import {name}")
    return "\n".join(dict.fromkeys(lines))


def instructor_checks(nb: nbformat.NotebookNode) -> list[Check]:
    """The notebook's graded cells (nbgrader ``grade: true`` with a ``grade_id``), in order."""
    imports = _imports(nb)
    checks, previous = [], None
    for cell in nb.cells:
        meta = _nbgrader(cell)
        if cell.cell_type == "code" and meta.get("grade") and meta.get("grade_id"):
            checks.append(Check(meta["grade_id"], float(meta.get("points", 0)), cell, _guard(cell.source, imports),
                                previous))
        previous = meta.get("grade_id", previous) if meta else previous
    ids = [c.grade_id for c in checks]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise LabError(f"grade_id {', '.join(duplicated)} is used by several check cells; make each one unique")
    return checks


def instructor_notebooks(folder: Path) -> dict[str, tuple[nbformat.NotebookNode, list[Check]]]:
    """The instructor's notebooks that hold exercises: file name -> (notebook, its checks)."""
    found = {}
    for path in sorted(Path(folder).glob("*.ipynb")):
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception as error:
            raise LabError(f"the instructor's notebook {path} is not readable ({type(error).__name__}: {error})"
                           ) from None
        checks = instructor_checks(nb)
        if checks:
            found[path.name] = (nb, checks)
    if not found:
        raise LabError(f"{folder} holds no notebook with graded check cells (nbgrader metadata grade: true); "
                       "pass the folder of the instructor's notebooks")
    all_ids = [c.grade_id for _, checks in found.values() for c in checks]
    if len(all_ids) != len(set(all_ids)):
        raise LabError(f"the notebooks of {folder} share grade ids; each exercise needs its own grade_id")
    return found


# ---------------------------------------------------------------- which file is whose


def match_submission(path: Path, notebooks: list[str]) -> tuple[str, str] | None:
    """(student id, lab notebook name) of a submitted file, or None when it matches no lab notebook."""
    stem = path.stem
    for name in sorted(notebooks, key=len, reverse=True):
        lab = Path(name).stem
        if stem == lab:
            return path.resolve().parent.name, name
        if stem.endswith(lab) and stem[: -len(lab)][-1:] in ("_", "-", ".", " "):
            return stem[: -len(lab)].rstrip("_-. "), name
    return None


def collect(submissions: list[Path], notebooks: list[str]) -> tuple[dict[str, dict[str, Path]], list[str]]:
    """student -> {lab notebook -> submitted file}, and a line for each file skipped."""
    files: list[Path] = []
    for item in map(Path, submissions):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
            if not found:
                raise LabError(f"{item} is a folder with no .ipynb files")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise LabError(f"{item} does not exist; pass submitted notebooks or folders of them")
    students: dict[str, dict[str, Path]] = {}
    skipped = []
    for path in files:
        match = match_submission(path, notebooks)
        if match is None:
            skipped.append(f"skipped {path}: its name ends with none of {', '.join(notebooks)}")
            continue
        student, name = match
        if name in students.setdefault(student, {}):
            raise LabError(f"two submissions of {name} for {student}: {students[student][name]} and {path}; "
                           "keep one")
        students[student][name] = path
    return students, skipped


# ---------------------------------------------------------------- the notebook that runs


def locked_cell(check: Check, token: str) -> nbformat.NotebookNode:
    """The instructor's check cell, with the guard import first and the token print last."""
    source = "\n".join(part for part in (check.guard, check.cell.source.rstrip(), f'print("{token}")') if part)
    return nbformat.v4.new_code_cell(source, metadata=copy.deepcopy(dict(check.cell.metadata)))


def graded_copy(submitted: nbformat.NotebookNode, checks: list[Check]) -> tuple[nbformat.NotebookNode, dict, list]:
    """The submission without outputs, its check cells replaced by the locked ones.

    Returns the notebook, grade_id -> (cell index, token), and notes on restored cells.
    """
    nb = nbformat.v4.new_notebook(metadata=copy.deepcopy(dict(submitted.get("metadata", {}))))
    nb.metadata.pop("widgets", None)
    by_id = {c.grade_id: c for c in checks}
    tokens = {c.grade_id: secrets.token_hex(16) for c in checks}
    placed, notes = set(), []
    for cell in submitted.get("cells", []):
        grade_id = _nbgrader(cell).get("grade_id")
        if grade_id in by_id:
            if grade_id not in placed:  # a duplicated check cell is dropped
                placed.add(grade_id)
                if cell.get("source", "").strip() != by_id[grade_id].cell.source.strip():
                    notes.append(f"the check cell {grade_id} was edited; the instructor's version was run")
                nb.cells.append(locked_cell(by_id[grade_id], tokens[grade_id]))
            continue
        if cell.get("cell_type") not in ("code", "markdown", "raw") or not isinstance(cell.get("source"), str):
            notes.append("a malformed cell was left out")
            continue
        cell = copy.deepcopy(cell)
        cell.metadata = cell.get("metadata") if isinstance(cell.get("metadata"), dict) else {}
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        nb.cells.append(cell)
    for check in checks:
        if check.grade_id in placed:
            continue
        ids = [_nbgrader(c).get("grade_id") for c in nb.cells]
        position = ids.index(check.after) + 1 if check.after in ids else len(nb.cells)
        nb.cells.insert(position, locked_cell(check, tokens[check.grade_id]))
        notes.append(f"the check cell {check.grade_id} was missing; the instructor's version was inserted")
    index = {_nbgrader(c).get("grade_id"): n for n, c in enumerate(nb.cells) if c.cell_type == "code"}
    return nb, {g: (index[g], t) for g, t in tokens.items()}, notes


class _GraderClient(NotebookClient):
    """nbclient, with a cap on each cell's output and a record of the cells that ran past the timeout."""

    def __init__(self, nb: nbformat.NotebookNode, run: Run, watch: set[str], **kw: object) -> None:
        super().__init__(nb, **kw)
        self.run, self.watch = run, watch
        self.sizes: dict[tuple[int, str], int] = {}  # (cell, "text" or "figures") -> characters received
        self.on_cell_executed = self._executed

    def output(self, outs, msg, display_id, cell_index):  # type: ignore[no-untyped-def]
        content = msg.get("content", {})
        data = content.get("data", {})
        kind = "figures" if any(mime.startswith("image/") for mime in data) else "text"
        size = len(content.get("text", "")) + sum(len(str(v)) for v in data.values())
        key = (cell_index, kind)
        self.sizes[key] = self.sizes.get(key, 0) + size
        if self.sizes[key] > CAPS[kind] and msg["msg_type"] != "error":
            self.run.seen.setdefault(cell_index, []).extend(  # the check's PASS line and token still count
                line for line in content.get("text", "").splitlines() if line.startswith("PASS") or line in self.watch
            )
            return None
        return super().output(outs, msg, display_id, cell_index)

    def _executed(self, cell, cell_index, execute_reply):  # type: ignore[no-untyped-def]
        for kind, cap in CAPS.items():
            if self.sizes.get((cell_index, kind), 0) > cap:
                note = f"cell {cell_index + 1} output more than {cap} characters of {kind}: the rest was cut"
                self.run.notes.append(note)
                cell.outputs.append(nbformat.v4.new_output("stream", name="stderr", text=f"\n[grader: {note}]\n"))
        content = (execute_reply or {}).get("content", {})
        if content.get("ename") == TIMEOUT_ERROR:
            self.run.timed_out.add(cell_index)
            cell.outputs.append(nbformat.v4.new_output(
                "error", ename=TIMEOUT_ERROR, evalue=content["evalue"], traceback=[content["evalue"]]))

    async def responsive(self, seconds: int) -> bool:
        """Whether the kernel answers a trivial request within ``seconds`` (after an interrupt)."""
        saved, self.timeout = self.timeout, seconds
        try:
            msg_id = self.kc.execute("pass", store_history=False)
            return await self.async_wait_for_reply(msg_id) is not None
        finally:
            self.timeout = saved


def kernel_env() -> dict[str, str]:
    """The students' kernels' environment: ours, untrained weights unless LABUTILS_WEIGHTS says otherwise."""
    env = dict(os.environ)
    env.setdefault("LABUTILS_WEIGHTS", "random")
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    return env


async def execute(nb: nbformat.NotebookNode, run: Run, workdir: Path, timeout: int, env: dict[str, str]) -> None:
    """Run every code cell of ``nb`` in place; a new kernel takes over after a crash or a stuck cell."""
    watch = {token for _, token in run.tokens.values()}
    start, kernels = 0, 0
    code = [n for n, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]
    while start < len(nb.cells):
        if kernels == KERNEL_STARTS:
            for n in (n for n in code if n >= start):
                run.not_run[n] = f"not run: {KERNEL_STARTS} kernels died or got stuck in this notebook"
            return
        kernels += 1
        client = _GraderClient(
            nb, run, watch, timeout=timeout, kernel_name="python3", allow_errors=True, interrupt_on_timeout=True,
            error_on_timeout={"ename": TIMEOUT_ERROR, "evalue": f"stopped: the cell ran longer than {timeout} s",
                              "traceback": []},
            record_timing=False, resources={"metadata": {"path": str(workdir)}},
        )  # fmt: skip
        index = start
        try:
            async with client.async_setup_kernel(env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
                for index in range(start, len(nb.cells)):
                    await client.async_execute_cell(nb.cells[index], index, execution_count=index + 1)
                    if index in run.timed_out and not await client.responsive(min(timeout, 10)):
                        run.notes.append(f"cell {index + 1} ran past the timeout and the kernel did not recover "
                                         "from the interrupt: a new kernel ran the cells after it")
                        break
                else:
                    return
        except DeadKernelError:
            run.notes.append(f"the kernel died in cell {index + 1}; a new kernel ran the cells after it "
                             "(without what the earlier cells defined)")
            nb.cells[index].outputs.append(nbformat.v4.new_output(
                "error", ename="DeadKernelError", evalue="the kernel died while running this cell", traceback=[]))
        except Exception as error:  # the kernel did not start, a broken connection...
            if index == start and not client.kc:
                for n in (n for n in code if n >= start):
                    run.not_run[n] = f"not run: the kernel did not start ({type(error).__name__}: {error})"
                run.notes.append(f"the kernel did not start: {type(error).__name__}: {error}")
                return
            run.notes.append(f"execution stopped in cell {index + 1}: {type(error).__name__}: {error}")
        start = index + 1


async def grade_notebook(student: str, name: str, path: Path, checks: list[Check], timeout: int,
                         env: dict[str, str]) -> Run:
    """Read, prepare and execute one submitted notebook (never raises for what the submission does)."""
    began = time.monotonic()
    try:
        submitted = nbformat.read(path, as_version=4)
    except Exception as error:
        return Run(name, None, {}, [f"{path.name} could not be read as a notebook: {type(error).__name__}: "
                                    f"{' '.join(str(error).split())[:300]}"])
    try:
        nb, tokens, notes = graded_copy(submitted, checks)
    except Exception as error:  # cells without the fields every notebook has
        return Run(name, None, {}, [f"{path.name} is not a valid notebook: {type(error).__name__}: {error}"])
    run = Run(name, nb, tokens, notes)
    with tempfile.TemporaryDirectory(prefix="grade-", ignore_cleanup_errors=True) as workdir:
        try:
            nbformat.write(nb, Path(workdir) / name)  # the copy the kernel's working folder holds
        except Exception:  # a malformed notebook still runs: the copy on disk is only for the student's code
            pass
        await execute(nb, run, Path(workdir), timeout, env)
    run.seconds = time.monotonic() - began
    return run


# ---------------------------------------------------------------- scores


def _first_line(text: str, limit: int = 400) -> str:
    line = next((line.strip() for line in str(text).splitlines() if line.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _error_line(out: nbformat.NotebookNode) -> str:
    evalue = _first_line(out.get("evalue", ""))
    return f"{out.get('ename', 'Error')}: {evalue}" if evalue else out.get("ename", "Error")


def score(run: Run, checks: list[Check]) -> list[ExerciseResult]:
    """Each check of the notebook: passed (points) or not (0, and why)."""
    results = []
    for check in checks:
        def result(passed: bool, message: str) -> ExerciseResult:
            return ExerciseResult(check.grade_id, run.notebook, check.points if passed else 0.0, check.points,
                                  passed, message)

        if run.nb is None:
            results.append(result(False, run.notes[0] if run.notes else "not graded"))
            continue
        index, token = run.tokens[check.grade_id]
        cell = run.nb.cells[index]
        errors = [o for o in cell.outputs if o.output_type == "error"]
        text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")
        lines = [line.strip() for line in text.splitlines()] + run.seen.get(index, [])
        passes = [line for line in lines if line.startswith("PASS")]
        if index in run.not_run:
            results.append(result(False, run.not_run[index]))
        elif index in run.timed_out:
            results.append(result(False, _error_line(next(o for o in errors if o.ename == TIMEOUT_ERROR))))
        elif errors:
            results.append(result(False, _error_line(errors[-1])))
        elif token in lines and passes:
            results.append(result(True, passes[-1]))
        elif cell.execution_count is None:
            results.append(result(False, "the check cell did not run"))
        else:
            results.append(result(False, "the check printed no PASS line"))
    return results


def not_submitted(name: str, checks: list[Check]) -> list[ExerciseResult]:
    return [ExerciseResult(c.grade_id, name, 0.0, c.points, False, f"{name} was not submitted") for c in checks]


# ---------------------------------------------------------------- reports


def _points(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def write_csv(results: list[GradeResult], grade_ids: list[str], path: Path) -> None:
    """grades.csv: student, one column of points per exercise, total, max."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["student", *grade_ids, "total", "max"])
    for r in results:
        earned = {e.grade_id: e.points for e in r.exercises}
        writer.writerow([r.student, *(_points(earned.get(g, 0.0)) for g in grade_ids), _points(r.total),
                         _points(r.max_points)])
    _write_text(path, buffer.getvalue())


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


STYLE = """body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
.pass{color:#176317;font-weight:bold}.fail{color:#b00020;font-weight:bold}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto}figure{display:inline-block;margin:.5em}
img{max-width:100%;border:1px solid #ddd}figcaption{font-size:small;color:#555}"""


def report_html(result: GradeResult, runs: dict[str, Run]) -> str:
    """One student's report: scores, error lines, notes, solution code and figures, in plain HTML."""
    e = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(result.student)}: grading report"
             f"</title><style>{STYLE}</style></head><body>",
             f"<h1>{e(result.student)}: {_points(result.total)} / {_points(result.max_points)} points</h1>",
             "<table><tr><th>notebook</th><th>exercise</th><th>points</th><th>result</th><th>message</th></tr>"]
    for x in result.exercises:
        verdict = "<span class='pass'>PASS</span>" if x.passed else "<span class='fail'>FAIL</span>"
        parts.append(f"<tr><td>{e(x.notebook)}</td><td>{e(x.grade_id)}</td><td>{_points(x.points)} / "
                     f"{_points(x.max_points)}</td><td>{verdict}</td><td>{e(x.message)}</td></tr>")
    parts.append("</table>")
    if result.notes:
        parts.append("<h2>What happened</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in result.notes) + "</ul>")
    for name, run in runs.items():
        parts.append(f"<h2>{e(name)}</h2>")
        if run.nb is None:
            parts.append("<p>Not graded (see above).</p>")
            continue
        checks = {index for index, _ in run.tokens.values()}
        errors = [(n, o) for n, c in enumerate(run.nb.cells) if n not in checks and c.cell_type == "code"
                  for o in c.outputs if o.output_type == "error"]
        if errors:
            parts.append("<h3>Errors in the other cells</h3><ul>" + "".join(
                f"<li>cell {n + 1}: {e(_error_line(o))}</li>" for n, o in errors) + "</ul>")
        solutions = [c for c in run.nb.cells if _nbgrader(c).get("solution")]
        for cell in solutions:
            parts.append(f"<h3>{e(_nbgrader(cell).get('grade_id', 'answer'))}</h3><pre>{e(cell.source)}</pre>")
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


def _file_name(student: str, taken: set[str]) -> str:
    base = re.sub(r"[^\w.-]+", "_", student).strip("._") or "student"
    name, n = f"{base}.html", 1
    while name in taken or name == "grades.html":
        n += 1
        name = f"{base}_{n}.html"
    taken.add(name)
    return name


# ---------------------------------------------------------------- the whole run


def grade(
    submissions: list[Path],
    out_dir: Path,
    *,
    timeout: int = 120,
    instructor_dir: Path = REPO_ROOT / "notebooks",
    jobs: int = 1,
    progress: bool = True,
) -> list[GradeResult]:
    """Grade every submission (files or folders of .ipynb); write ``grades.csv`` and one HTML report each.

    ``timeout`` is per cell, in seconds; ``jobs`` notebooks run at a time (each in its own kernel).
    """
    if timeout < 1 or jobs < 1:
        raise LabError(f"--timeout and --jobs must be at least 1, got {timeout} and {jobs}")
    lab = instructor_notebooks(Path(instructor_dir))
    students, skipped = collect([Path(s) for s in submissions], list(lab))
    for line in skipped:
        tqdm.write(line, file=sys.stderr)
    if not students:
        raise LabError("no submission matches a notebook of the lab: name the files like the lab's notebooks, "
                       f"e.g. alice_{next(iter(lab))} or alice/{next(iter(lab))}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = kernel_env()
    if jobs > 1:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    tasks = [(s, name, path) for s in sorted(students) for name, path in students[s].items()]
    runs = run_sync(_run_all)(tasks, lab, timeout, env, jobs, progress)
    results, taken = [], set()
    for student in sorted(students):
        mine = {name: runs[(student, name)] for name in lab if (student, name) in runs}
        exercises, notes = [], []
        for name, (_, checks) in lab.items():
            if name in mine:
                exercises += score(mine[name], checks)
                notes += [f"{name}: {note}" for note in mine[name].notes]
            else:
                exercises += not_submitted(name, checks)
        result = GradeResult(student, exercises, out_dir / _file_name(student, taken), notes,
                             sum(r.seconds for r in mine.values()))
        _write_text(result.report, report_html(result, mine))
        results.append(result)
    write_csv(results, [c.grade_id for _, checks in lab.values() for c in checks], out_dir / "grades.csv")
    return results


async def _run_all(tasks: list[tuple[str, str, Path]], lab: dict, timeout: int, env: dict[str, str], jobs: int,
                   progress: bool) -> dict[tuple[str, str], Run]:
    """Execute the submitted notebooks, ``jobs`` at a time."""
    slots = asyncio.Semaphore(jobs)
    bar = tqdm(total=len(tasks), desc="grading", unit="notebook", disable=not progress)

    async def one(student: str, name: str, path: Path) -> tuple[tuple[str, str], Run]:
        async with slots:
            try:
                run = await grade_notebook(student, name, path, lab[name][1], timeout, env)
            except Exception as error:  # whatever went wrong, the other notebooks are still graded
                run = Run(name, None, {}, [f"grading {path.name} failed: {type(error).__name__}: {error}"])
        bar.update()
        return (student, name), run

    try:
        return dict(await asyncio.gather(*(one(*task) for task in tasks)))
    finally:
        bar.close()
