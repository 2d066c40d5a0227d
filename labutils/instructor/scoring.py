"""Scoring an exercise where the student's code never decides: the grader's side.

For each exercise of a submission the grader takes the solution cell's code from its own copy of the
submitted file, sends it with the notebook's import lines and the cases (the fixed ones students see,
and ones drawn fresh for this submission) to a scoring process (:mod:`labutils.instructor.scorer`)
in its own sandbox, and reads back plain data. ``exercise.diagnose`` then judges each outcome here,
in the grader's process: an exercise earns its points only if every case is right.

One scoring process per set of allowed modules serves the whole run (torch is imported once); it
forks a child per exercise. Its sandbox holds only the files of torch, numpy (and what they load),
``labutils.exercise`` and the exercise's ``modules``, copied into a folder of their own: the
reference implementations, the rest of labutils, Captum & co. and the lab's files are absent.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import json
import operator
import os
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import nbformat
import torch

from ..exercise import Case, Exercise, Net, Outcome
from ..submission import prelude, python_source
from .collect import Graded, LabNotebook, nbgrader
from .plain import PlainError, decode, encode
from .results import ExerciseResult, QuestionResult, Run, Verdict
from .sandbox import (Cgroup, Limits, bwrap_argv, failure_line, make_cgroup, python_dirs, python_executable,
                      rlimit_prefix)
from .similarity import against_references

PACKAGE = Path(__file__).resolve().parents[1]  # labutils/
STAGED = ("__init__.py", "exercise.py", "errors.py", "instructor/__init__.py", "instructor/plain.py",
          "instructor/scorer.py")  # fmt: skip
STAGED_MODULES = {"labutils." + name[:-3].replace("/", ".") for name in STAGED if not name.endswith("__init__.py")}
SCORE_TIMEOUT = 60.0  # seconds for one exercise's cases, all together
START_TIMEOUT = 180.0  # seconds for a scoring process to import torch and say it is ready
PROBE = """
import importlib, json, sys
import numpy, torch
import labutils.exercise, labutils.instructor.plain
for name in sys.argv[1:]:
    importlib.import_module(name)
files = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
files |= {line.split()[-1] for line in open("/proc/self/maps") if line.split()[-1].startswith("/")}
print(json.dumps(sorted(f for f in files if f)))
"""


class ScoringUnavailable(RuntimeError):
    """The scoring process could not be started: the grader's environment, never the submission, is at fault."""


# ---------------------------------------------------------------- the solution's code


def _plain_constant(value: Any) -> bool:
    if type(value) in (tuple, frozenset):
        return all(_plain_constant(v) for v in value)
    return value is None or type(value) in (bool, int, float, str)


def _module_tree(module: str) -> ast.Module | None:
    """The parsed source of a labutils module, read from its file: the grader never imports what a submission
    names (``labutils.__main__`` would run the command line in the grader's process)."""
    parts = module.split(".")
    if parts[0] != "labutils" or not all(part.isidentifier() for part in parts):
        return None
    path = PACKAGE.joinpath(*parts[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    try:
        stat = path.stat()
    except OSError:
        return None
    return _parsed(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _parsed(path: str, mtime_ns: int, size: int) -> ast.Module | None:
    """A file's syntax tree, parsed once per version of the file (its time and size are part of the key)."""
    try:
        return ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None


OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
             ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}


def _arithmetic(node: ast.expr, lookup: Any) -> Any:
    """A literal, or arithmetic on literals and the module's other constants (``MB = 1024**2``); ValueError
    for anything else. ``lookup(name)`` is what :func:`_defined` says of a name."""
    try:
        return ast.literal_eval(node)
    except ValueError:
        pass
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _arithmetic(node.operand, lookup)
        return -value if isinstance(node.op, ast.USub) else +value
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        left, right = _arithmetic(node.left, lookup), _arithmetic(node.right, lookup)
        if not all(type(v) in (int, float) for v in (left, right)) or \
                (isinstance(node.op, ast.Pow) and not (abs(right) <= 64 and abs(left) <= 2**64)):
            raise ValueError("not a small number")
        return OPERATORS[type(node.op)](left, right)
    if isinstance(node, ast.Name):
        found = lookup(node.id)
        if found is not None and found[0] == "value":
            return found[1]
    raise ValueError("not a constant")


def _defined(module: str, name: str, depth: int = 0) -> tuple[str, Any] | None:
    """Where ``module``'s top-level ``name`` comes from, statically: ("value", constant) for a literal
    assignment, ("home", module) for a function or class defined there or re-exported from another labutils
    module; None when the source does not say."""
    tree = _module_tree(module)
    if tree is None or depth > 8:
        return None
    package = module.split(".") if (PACKAGE.joinpath(*module.split(".")[1:])).is_dir() else module.split(".")[:-1]
    found = None
    for node in tree.body:
        unpacked = []  # SQUARE, DISC = 0, 1
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple):
            for target in node.targets:
                if isinstance(target, ast.Tuple) and len(target.elts) == len(node.value.elts):
                    unpacked += [v for t, v in zip(target.elts, node.value.elts)
                                 if isinstance(t, ast.Name) and t.id == name]
        if unpacked:
            try:
                value = _arithmetic(unpacked[-1], lambda other: _defined(module, other, depth + 1))
                found = ("value", value) if _plain_constant(value) else None
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError, ArithmeticError):
                found = None
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            try:
                value = _arithmetic(node.value, lambda other: _defined(module, other, depth + 1))
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError, ArithmeticError):
                found = None
                continue
            found = ("value", value) if _plain_constant(value) else None
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            found = ("home", module)
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name and alias.name != "*":
                    base = package[: len(package) - node.level + 1] if node.level else []
                    source = ".".join([*base, *(node.module.split(".") if node.module else [])])
                    found = _defined(source, alias.name, depth + 1) if source.startswith("labutils") else None
    return found


def _labutils_line(node: ast.ImportFrom) -> list[str]:
    """A ``from labutils... import`` line as the scoring process can run it: constants as values (``MB = 1048576``),
    names that labutils re-exports from the module that defines them (``from labutils.models import get_layer``).
    Read from the modules' source files, never imported here."""
    lines = []
    for alias in node.names:
        bound = alias.asname or alias.name
        found = _defined(node.module or "", alias.name) if alias.name != "*" else None
        if found is not None and found[0] == "value":
            lines.append(f"{bound} = {found[1]!r}")
        elif found is not None and found[1] != node.module:
            lines.append(f"from {found[1]} import {alias.name}" + (f" as {alias.asname}" if alias.asname else ""))
        else:
            lines.append(ast.unparse(ast.ImportFrom(node.module, [alias], 0)))
    return lines


def import_lines(sources: list[str]) -> list[str]:
    """What the solution may use from the cells before it: their top-level imports (labutils constants as values,
    re-exported names from their own module) and literal constants (``SIZE = (224, 224)``), one statement a line."""
    lines = []
    for node in prelude(sources):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "labutils":
            lines += _labutils_line(node)
        else:
            lines.append(ast.unparse(node))
    return list(dict.fromkeys(lines))


# ---------------------------------------------------------------- cases and verdicts


def draw_cases(exercise: Exercise) -> tuple[list[Case], int]:
    """The fixed cases, then cases drawn fresh for this submission; and how many are fixed."""
    fixed = list(exercise.cases(None))
    fresh = list(exercise.cases(torch.Generator().manual_seed(secrets.randbits(62))))
    return fixed + fresh, len(fixed)


def _wire(value: Any) -> Any:
    if isinstance(value, Net):
        return {"net": True, "builder": value.builder, "seed": int(value.seed)}
    return value


def _outcome(entry: Any) -> Outcome:
    """An Outcome from decoded plain data; PlainError if its fields have the wrong types."""
    if type(entry) is not dict or set(entry) != {"result", "error", "changed_inputs", "hooks_left"}:
        raise PlainError("an outcome with the wrong fields")
    error, changed, hooks = entry["error"], entry["changed_inputs"], entry["hooks_left"]
    if not (error is None or type(error) is str) or type(changed) is not list or type(hooks) is not list \
            or not all(type(i) is int for i in changed) or not all(type(h) is str for h in hooks):
        raise PlainError("an outcome with fields of the wrong types")
    return Outcome(entry["result"], error, tuple(changed), tuple(hooks))


def verdict(exercise: Exercise, cases: list[Case], fixed: int, reply: Any) -> Verdict:
    """Judge the scoring process's reply with ``exercise.diagnose``; every case must be right."""
    if type(reply) is not dict or "outcomes" not in reply:
        return Verdict(False, "the scoring process answered something unreadable")
    if reply.get("failure"):
        return Verdict(False, str(reply["failure"])[:400])
    outcomes = reply["outcomes"]
    if type(outcomes) is not list or not 0 < len(outcomes) <= len(cases):
        return Verdict(False, "the scoring process answered for the wrong number of cases")
    if len(outcomes) < len(cases) and not (type(outcomes[-1]) is dict and outcomes[-1].get("error")):
        return Verdict(False, "the scoring process answered for too few cases")  # it stops at an error, only there
    for n, (case, entry) in enumerate(zip(cases, outcomes)):
        try:
            problem = exercise.diagnose(case, _outcome(entry))
        except PlainError as error:
            problem = f"unreadable result ({error})"
        except Exception as error:  # a result so unexpected that the diagnosis itself failed
            problem = f"an unexpected result ({type(error).__name__}: {str(error)[:200]})"
        if problem:
            where = case.name if n < fixed else f"{case.name} (drawn for grading)"
            return Verdict(False, f"{' '.join(str(problem).split())[:400]} — on {where}", len(cases))
    return Verdict(True, f"PASS: {exercise.function} is right on {len(cases)} cases ({fixed} fixed, "
                         f"{len(cases) - fixed} drawn for grading)", len(cases))


# ---------------------------------------------------------------- the scoring processes


def _module_level(tree: ast.AST) -> list[ast.AST]:
    """The nodes that run when the module is imported: not the bodies of its functions (an import inside a
    function runs only when it is called, and the scoring process calls only the exercise's ``modules``)."""
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        found.append(node)
        todo += [child for child in ast.iter_child_nodes(node)
                 if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]
    return found


def _labutils_imports(module: str) -> set[str]:
    """The labutils modules that ``module``'s source imports when it is imported (relative or absolute), read
    from its file; imports inside functions are not followed."""
    parts = module.split(".")
    path = PACKAGE.joinpath(*parts[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return set()
    package = parts[:-1] if path.name != "__init__.py" else parts
    found = set()
    for node in _module_level(tree):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join([*base, *(node.module.split(".") if node.module else [])])
            candidates = [name] + [f"{name}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        for candidate in candidates:
            bits = candidate.split(".")
            target = PACKAGE.joinpath(*bits[1:])
            if bits[0] == "labutils" and len(bits) > 1 and (target.with_suffix(".py").is_file() or target.is_dir()):
                found.add(candidate)
    return found


def _with_dependencies(modules: tuple[str, ...]) -> list[str]:
    """``modules`` and every labutils module they import, transitively (what their copies need)."""
    todo, seen = [m for m in modules if m.startswith("labutils.")], set()
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += sorted(_labutils_imports(module) - seen)
    return sorted(seen)


def _top_level_names(module: str) -> list[str]:
    """The names ``module``'s source binds at its top level (functions, classes, imports, assignments)."""
    tree = _module_tree(module)
    names: list[str] = []
    for node in tree.body if tree else []:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.ImportFrom):
            names += [a.asname or a.name for a in node.names if a.name != "*"]
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
    return list(dict.fromkeys(n for n in names if not n.startswith("_")))


def views(staged: set[str]) -> dict[str, list[str]]:
    """For each labutils module that is not staged, what it re-exports from the staged ones, as import lines:
    ``labutils.gradcam`` -> ``from labutils.equations import combine``... (its own functions stay out). The
    scoring process gets these as files, so ``from labutils.gradcam import combine`` works where the module
    that holds Grad-CAM itself is absent."""
    found = {}
    for path in sorted(PACKAGE.glob("*.py")):
        module = "labutils" if path.name == "__init__.py" else f"labutils.{path.stem}"
        if module in staged or path.name == "__main__.py":
            continue
        lines = []
        for name in _top_level_names(module):
            home = _defined(module, name)
            if home is not None and home[0] == "home" and home[1] in staged and home[1] != module:
                lines.append(f"from {home[1]} import {name}")
        if lines:
            found[module] = lines
    return found


def _stage(modules: tuple[str, ...], folder: Path) -> Path:
    """A copy of the few labutils files the scoring process may see: exercise, plain data, the scorer, modules
    and what they import; and, for the other labutils modules, only what they re-export from those (``views``)."""
    root = folder / "labutils"
    for name in STAGED:
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("__init__.py"):
            target.write_text('"""The files of labutils a scoring process may import."""\n', encoding="utf-8")
        else:
            shutil.copy(PACKAGE / name, target)
    staged = set(STAGED_MODULES)
    for module in _with_dependencies(modules):
        parts = module.split(".")
        if parts[0] != "labutils" or len(parts) < 2:
            continue
        source = PACKAGE.joinpath(*parts[1:])
        staged.add(module)
        if source.is_dir():
            shutil.copytree(source, root.joinpath(*parts[1:]), dirs_exist_ok=True)
        elif source.with_suffix(".py").is_file():
            target = root.joinpath(*parts[1:]).with_suffix(".py")
            target.parent.mkdir(parents=True, exist_ok=True)
            for n in range(2, len(parts)):
                init = root.joinpath(*parts[1:n], "__init__.py")
                if not init.exists():
                    init.write_text("", encoding="utf-8")
            shutil.copy(source.with_suffix(".py"), target)
    for module, lines in views(staged).items():
        target = root / "__init__.py" if module == "labutils" else root / f"{module.split('.')[-1]}.py"
        target.write_text(f'"""{module} as a scoring process sees it: only what it re-exports from the files '
                          'staged here."""\n\n' + "\n".join(lines) + "\n", encoding="utf-8")
    return folder


def site_dirs() -> list[Path]:
    """Every folder of installed packages the environment could import from."""
    found = {Path(p).resolve() for p in sys.path if p and ("site-packages" in p or "dist-packages" in p)}
    for prefix in {sys.prefix, sys.base_prefix, "/usr", "/usr/local"}:
        for pattern in ("lib*/python3*/site-packages", "lib*/python3*/dist-packages", "lib/python3/dist-packages"):
            found |= {p.resolve() for p in Path(prefix).glob(pattern) if p.is_dir()}
    return sorted(found)


def needed_entries(stage: Path, modules: tuple[str, ...]) -> list[Path]:
    """The entries of the site folders that importing torch, numpy and ``modules`` touches (a probe run)."""
    env = {**os.environ, "PYTHONPATH": str(stage), "PYTHONDONTWRITEBYTECODE": "1"}
    probe = subprocess.run([python_executable(), "-c", PROBE, *modules], capture_output=True, text=True, env=env,
                           timeout=START_TIMEOUT, cwd=str(stage))
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the scoring process cannot import {', '.join(modules) or 'torch'}: {last}")
    sites = site_dirs()
    entries = {pth for site in sites for pth in site.glob("*.pth")}  # paths added by .pth files, conda's too
    for name in json.loads(probe.stdout):
        path = Path(name)
        for site in sites:
            if site in path.parents:
                entries.add(site / path.relative_to(site).parts[0])
    return sorted(entries)


@dataclass
class ScoringSetup:
    """How scoring processes are started in this run."""

    sandboxed: bool
    limits: Limits
    hidden: list[Path]  # folders never visible (the repository, submissions, grades)
    cgroups: bool = True
    threads: int = 1
    timeout: float = SCORE_TIMEOUT  # seconds for one exercise's cases
    modules: tuple[str, ...] = ()  # every exercise's modules: one probe finds the files they all need
    entries: Optional[list[Path]] = None  # what that probe found (site-packages entries)
    probing: threading.Lock = field(default_factory=threading.Lock)  # scorers start at once: one probe for all
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix=f"labutils-scoring-{os.getpid()}-")))
    # named after the grader's process: what a run leaves behind can be told from another run's


class Scorer:
    """One scoring process (one set of allowed modules), restarted when it dies."""

    def __init__(self, modules: tuple[str, ...], setup: ScoringSetup) -> None:
        self.modules, self.setup = modules, setup
        self.lock = asyncio.Lock()
        self.process: Optional[asyncio.subprocess.Process] = None
        self.cgroup: Optional[Cgroup] = None
        self.stage = _stage(modules, Path(tempfile.mkdtemp(prefix="stage-", dir=setup.workdir)))
        self.views = sorted(views(set(_with_dependencies(modules)) | STAGED_MODULES))
        self.entries: Optional[list[Path]] = None
        self.said = bytearray()
        self.drain: Optional[asyncio.Future] = None

    def argv(self) -> list[str]:
        command = [python_executable(), "-m", "labutils.instructor.scorer"]
        if not self.setup.sandboxed:
            return command
        with self.setup.probing:
            if self.setup.entries is None:  # once per run, for all the scoring processes
                every = tuple(sorted(set(self.setup.modules) | set(self.modules)))
                probe = _stage(every, Path(tempfile.mkdtemp(prefix="probe-", dir=self.setup.workdir)))
                self.setup.entries = needed_entries(probe, every)
        self.entries = self.setup.entries
        env = {"PYTHONPATH": str(self.stage), "PATH": "/usr/bin:/bin", "HOME": "/tmp/home", "LC_ALL": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": str(self.setup.threads),
               "TMPDIR": "/tmp"}  # fmt: skip
        readable = python_dirs(self.setup.hidden + [PACKAGE.parent]) + [self.stage]
        argv = bwrap_argv([*command, "--sandboxed"], readable=readable, writable=[], env=env, masked=site_dirs(),
                          shown=self.entries)
        if self.setup.cgroups:
            self.cgroup = make_cgroup(self.setup.limits)
        return (self.cgroup.prefix() if self.cgroup else rlimit_prefix(self.setup.limits)) + argv

    async def _start(self) -> None:
        preparing = asyncio.get_running_loop().run_in_executor(None, self.argv)
        try:
            argv = await asyncio.shield(preparing)
        except asyncio.CancelledError:  # the run stops: let the thread end, so that stop() removes its cgroup
            await asyncio.wait([preparing])
            raise
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(self.stage), "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": str(self.setup.threads)}  # nothing else of the grader's environment
        self.process = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            start_new_session=True, cwd=str(self.stage))
        self.said = bytearray()
        self.drain = asyncio.ensure_future(self._drain(self.process.stderr))
        try:
            ready = await asyncio.wait_for(self._read(), START_TIMEOUT)
        except (asyncio.IncompleteReadError, ConnectionError) as error:
            await asyncio.wait([self.drain], timeout=5)
            raise ScoringUnavailable(failure_line(bytes(self.said), self.process.returncode)) from error
        if ready != b"ready":
            raise RuntimeError("the scoring process did not start")

    async def _drain(self, stream: Optional[asyncio.StreamReader]) -> None:
        """Keep the first 8 kB the scoring process writes to stderr (bubblewrap's message), drop the rest."""
        while stream is not None:
            chunk = await stream.read(65536)
            if not chunk:
                return
            if len(self.said) < 8192:
                self.said += chunk[: 8192 - len(self.said)]

    async def _read(self) -> bytes:
        assert self.process and self.process.stdout
        head = await self.process.stdout.readexactly(8)
        (size,) = struct.unpack("<Q", head)
        return await self.process.stdout.readexactly(size)

    async def stop(self) -> None:
        if self.process and self.process.returncode is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # its session: the scoring process and its worker
            except (ProcessLookupError, PermissionError):
                pass
            await self.process.wait()
        if self.drain is not None:
            self.drain.cancel()
            self.drain = None
        self.process = None
        if self.cgroup:
            await asyncio.get_running_loop().run_in_executor(None, self.cgroup.remove)
            self.cgroup = None

    async def score(self, request: dict, timeout: float) -> Any:
        """The decoded reply to one request (a dict with ``failure`` and ``outcomes``)."""
        async with self.lock:
            for attempt in (1, 2):
                try:
                    if self.process is None or self.process.returncode is not None:
                        await self.stop()
                        await self._start()
                    break
                except (OSError, RuntimeError, asyncio.TimeoutError, asyncio.IncompleteReadError) as error:
                    await self.stop()
                    if attempt == 2:
                        said = str(error) if isinstance(error, ScoringUnavailable) else \
                            f"{type(error).__name__}: {error}".rstrip(": ")
                        raise ScoringUnavailable(f"the scoring process did not start ({said})") from None
            assert self.process and self.process.stdin
            data = encode({**request, "timeout": timeout})
            try:
                self.process.stdin.write(struct.pack("<Q", len(data)) + data)
                await self.process.stdin.drain()
                answer = await asyncio.wait_for(self._read(), timeout + 30)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                await self.stop()  # killed from inside (os.kill(os.getppid(), 9)), or stuck: a new one next time
                return {"failure": "the scoring process was killed while it ran this solution", "outcomes": []}
            except asyncio.CancelledError:  # the run stops, or this student's time is up: never a stale reply
                await self.stop()
                raise
        try:
            return decode(answer)
        except PlainError as error:
            return {"failure": f"the scoring process answered something unreadable ({error})", "outcomes": []}


class ScoringPool:
    """The scoring processes of one grading run, one per set of allowed modules."""

    def __init__(self, setup: ScoringSetup) -> None:
        self.setup = setup
        self.scorers: dict[tuple[str, ...], Scorer] = {}

    def scorer(self, modules: tuple[str, ...]) -> Scorer:
        key = tuple(sorted(set(modules)))
        if key not in self.scorers:
            self.scorers[key] = Scorer(key, self.setup)
        return self.scorers[key]

    async def score(self, exercise: Exercise, code: str, prelude: list[str]) -> Verdict:
        """Score one exercise of one submission."""
        try:
            cases, fixed = draw_cases(exercise)
            request = {"code": code, "prelude": prelude, "function": exercise.function,
                       "modules": list(exercise.modules), "forbidden": list(exercise.forbidden),
                       "cases": [[_wire(a) for a in c.args] for c in cases]}
        except Exception as error:  # the registry's own cases failed: an instructor's bug, said plainly
            return Verdict(False, f"the grader could not draw this exercise's cases ({type(error).__name__}: {error})",
                           infrastructure=True)
        try:
            scorer = self.scorer(tuple(exercise.modules))
            request["views"] = scorer.views  # importable too: labutils.gradcam's re-exports from the staged files
            reply = await scorer.score(request, self.setup.timeout)
        except ScoringUnavailable as error:
            return Verdict(False, str(error), infrastructure=True)
        return verdict(exercise, cases, fixed, reply)

    async def close(self) -> None:
        for scorer in self.scorers.values():
            await scorer.stop()
        shutil.rmtree(self.setup.workdir, ignore_errors=True)


# ---------------------------------------------------------------- the score stage


async def all_of(*awaitables: Any) -> list:
    """``asyncio.gather``, except that when one fails or the run stops, the others are cancelled and awaited
    before it raises: each one has cleaned up (kernels stopped, folders removed) when the caller goes on."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            if not task.cancelling():  # cancelled once already (by gather): a second cancel would cut its cleanup
                task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        raise


async def score_notebook(submitted: nbformat.NotebookNode, lab: LabNotebook, run: Run, pool: ScoringPool) -> None:
    """Score each exercise of the notebook from the solution cells of the grader's own copy, all at once: an
    exercise waits only for its own scoring process."""
    cells = [c for c in submitted.get("cells", []) if isinstance(c, dict)] \
        if isinstance(submitted.get("cells"), list) else []
    found = {graded.exercise.grade_id: [n for n, c in enumerate(cells) if c.get("cell_type") == "code"
                                        and nbgrader(c).get("grade_id") == graded.exercise.solution_grade_id
                                        and isinstance(c.get("source"), str)] for graded in lab.exercises}

    async def one(graded: Graded) -> Verdict:
        exercise = graded.exercise
        if not found[exercise.grade_id]:
            return Verdict(False, f"no solution cell {exercise.solution_grade_id} in this notebook (made from an "
                                  "older handout?)")
        first = found[exercise.grade_id][0]
        prelude = import_lines([c["source"] for c in cells[:first] if c.get("cell_type") == "code"
                                and isinstance(c.get("source"), str)])
        return await pool.score(exercise, cells[first]["source"], prelude)

    verdicts = await all_of(*(one(graded) for graded in lab.exercises))
    for graded, verdict in zip(lab.exercises, verdicts):  # in the lab's order, whatever order they finished in
        grade_id, where = graded.exercise.grade_id, found[graded.exercise.grade_id]
        run.verdicts[grade_id] = verdict
        if len(where) > 1:
            run.notes.append(f"{len(where)} cells claim to be the solution {graded.exercise.solution_grade_id}: "
                             "the first was scored")
        if where:
            run.solutions[grade_id] = cells[where[0]]["source"]
            match = against_references(cells[where[0]]["source"], dict(graded.references), graded.exercise.function)
            if match is not None:
                run.similar[grade_id] = match
    for question in lab.questions:
        answers = [c["source"] for c in cells if nbgrader(c).get("grade_id") == question.grade_id
                   and isinstance(c.get("source"), str)]
        run.answers[question.grade_id] = answers[0] if answers else "(no answer cell: deleted, or an older handout)"


def score(run: Run, lab: LabNotebook) -> tuple[list[ExerciseResult], list[QuestionResult]]:
    """Each exercise of the notebook: passed (points) or not (0, and why); each written answer."""
    exercises = []
    for graded in lab.exercises:
        grade_id = graded.exercise.grade_id
        found = run.verdicts.get(grade_id) or Verdict(False, run.notes[0] if run.notes else "not graded")
        match = run.similar.get(grade_id)
        exercises.append(ExerciseResult(grade_id, lab.name, graded.points if found.passed else 0.0, graded.points,
                                        found.passed, found.message, bool(match and match.flagged),
                                        match.score if match else 0.0, match.source if match else "",
                                        run.solutions.get(grade_id, "")))
    questions = [QuestionResult(q.grade_id, lab.name, q.points, run.answers.get(q.grade_id, "(not submitted)"),
                                q.scheme) for q in lab.questions]
    return exercises, questions


def not_submitted(lab: LabNotebook) -> tuple[list[ExerciseResult], list[QuestionResult]]:
    return ([ExerciseResult(g.exercise.grade_id, lab.name, 0.0, g.points, False, f"{lab.name} was not submitted")
             for g in lab.exercises],
            [QuestionResult(q.grade_id, lab.name, q.points, "(not submitted)", q.scheme) for q in lab.questions])
