"""Student versions of the notebooks: the same lab, with the solutions taken out.

The exercise convention is nbgrader's. In a code cell, the lines between ``### BEGIN SOLUTION`` and
``### END SOLUTION`` (markers included) become, at the markers' indentation::

    # YOUR CODE HERE
    raise NotImplementedError()

so a function whose body was the solution is still a valid function that says it is unfinished (the
check cell after it then reports "not implemented yet"). In a markdown cell, the text between
``=== BEGIN MARK SCHEME ===`` and ``=== END MARK SCHEME ===`` (or the two ``### BEGIN/END SOLUTION``
lines) becomes ``YOUR ANSWER HERE``; a markdown cell marked as a solution in its nbgrader metadata but
without markers is replaced whole. Every output and execution count is cleared (the
cells tagged ``nbval-check-output`` included) and saved widget state is dropped; everything else is left as
it is: cell ids, metadata (the nbgrader grade ids and points the grader reads), the check cells.

    python -m labutils student                 # notebooks/*.ipynb -> student/
    python -m labutils student --out handout/
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import nbformat

from ..errors import LabError

REPO_ROOT = Path(__file__).resolve().parents[2]
CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
TEXT_STUB = "YOUR ANSWER HERE"

CODE_BEGIN = re.compile(r"^(?P<indent>[ \t]*)### BEGIN SOLUTION[ \t]*$")
CODE_END = re.compile(r"^[ \t]*### END SOLUTION[ \t]*$")
TEXT_BEGIN = re.compile(r"^[ \t]*(=== BEGIN MARK SCHEME ===|### BEGIN SOLUTION)[ \t]*$")
TEXT_END = re.compile(r"^[ \t]*(=== END MARK SCHEME ===|### END SOLUTION)[ \t]*$")


def default_notebooks() -> list[Path]:
    """The lab's notebooks: the repository's ``notebooks/*.ipynb``, in order."""
    return sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def solution_regions(lines: list[str], begin: re.Pattern, end: re.Pattern, where: str) -> list[tuple[int, int]]:
    """(first, last) line numbers of each marked region, markers included; unpaired markers are an error."""
    regions, start = [], None
    for n, line in enumerate(lines):
        if begin.match(line):
            if start is not None:
                raise LabError(f"{where}: a second BEGIN marker on line {n + 1} before the END of the one on line "
                               f"{start + 1}; close each solution region before opening the next")
            start = n
        elif end.match(line):
            if start is None:
                raise LabError(f"{where}: an END marker on line {n + 1} without a BEGIN marker before it")
            regions.append((start, n))
            start = None
    if start is not None:
        raise LabError(f"{where}: the BEGIN marker on line {start + 1} has no END marker after it")
    return regions


def strip_code(source: str, where: str) -> str:
    """Each ``### BEGIN/END SOLUTION`` region -> the stub, indented like its BEGIN marker."""
    lines = source.split("\n")
    for first, last in reversed(solution_regions(lines, CODE_BEGIN, CODE_END, where)):
        indent = CODE_BEGIN.match(lines[first])["indent"]
        lines[first : last + 1] = [indent + stub for stub in CODE_STUB]
    return "\n".join(lines)


def strip_text(source: str, where: str) -> str:
    """Each marked region of a markdown cell -> ``YOUR ANSWER HERE``."""
    lines = source.split("\n")
    for first, last in reversed(solution_regions(lines, TEXT_BEGIN, TEXT_END, where)):
        lines[first : last + 1] = [TEXT_STUB]
    return "\n".join(lines)


def student_version(nb: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """A copy of ``nb`` without solutions, outputs, execution counts or widget state."""
    nb = nbformat.from_dict(nb)  # a deep copy: the instructor's notebook is left untouched
    nb.metadata.pop("widgets", None)
    for n, cell in enumerate(nb.cells):
        where = f"{name}, cell {n + 1}"
        solution = cell.get("metadata", {}).get("nbgrader", {}).get("solution", False)
        if cell.cell_type == "code":
            stripped = strip_code(cell.source, where)
            if solution and stripped == cell.source:
                raise LabError(f"{where} is a solution cell (nbgrader metadata) without ### BEGIN SOLUTION / "
                               "### END SOLUTION lines; mark the lines to remove")
            cell.source = stripped
            cell.outputs = []
            cell.execution_count = None
        elif cell.cell_type == "markdown":
            stripped = strip_text(cell.source, where)
            cell.source = TEXT_STUB if solution and stripped == cell.source else stripped
        cell.get("metadata", {}).pop("widgets", None)
    return nb


def write_notebook(nb: nbformat.NotebookNode, path: Path) -> None:
    """Validate, then write through a temporary file: never a half-written notebook."""
    nbformat.validate(nb)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        nbformat.write(nb, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_student_versions(notebooks: list[Path], out_dir: Path) -> list[Path]:
    """Write the student version of each notebook into ``out_dir`` (same file names); return their paths.

    Every notebook is converted before any is written, so a marker error leaves ``out_dir`` as it was.
    """
    notebooks = [Path(p) for p in notebooks]
    if not notebooks:
        raise LabError("no notebooks to convert: pass .ipynb files (default: the lab's notebooks/*.ipynb)")
    out_dir = Path(out_dir)
    converted = []
    for path in notebooks:
        if not path.is_file():
            raise LabError(f"{path} is not a notebook file")
        if path.resolve().parent == out_dir.resolve():
            raise LabError(f"--out {out_dir} is the folder of {path.name}: it would overwrite the solutions; "
                           "choose another folder")
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception as error:  # JSON or schema errors: say which file
            raise LabError(f"{path} is not a readable notebook ({type(error).__name__}: {error})") from None
        converted.append((out_dir / path.name, student_version(nb, path.name)))
    out_dir.mkdir(parents=True, exist_ok=True)
    for target, nb in converted:
        write_notebook(nb, target)
    return [target for target, _ in converted]
