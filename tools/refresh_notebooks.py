"""Restore the committed state of notebooks after editing them: run them, keep only the checked outputs.

    python tools/refresh_notebooks.py notebooks/*.ipynb

For each notebook given:

1. execute it top to bottom with nbclient (kernel ``python3``, ``LABUTILS_WEIGHTS=random`` as in CI,
   the working directory is the notebook's folder, ``notebooks/``); ``LABUTILS_DATA`` and the other
   variables are passed on from your environment;
2. keep the outputs and the execution count of the cells tagged ``nbval-check-output`` (nbval compares
   them in CI; an ``execute_result`` keeps the count of its cell; consecutive prints to the same stream
   are joined, as nbval joins them); clear the outputs and execution count of every other cell, and the
   timing metadata nbclient adds. A cell whose first line is nbval's comment ``# NBVAL_CHECK_OUTPUT``
   gets the tag instead of the line: students never see the marker (JupyterLab shows tags only in the
   property inspector);
3. drop widget state (``metadata.widgets``) and the machine-specific ``language_info``, set the
   kernelspec to ``python3``;
4. validate it and write it back with nbformat (a notebook whose run fails is not written).

A cell may raise only if it is tagged ``raises-exception`` (the tag nbval and nbclient both honour).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

CHECK_TAG = "nbval-check-output"  # nbval reads it from the cell's metadata.tags
CHECK_MARK = "# NBVAL_CHECK_OUTPUT"  # the same marker as a first line: moved into the tag
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
CELL_TIMEOUT_S = 600


def is_checked(cell: nbformat.NotebookNode) -> bool:
    """A code cell whose output nbval compares: tagged ``nbval-check-output`` (or, not yet moved, its first line
    is ``# NBVAL_CHECK_OUTPUT``)."""
    return cell.cell_type == "code" and (CHECK_TAG in cell.metadata.get("tags", [])
                                         or cell.source.lstrip().startswith(CHECK_MARK))


def tag_checked(cell: nbformat.NotebookNode) -> None:
    """Move a first-line ``# NBVAL_CHECK_OUTPUT`` into the cell's tags (what nbval reads), out of students' sight."""
    if cell.cell_type == "code" and cell.source.lstrip().startswith(CHECK_MARK):
        first, _, rest = cell.source.lstrip().partition("\n")
        if first.strip() == CHECK_MARK:
            cell.source = rest
            tags = cell.metadata.setdefault("tags", [])
            if CHECK_TAG not in tags:
                tags.append(CHECK_TAG)


def execute(nb: nbformat.NotebookNode, folder: Path) -> None:
    """Run every cell in a fresh python3 kernel, in ``folder``, with untrained weights."""
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        record_timing=False,
        resources={"metadata": {"path": str(folder)}},
    )
    client.execute(env={**os.environ, "LABUTILS_WEIGHTS": "random"})  # the kernel's environment


def merge_streams(outputs: list) -> list:
    """Join consecutive stream outputs of the same name: how the kernel chunked a print is noise in a diff."""
    merged: list = []
    for output in outputs:
        previous = merged[-1] if merged else None
        if (
            previous is not None
            and output.get("output_type") == previous.get("output_type") == "stream"
            and output.get("name") == previous.get("name")
        ):
            previous["text"] = "".join(previous["text"]) + "".join(output["text"])
        else:
            merged.append(output)
    return merged


def strip(nb: nbformat.NotebookNode) -> list[str]:
    """Keep only the checked cells' outputs; return warnings about checked outputs nbval would trip on."""
    warnings = []
    for index, cell in enumerate(nb.cells):
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        if is_checked(cell):
            cell.outputs = merge_streams(cell.outputs)
            for output in cell.outputs:
                if output.get("output_type") == "execute_result":
                    output["execution_count"] = cell.execution_count
                if output.get("output_type") == "stream" and output.get("name") == "stderr":
                    warnings.append(f"cell {index}: a checked cell wrote to stderr (nbval compares it): "
                                    f"{output.get('text', '').strip()[:120]!r}")  # fmt: skip
                if output.get("output_type") == "error":
                    warnings.append(f"cell {index}: a checked cell raised {output.get('ename')}")
        else:
            cell.outputs = []
            cell.execution_count = None
    nb.metadata.pop("widgets", None)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    return warnings


def refresh(path: Path) -> float:
    """Execute, strip and rewrite one notebook; return the seconds its run took."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tag_checked(cell)
    started = time.perf_counter()
    execute(nb, path.resolve().parent)
    seconds = time.perf_counter() - started
    for warning in strip(nb):
        print(f"{path}: WARNING {warning}", file=sys.stderr)
    nbformat.validate(nb)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".ipynb.tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            nbformat.write(nb, out)
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)  # all or nothing: a failed write leaves the old notebook as it was
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path, help="the .ipynb files to refresh")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.notebooks:
        if path.suffix != ".ipynb" or not path.is_file():
            print(f"{path}: not a notebook file", file=sys.stderr)
            failed += 1
            continue
        try:
            seconds = refresh(path)
        except CellExecutionError as error:
            print(f"{path}: a cell failed, the notebook was not rewritten:\n{error}", file=sys.stderr)
            failed += 1
        else:
            print(f"{path}: refreshed ({seconds:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
