"""tools/refresh_notebooks.py: run a notebook, keep only the checked outputs, write it back (or nothing)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

TOOL = Path(__file__).resolve().parents[1] / "tools" / "refresh_notebooks.py"
spec = importlib.util.spec_from_file_location("refresh_notebooks", TOOL)
refresh_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(refresh_notebooks)


def make_notebook(path: Path, *cells) -> Path:
    nb = new_notebook(cells=list(cells))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "whatever", "language": "python"}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    nb.metadata["language_info"] = {"name": "python", "version": "3.11.7"}
    nbformat.write(nb, path)
    return path


def test_refresh_keeps_only_checked_outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("LABUTILS_WEIGHTS", "imagenet")  # the tool must run the kernel with random weights
    folder = tmp_path / "notebooks"
    folder.mkdir()
    stale = nbformat.v4.new_output("stream", name="stdout", text="stale\n")
    path = make_notebook(
        folder / "demo.ipynb",
        new_markdown_cell("# demo"),
        new_code_cell("import os, pathlib\nx = 6 * 7\nprint('unchecked', x)", execution_count=9, outputs=[stale]),
        new_code_cell(
            "# NBVAL_CHECK_OUTPUT\nimport sys\nprint(os.environ['LABUTILS_WEIGHTS'], pathlib.Path.cwd().name, x)\n"
            "sys.stdout.flush()\nprint('second line')"
        ),
        new_code_cell("x + 1", metadata={"tags": ["nbval-check-output"]}),
        new_code_cell("x * 2"),
    )
    assert refresh_notebooks.main([str(path)]) == 0
    assert os.environ["LABUTILS_WEIGHTS"] == "imagenet"  # only the kernel's environment says random
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].outputs == [] and code[0].execution_count is None  # stale output removed
    assert code[3].outputs == [] and code[3].execution_count is None
    assert code[1].execution_count is not None
    assert code[1].source.startswith("import sys") and code[1].metadata.tags == ["nbval-check-output"]  # moved
    # env LABUTILS_WEIGHTS=random, cwd = notebooks/; the two prints joined into one stream output
    assert [(o.output_type, o.text) for o in code[1].outputs] == [("stream", "random notebooks 42\nsecond line\n")]
    result = code[2].outputs[0]
    assert result.output_type == "execute_result" and result.data["text/plain"] == "43"
    assert result.execution_count == code[2].execution_count  # consistent with its cell
    assert all("execution" not in c.metadata for c in nb.cells)
    assert "widgets" not in nb.metadata
    assert nb.metadata.kernelspec == refresh_notebooks.KERNELSPEC
    assert nb.metadata.language_info == {"name": "python"}


def test_a_failing_notebook_is_left_as_it_was(tmp_path, capsys):
    path = make_notebook(tmp_path / "broken.ipynb", new_code_cell("print('fine')"), new_code_cell("1 / 0"))
    before = path.read_bytes()
    assert refresh_notebooks.main([str(path)]) == 1
    assert path.read_bytes() == before
    assert "ZeroDivisionError" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.ipynb"]  # no temporary file left


def test_not_a_notebook(tmp_path, capsys):
    assert refresh_notebooks.main([str(tmp_path / "missing.ipynb")]) == 1
    assert "not a notebook file" in capsys.readouterr().err


def test_merge_streams():
    out = nbformat.v4.new_output
    merged = refresh_notebooks.merge_streams(
        [
            out("stream", name="stdout", text="a\n"),
            out("stream", name="stdout", text="b\n"),
            out("stream", name="stderr", text="warning\n"),
            out("stream", name="stdout", text="c\n"),
            out("execute_result", data={"text/plain": "1"}, execution_count=3),
        ]
    )
    assert [(o.output_type, o.get("name"), o.get("text")) for o in merged] == [
        ("stream", "stdout", "a\nb\n"),
        ("stream", "stderr", "warning\n"),
        ("stream", "stdout", "c\n"),
        ("execute_result", None, None),
    ]
