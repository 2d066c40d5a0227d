"""What a handed-in notebook is, to the grader and to the student's own check before handing in.

Both read the same two things from it: which lab notebook a file is, from its name (``alice_02_hooks.ipynb``,
``alice/02_hooks.ipynb``), and what a solution cell may use, from the cells before it (their top-level imports
and literal constants). Shipped to students (``labutils.handin``); the grader (``labutils.instructor``) builds on it.
"""

from __future__ import annotations

import ast
from pathlib import Path


def match_submission(path: Path, notebooks: list[str]) -> tuple[str, str] | None:
    """(student id, lab notebook name) of a submitted file, or None when it matches no lab notebook.

    The id is what comes before the notebook's name (``alice_02_hooks`` -> ``alice``); with nothing before it,
    the name of the folder holding the file."""
    stem = path.stem
    for name in sorted(notebooks, key=len, reverse=True):
        lab = Path(name).stem
        if stem == lab:
            return path.absolute().parent.name, name
        if stem.endswith(lab) and stem[: -len(lab)][-1:] in ("_", "-", ".", " "):
            return stem[: -len(lab)].rstrip("_-. "), name
    return None


def python_source(source: str) -> str:
    """A cell's code with IPython magics and shell lines commented out."""
    return "\n".join("#" + line if line.lstrip().startswith(("%", "!")) else line for line in source.split("\n"))


def prelude(sources: list[str]) -> list[ast.stmt]:
    """The statements of the cells before a solution that it may use: top-level imports and literal constants
    (``SIZE = (224, 224)``); cells that are not Python are passed over."""
    found: list[ast.stmt] = []
    for source in sources:
        try:
            tree = ast.parse(python_source(source))
        except (SyntaxError, ValueError, RecursionError, MemoryError):  # not Python, or too deep
            continue
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                try:
                    ast.literal_eval(node.value)
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    continue
                found.append(node)
    return found
