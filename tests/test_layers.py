"""The package's layers: which labutils module may import which, read from the source with ``ast``.

Each module may import only modules of a lower layer, so that every file can be read, tested and
changed with only what lies below it. Every import counts: at module level, inside a function, under
``if TYPE_CHECKING``, relative or absolute. A subpackage (``checks``, ``instructor``) is one unit of
its layer: its modules may import each other (without a circle) and, like the unit, only what lies
below. No module may import the package's front door ``labutils`` (``__init__``) for one of its names.

A new module must be given its layer here; an import that breaks the layers fails, naming the file,
the line and the two layers.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import labutils

PACKAGE = Path(labutils.__file__).parent

# Bottom to top. "checks" and "instructor" stand for every module of those subpackages.
LAYERS: list[tuple[str, ...]] = [
    ("errors",),  # the lab's exceptions
    ("images", "download", "summary", "sanity", "exercise", "nets", "submission", "equations"),  # nothing of the lab but errors
    ("weights",),  # the weight files (download)
    ("models", "data"),  # the networks, their classes and layers; the sample images
    ("inputs", "hooks"),  # what protects the method; section 5.1's hooks
    ("shortcut",),  # the exact shortcut for equation (1) (hooks)
    ("gradcam",),  # gradcam(): the equations run on a network
    ("guided", "cached", "steps", "predict", "overlay"),  # built on gradcam
    ("checks", "exploring", "pipeline", "status"),  # what the notebooks use around the method
    ("explorer", "handin", "instructor"),  # the explorer's widgets; the check before handing in; the grader
    ("cli",),  # python -m labutils ...
    ("labutils", "__main__"),  # the front door (labutils/__init__.py) and ``python -m labutils``
]
SUBPACKAGES = ("checks", "instructor")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, e.g. "labutils.models"
    target: str  # the imported labutils module, e.g. "labutils.gradcam"
    line: int
    text: str  # the import statement as written


def module_name(path: Path) -> str:
    """``labutils/checks/hooks.py`` -> ``labutils.checks.hooks``; ``labutils/__init__.py`` -> ``labutils``."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    """Is ``name`` (``labutils.x.y``) a module or subpackage of labutils?"""
    bits = name.split(".")
    if bits[0] != "labutils":
        return False
    target = PACKAGE.joinpath(*bits[1:])
    return target.with_suffix(".py").is_file() or (target / "__init__.py").is_file()


def imports_of(source: str, module: str, is_package: bool = False) -> list[Import]:
    """The labutils modules that ``source`` (the code of ``module``) imports, wherever the import stands."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            where = ".".join([*base, *(node.module.split(".") if node.module else [])])
            # ``from labutils import weights``: the module labutils.weights; ``from .gradcam import x``: labutils.gradcam
            targets = [f"{where}.{a.name}" if is_module(f"{where}.{a.name}") else where for a in node.names]
        else:
            continue
        modules = []
        for target in targets:
            while target.startswith("labutils") and not is_module(target):  # ``import labutils.x.y`` of a name
                target = target.rpartition(".")[0]
            if target.split(".")[0] == "labutils" and target not in modules:  # each module once per statement
                modules.append(target)
        found += [Import(module, t, node.lineno, ast.get_source_segment(source, node) or "") for t in modules]
    return found


def unit(module: str) -> str:
    """The name a module has in ``LAYERS``: ``labutils.checks.hooks`` -> ``checks``, ``labutils`` -> ``labutils``."""
    bits = module.split(".")
    return "labutils" if len(bits) == 1 else bits[1]


def layer_of(module: str) -> int:
    name = unit(module)
    for i, names in enumerate(LAYERS):
        if name in names:
            return i
    raise KeyError(module)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def all_imports() -> list[Import]:
    return [
        i for module, path in all_modules().items()
        for i in imports_of(path.read_text(encoding="utf-8"), module, path.name == "__init__.py")
    ]  # fmt: skip


def breaches(imports: list[Import]) -> list[str]:
    """Every import that does not go down a layer (within one subpackage: any direction, checked for circles)."""
    found = []
    for i in imports:
        if unit(i.source) == unit(i.target) and unit(i.source) in SUBPACKAGES and i.target != f"labutils.{unit(i.source)}":
            continue  # inside one subpackage; importing the subpackage's own __init__ from its modules is not
        if i.target == "labutils" and i.source != "labutils":
            found.append(f"{i.source} line {i.line}: `{i.text}` imports the front door labutils/__init__.py: "
                         "import the module that defines the name")
            continue
        if i.source == i.target:
            continue
        undeclared = [unit(m) for m in (i.source, i.target) if not any(unit(m) in names for names in LAYERS)]
        if undeclared:
            found.append(f"{i.source} line {i.line}: {undeclared[0]!r} has no layer in LAYERS")
            continue
        low, high = layer_of(i.target), layer_of(i.source)
        if low >= high:
            direction = "up" if low > high else "sideways"
            found.append(f"{i.source} line {i.line}: `{i.text}` runs {direction}: {unit(i.source)!r} is on layer "
                         f"{high}, {unit(i.target)!r} on layer {low}")
    return found


def circles(imports: list[Import]) -> list[list[str]]:
    """The import circles between modules (each once, as a path that ends where it starts)."""
    graph: dict[str, set[str]] = {}
    for i in imports:
        if i.source != i.target:
            graph.setdefault(i.source, set()).add(i.target)
    found, state = [], {}  # state: 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


# ---------------------------------------------------------------- the package


def test_every_module_has_a_layer_and_every_layer_name_a_module():
    modules = all_modules()
    undeclared = sorted(m for m in modules if not any(unit(m) in names for names in LAYERS))
    assert not undeclared, f"give these modules their layer in tests/test_layers.py LAYERS: {undeclared}"
    named = {unit(m) for m in modules}
    stale = sorted(n for names in LAYERS for n in names if n not in named)
    assert not stale, f"LAYERS names modules that do not exist: {stale}"


def test_no_import_runs_up_or_sideways():
    problems = breaches(all_imports())
    assert not problems, "imports against the layers (tests/test_layers.py):\n" + "\n".join(problems)


def test_no_import_circle():
    found = circles(all_imports())
    assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found)


# ---------------------------------------------------------------- the checker itself


SOURCE = '''
from __future__ import annotations
import os
from typing import TYPE_CHECKING
from . import weights as weight_files
from .errors import LabError
from labutils.download import sha256_of
import labutils.images
if TYPE_CHECKING:
    from .overlay import title
def predict():
    from .gradcam import model_input
    from ..labutils_outside import x
    import labutils.instructor.scoring as scoring
    from labutils import load_model
'''


def test_the_parser_sees_every_kind_of_import():
    seen = [(i.target, i.line) for i in imports_of(SOURCE, "labutils.models")]
    assert seen == [
        ("labutils.weights", 5), ("labutils.errors", 6), ("labutils.download", 7), ("labutils.images", 8),
        ("labutils.overlay", 10), ("labutils.gradcam", 12), ("labutils.instructor.scoring", 14), ("labutils", 15),
    ]


def test_an_upward_import_inside_a_function_is_named():
    problems = breaches(imports_of(SOURCE, "labutils.models"))
    assert len(problems) == 4, problems
    assert problems[0].startswith("labutils.models line 10: `from .overlay import title` runs up: 'models' is on layer 3")
    assert "labutils.models line 12: `from .gradcam import model_input` runs up" in problems[1]
    assert "line 14: `import labutils.instructor.scoring as scoring` runs up" in problems[2]
    assert "`from labutils import load_model` imports the front door" in problems[3]


def test_a_sideways_import_and_a_subpackage_importing_its_own_door_are_named():
    hooks = imports_of("from .inputs import model_input\n", "labutils.hooks")
    assert breaches(hooks) == ["labutils.hooks line 1: `from .inputs import model_input` runs sideways: 'hooks' is "
                               "on layer 4, 'inputs' on layer 4"]
    child = imports_of("from . import EXERCISES\nfrom ._common import pick\n", "labutils.checks.hooks")
    assert [i.target for i in child] == ["labutils.checks", "labutils.checks._common"]
    assert len(breaches(child)) == 1 and "runs sideways" in breaches(child)[0]


def test_a_circle_is_found_and_shown_as_a_path():
    edges = [Import("labutils.a", "labutils.b", 1, ""), Import("labutils.b", "labutils.c", 1, ""),
             Import("labutils.c", "labutils.a", 1, ""), Import("labutils.c", "labutils.d", 1, "")]
    assert circles(edges) == [["labutils.a", "labutils.b", "labutils.c", "labutils.a"]]
    assert circles(edges[:2]) == []


# ---------------------------------------------------------------- what the grader stages for an exercise


@pytest.mark.parametrize("function, kept_out", [
    ("my_capture", {"labutils.hooks", "labutils.gradcam", "labutils.shortcut", "labutils.steps"}),
    ("my_guided_gradcam", {"labutils.guided", "labutils.gradcam"}),
    ("my_counterfactual", {"labutils.guided", "labutils.gradcam"}),  # gradcam(counterfactual=True)
    ("my_gradcam", {"labutils.pipeline", "labutils.gradcam", "labutils.shortcut", "labutils.guided"}),
    ("my_layer_sweep", {"labutils.gradcam", "labutils.shortcut", "labutils.checks"}),
])
def test_an_exercise_stages_no_module_that_holds_its_answer(function, kept_out):
    """The scorer sees only ``Exercise.modules`` and what they import (any import, at any level)."""
    from labutils.checks import EXERCISES
    from labutils.instructor.scoring import _with_dependencies

    (exercise,) = [e for e in EXERCISES if e.function == function]
    staged = set(_with_dependencies(exercise.modules))
    assert set(exercise.modules) <= staged
    assert not staged & kept_out, f"{function} stages {sorted(staged & kept_out)}"
