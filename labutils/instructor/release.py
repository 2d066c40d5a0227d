"""The students' copy of the lab: one folder to publish (a repository, a zip, a JupyterHub folder).

    python -m labutils release --out release/
    python -m labutils release --out release/ --install-from git+https://github.com/CLASS/gradcam-lab@v1

``make_release`` writes::

    README.md                  the students' README: set-up on each platform, what to hand in
    notebooks/*.ipynb          the student versions (``student.py``: solutions, mark schemes, outputs removed),
                               a set-up cell first, the release version in their metadata
    labutils/                  the reference and the checks, without ``labutils/instructor`` (the grader)
    pyproject.toml             ``pip install .``: the students' install (no developer tools)
    binder/requirements.txt    Binder (repo2docker): CPU torch from PyTorch's CPU index, then
    binder/postBuild           the lab itself (``pip install --no-deps .``)
    .gitignore

**The release version** is ``<package version>+<content hash>`` (``0.1.0+3f09c1a2b4``): the hash covers the
student notebooks and every file of the shipped package, so the same sources always give the same version
and any change gives another. It is the release's package version (``pip show labutils``) and every
notebook's ``metadata.labutils.release``, which the grader reads back from a submission.

**The set-up cell** (first code cell of each notebook) does nothing where labutils is importable. Where it
is not (Colab, a bare Jupyter), it installs labutils from ``--install-from`` (a git URL, a wheel URL or a
path) with ``pip install --no-deps`` plus the small dependencies that are missing, never torch (Colab has
it; another torch would be gigabytes). Wherever that cannot work, it prints one line saying what to do.

**Nothing of the instructor's side ships**: the release is checked by ``leaks`` before it is published
(every solution function of the instructor's notebooks, normalised, against every function in the release's
notebooks and files outside the package; every mark scheme's text against every file). A release that
fails the check is not written.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import tempfile
import tomllib
from pathlib import Path

import nbformat

from ..errors import LabError
from ..submission import python_source
from .student import CODE_BEGIN, CODE_END, REPO_ROOT, TEXT_BEGIN, TEXT_END, default_notebooks, solution_regions, \
    student_version, write_notebook

PACKAGE = REPO_ROOT / "labutils"
NOT_SHIPPED = ("instructor",)  # folders of labutils that stay with the instructor
SKIPPED_FILES = re.compile(r"(__pycache__|\.pyc$|\.pyo$|\.egg-info|\.ipynb_checkpoints)")
SCHEME_LINE = 40  # mark-scheme lines at least this long are searched for one by one
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
SMALL_DEPS = {"numpy": "numpy", "pillow": "PIL", "matplotlib": "matplotlib", "tqdm": "tqdm",
              "nbformat": "nbformat", "nbclient": "nbclient", "ipywidgets": "ipywidgets"}  # pip name -> module


# ---------------------------------------------------------------- what ships


def package_files(package: Path = PACKAGE) -> list[Path]:
    """The files of the students' package (relative to ``package``): its modules and the sample manifest, not the
    instructor's tools (nor stray files: caches, editor backups)."""
    files = []
    for path in sorted(package.rglob("*")):
        relative = path.relative_to(package)
        wanted = path.suffix == ".py" or relative.parts[0] == "manifest"
        if path.is_file() and wanted and relative.parts[0] not in NOT_SHIPPED \
                and not SKIPPED_FILES.search(str(relative)):
            files.append(relative)
    return files


def project_metadata() -> dict:
    """``[project]`` of the repository's pyproject.toml (name, version, dependencies)."""
    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def torch_versions() -> tuple[str, str]:
    """The torch and torchvision releases this lab is tested with (the instructor's, without the +cu/+cpu tag)."""
    from importlib.metadata import version

    return version("torch").split("+")[0], version("torchvision").split("+")[0]


def release_version(notebooks: dict[str, nbformat.NotebookNode], package: Path = PACKAGE) -> str:
    """``<package version>+<first 10 hex digits of the content hash>``: same sources, same version."""
    digest = hashlib.sha256()
    for name in sorted(notebooks):
        digest.update(f"notebook {name}\n".encode() + nbformat.writes(notebooks[name]).encode() + b"\n")
    for relative in package_files(package):
        digest.update(f"file {relative.as_posix()}\n".encode() + (package / relative).read_bytes() + b"\n")
    return f"{project_metadata()['version']}+{digest.hexdigest()[:10]}"


# ---------------------------------------------------------------- the set-up cell


def setup_cell_source(install_from: str | None, version: str) -> str:
    """The first code cell of a release notebook: installs labutils where it is missing, or says what to do."""
    deps = dict(SMALL_DEPS)
    return f'''# Set-up. Where labutils is installed (your laptop, a hub, Binder) this cell does nothing. Where it is not
# (Google Colab), it installs it once from the place your instructor chose, without touching torch.
LAB_RELEASE = {version!r}
LAB_INSTALL_FROM = {install_from or ""!r}


def _set_up_the_lab():
    import importlib, importlib.util, subprocess, sys

    if importlib.util.find_spec("labutils") is not None:
        return
    readme = "see 'Set up' in the lab's README.md"
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("torchvision") is None:
        return print(f"labutils needs torch and torchvision, which are not installed in this Python: {{readme}}, "
                     "then restart the kernel.")
    if not LAB_INSTALL_FROM:
        return print(f"labutils is not installed here: in a terminal, in the lab's folder, run "
                     f"{{sys.executable}} -m pip install . ({{readme}}), then restart the kernel.")
    small = {deps!r}
    missing = [pip for pip, module in small.items() if importlib.util.find_spec(module) is None]
    for command in ([LAB_INSTALL_FROM, "--no-deps"], missing):
        if not command:
            continue
        try:
            done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", *command], capture_output=True,
                                  text=True, timeout=600)
            failed = done.returncode != 0 and (done.stderr.strip() or done.stdout.strip() or "no message")
        except (OSError, subprocess.SubprocessError) as error:
            failed = str(error)
        if failed:
            said = [line for line in failed.splitlines() if line.strip()]
            why = ([line for line in said if line.startswith("ERROR")] or said)[-1][:200]
            return print(f"labutils could not be installed from {{LAB_INSTALL_FROM}} (pip: {{why}}); check the "
                         f"address with your instructor, or {{readme}}.")
    importlib.invalidate_caches()
    if importlib.util.find_spec("labutils") is None:
        return print(f"labutils was installed but this kernel cannot see it: restart the kernel "
                     "(Runtime -> Restart session on Colab) and run the notebook again.")
    print(f"labutils (release {{LAB_RELEASE}}) installed from {{LAB_INSTALL_FROM}}: go on with the next cell.")


_set_up_the_lab()
'''


def release_notebook(nb: nbformat.NotebookNode, name: str, install_from: str | None, version: str
                     ) -> nbformat.NotebookNode:
    """The student version with the set-up cell first and the release version in its metadata."""
    nb = student_version(nb, name)
    cell = nbformat.v4.new_code_cell(setup_cell_source(install_from, version))
    cell.metadata["labutils"] = {"setup": True}
    nb.cells.insert(0, cell)
    nb.metadata["labutils"] = {"release": version}
    return nb


def notebook_release(nb: dict) -> str | None:
    """The release version written in a notebook's metadata (None: not from a release, or unreadable)."""
    meta = nb.get("metadata") if isinstance(nb, dict) else None
    lab = meta.get("labutils") if isinstance(meta, dict) else None
    value = lab.get("release") if isinstance(lab, dict) else None
    return value if isinstance(value, str) else None


def current_release(instructor_dir: Path) -> str | None:
    """The version a release made now from ``instructor_dir`` and this labutils would have (None: cannot tell)."""
    try:
        paths = sorted(Path(instructor_dir).glob("*.ipynb"))
        return release_version({p.name: student_version(nbformat.read(p, as_version=4), p.name) for p in paths})
    except Exception:  # an unreadable notebook is reported by the grader's own checks
        return None


def release_note(submitted: dict, expected: str | None) -> str | None:
    """The grader's note for a submission made from another release than ``expected`` (None: same, or unknown)."""
    found = notebook_release(submitted)
    if expected is None or found is None or found == expected:
        return None
    return (f"made from release {found}, not the current release {expected}: the student worked in another copy "
            "of the lab (an older release?); check the exercises and questions against that release")


# ---------------------------------------------------------------- the platform files


def pyproject_text(version: str, torch_pins: tuple[str, str]) -> str:
    """The students' pyproject.toml: the lab's default dependencies (no developer tools), no instructor package."""
    project = project_metadata()
    deps = "".join(f'    "{d}",\n' for d in project["dependencies"])
    torch, vision = torch_pins
    return f'''# The students' install of the Grad-CAM lab (no developer tools): pip install .
#
# torch first. On Linux without an NVIDIA GPU, take PyTorch's CPU build (about 0.75 GB installed instead of
# about 5 GB with the CUDA libraries that pip picks on Linux by default):
#   pip install torch=={torch} torchvision=={vision} --index-url {CPU_INDEX}
# On macOS and Windows, and on Linux with an NVIDIA GPU, plain `pip install .` is right.
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "labutils"
version = "{version}"
description = "{project['description']} (students' copy)"
readme = "README.md"
requires-python = "{project['requires-python']}"
dependencies = [
{deps}]

[tool.setuptools.packages.find]
include = ["labutils", "labutils.*"]

[tool.setuptools.package-data]
labutils = ["manifest/SOURCES.md", "manifest/SHA256SUMS"]
'''


def binder_requirements(torch_pins: tuple[str, str]) -> str:
    """binder/requirements.txt: repo2docker's pip install, CPU torch from PyTorch's CPU index."""
    torch, vision = torch_pins
    small = "".join(f"{d}\n" for d in project_metadata()["dependencies"] if not d.startswith(("torch", "jupyterlab")))
    return (f"# Binder (repo2docker) installs this file, then runs binder/postBuild (the lab itself).\n"
            f"# CPU torch: Binder has no GPU, and the CUDA build would add about 4 GB to the image.\n"
            f"--extra-index-url {CPU_INDEX}\n"
            f"torch=={torch}+cpu\ntorchvision=={vision}+cpu\n{small}")


POSTBUILD = """#!/bin/bash
# Binder (repo2docker) runs this in the repository after binder/requirements.txt: the lab, not editable,
# without dependencies (torch is already the CPU build from requirements.txt).
set -euo pipefail
python -m pip install --no-deps .
"""

GITIGNORE = """.venv/
__pycache__/
*.egg-info/
build/
dist/
.ipynb_checkpoints/
data/
"""


def readme_text(version: str, install_from: str | None, torch_pins: tuple[str, str], notebooks: list[str]) -> str:
    """The students' README."""
    torch, vision = torch_pins
    source = install_from or "(none given: ask your instructor)"
    listing = "\n".join(f"- `notebooks/{n}`" for n in notebooks)
    from ..checks import EXERCISES

    graded = sorted({e.notebook for e in EXERCISES})
    numbers = ", ".join(n[:2] for n in graded[:-1]) + f" and {graded[-1][:2]}"
    return f"""# The Grad-CAM lab (students' copy, release {version})

This folder is the lab as you work on it: the notebooks with the exercises to write, and `labutils`, the small
reference package the notebooks use (read it after each exercise: it is there to learn from). Start with
`notebooks/00_start_here.ipynb`.

{listing}

## Set up: pick your platform

**Your laptop (Linux, macOS, Windows), Python 3.10 or newer.** In a terminal, in this folder:

```bash
python3 -m venv .venv
# Linux without an NVIDIA GPU: torch's CPU build first (about 0.75 GB installed instead of about 5 GB)
.venv/bin/pip install torch=={torch} torchvision=={vision} --index-url {CPU_INDEX}
# every platform (on Windows: .venv\\Scripts\\pip and .venv\\Scripts\\jupyter)
.venv/bin/pip install .
.venv/bin/python -m labutils fetch          # once, with internet: weights (760 MB) and sample images
.venv/bin/jupyter lab notebooks/
```

**Google Colab.** Open a notebook from the class's repository
(`https://colab.research.google.com/github/ORG/REPO/blob/main/notebooks/00_start_here.ipynb`) and run its first
cell: it installs labutils from `{source}`, and leaves Colab's own torch alone. Save your work to Drive
(*File -> Save a copy in Drive*) and download the notebooks to hand them in (*File -> Download -> .ipynb*).

**JupyterHub.** Your instructor gives you a link that copies this folder into your hub account (nbgitpuller);
the lab is already installed there, and the weights are in a shared folder. Open `notebooks/00_start_here.ipynb`.

**Binder.** The `binder/` folder is what Binder reads (CPU torch, then the lab). Binder sessions are erased when
they stop: download your notebooks before you leave.

Anywhere, the first cell of each notebook checks that labutils is there and says in one line what to do if not.

## Hand in

Notebooks {numbers} hold the graded exercises and questions. Hand in those files, named
`<your id>_<notebook name>` (for example `alice_03_gradcam_math.ipynb`) or kept under their own names in a folder
named after you (`alice/03_gradcam_math.ipynb`). Before you do, run

```bash
python -m labutils handin-check notebooks/ --student alice
```

It re-runs each exercise's check on the saved notebooks, lists the questions still unanswered and shows the
file names the grader will see. The grader runs your notebooks again from the top in a fresh kernel: what counts
is the code you saved, not the outputs on your screen.

Release {version}: keep this copy for the whole lab (a notebook from another release is flagged by the grader).
"""


# ---------------------------------------------------------------- the release


def check_install_source(install_from: str | None) -> str | None:
    """A URL is taken as given; a path must exist (it is written into the notebooks absolute)."""
    if install_from is None:
        return None
    value = install_from.strip()
    if not value:
        raise LabError("--install-from is empty: give a git URL, a wheel URL or a path, or leave it out")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value) or value.startswith("git+"):
        return value
    path = Path(value).expanduser()
    if not path.exists():
        raise LabError(f"--install-from {value}: no such file or folder; give a git URL (git+https://...), "
                       "a wheel URL, or the path of a wheel or of the release folder")
    return str(path.resolve())


def make_release(out_dir: Path, install_from: str | None = None, notebooks: list[Path] | None = None) -> str:
    """Write the students' copy into ``out_dir`` (new or empty); return the release version.

    Built in a temporary folder beside ``out_dir``, checked for leaks, then moved into place: a failure
    leaves no partial release.
    """
    out_dir = Path(out_dir)
    source = check_install_source(install_from)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise LabError(f"--out {out_dir} exists and is not an empty folder; give a new or empty folder "
                       "(a release is written whole, never over another)")
    if out_dir.resolve().is_relative_to(REPO_ROOT.resolve() / "labutils"):
        raise LabError(f"--out {out_dir} is inside the package; choose a folder outside labutils/")
    paths = [Path(p) for p in (notebooks or default_notebooks())]
    if not paths:
        raise LabError("no notebooks to release (the lab's notebooks/*.ipynb)")
    stripped = {}
    for path in paths:
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception as error:
            raise LabError(f"{path} is not a readable notebook ({type(error).__name__}: {error})") from None
        stripped[path.name] = student_version(nb, path.name)
    version = release_version(stripped)
    pins = torch_versions()
    out_dir.absolute().parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.absolute().parent))
    try:
        (build / "notebooks").mkdir()
        for path in paths:
            write_notebook(release_notebook(nbformat.read(path, as_version=4), path.name, source, version),
                           build / "notebooks" / path.name)
        for relative in package_files():
            target = build / "labutils" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(PACKAGE / relative, target)
        (build / "binder").mkdir()
        files = {
            "README.md": readme_text(version, source, pins, [p.name for p in paths]),
            "pyproject.toml": pyproject_text(version, pins),
            "binder/requirements.txt": binder_requirements(pins),
            "binder/postBuild": POSTBUILD,
            ".gitignore": GITIGNORE,
        }
        for name, text in files.items():
            (build / name).write_text(text, encoding="utf-8")
        os.chmod(build / "binder" / "postBuild", 0o755)
        os.chmod(build, 0o755)
        found = leaks(build, paths)
        if found:
            raise LabError(f"the release would leak the instructor's side ({len(found)} finding(s)), nothing "
                           f"written; first: {found[0]}")
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(build, out_dir)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return version


# ---------------------------------------------------------------- the leak check


class _Anonymous(ast.NodeTransformer):
    """Every name and argument -> a placeholder by order of first use; docstrings dropped."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def _name(self, name: str) -> str:
        return self.names.setdefault(name, f"_{len(self.names)}")

    def visit_Name(self, node: ast.Name) -> ast.AST:
        return ast.Name(self._name(node.id), node.ctx)

    def visit_arg(self, node: ast.arg) -> ast.AST:
        return ast.arg(self._name(node.arg), None)  # annotations dropped with the names

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node.name = self._name(node.name)
        node.returns = None
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        self.generic_visit(node)
        return node

    visit_AsyncFunctionDef = visit_FunctionDef


def normalized(function: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    """A function with names, docstrings, comments and formatting taken out (``ast.dump`` of the renamed tree)."""
    import copy

    return ast.dump(_Anonymous().visit(copy.deepcopy(function)), annotate_fields=False)


def functions_in(source: str) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Every function (nested ones too) defined in ``source``; none if it does not parse."""
    try:
        tree = ast.parse(python_source(source))
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # not Python, or too deep
        return []
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def solution_functions(notebooks: list[Path]) -> dict[str, str]:
    """normalised function -> where, for every function of an instructor's notebook that holds solution lines."""
    found = {}
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        for n, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            lines = cell.source.split("\n")
            regions = solution_regions(lines, CODE_BEGIN, CODE_END, f"{path.name}, cell {n + 1}")
            for function in functions_in(cell.source):
                end = function.end_lineno or function.lineno
                if any(function.lineno - 1 <= last and first <= end - 1 for first, last in regions):
                    found.setdefault(normalized(function), f"{path.name}, cell {n + 1}: def {function.name}")
    return found


def mark_schemes(notebooks: list[Path]) -> dict[str, str]:
    """Mark-scheme text -> where, for every marked region (or solution markdown cell) of the instructor's notebooks."""
    found = {}
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        for n, cell in enumerate(nb.cells):
            if cell.cell_type != "markdown":
                continue
            lines = cell.source.split("\n")
            regions = solution_regions(lines, TEXT_BEGIN, TEXT_END, f"{path.name}, cell {n + 1}")
            texts = ["\n".join(lines[first + 1 : last]) for first, last in regions]
            if not regions and cell.get("metadata", {}).get("nbgrader", {}).get("solution"):
                texts = [cell.source]
            for text in texts:
                if text.strip():
                    found.setdefault(text, f"{path.name}, cell {n + 1}")
    return found


def _squeezed(text: str) -> str:
    return " ".join(text.split())


def _text_of(path: Path) -> str | None:
    """What a release file says: a notebook's cell sources and outputs, another file's text (None: binary)."""
    try:
        raw = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None
    if path.suffix == ".ipynb":
        try:
            nb = json.loads(raw)
        except ValueError:
            return raw
        parts = []
        for cell in nb.get("cells", []):
            parts.append("".join(cell.get("source", [])) if isinstance(cell.get("source"), list) else
                         str(cell.get("source", "")))
            parts.append(json.dumps(cell.get("outputs", []), ensure_ascii=False))
        return "\n".join(parts)
    return raw


def _code_of(path: Path, text: str) -> list[str]:
    """The Python sources of a release file: a notebook's code cells, or a .py file."""
    if path.suffix == ".py":
        return [text]
    if path.suffix == ".ipynb":
        nb = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
        return [c.source for c in nb.cells if c.cell_type == "code"]
    return []


def leaks(release: Path, instructor_notebooks: list[Path]) -> list[str]:
    """What of the instructor's side is in ``release``: solution functions outside the package, mark schemes anywhere.

    Functions are compared normalised (``normalized``); a mark scheme is found when its whole text, or any of
    its lines of ``SCHEME_LINE`` characters or more, appears in a file (whitespace squeezed).
    """
    release = Path(release)
    solutions = solution_functions(instructor_notebooks)
    schemes = mark_schemes(instructor_notebooks)
    needles = {}
    for text, where in schemes.items():
        needles.setdefault(_squeezed(text), where)
        for line in text.split("\n"):
            if len(_squeezed(line)) >= SCHEME_LINE:
                needles.setdefault(_squeezed(line), where)
    found = []
    for path in sorted(p for p in release.rglob("*") if p.is_file()):
        relative = path.relative_to(release)
        if relative.parts[0] == "labutils" and "instructor" in relative.parts:
            found.append(f"{relative}: the instructor's package is in the release")
        text = _text_of(path)
        if text is None:
            continue
        squeezed = _squeezed(text)
        for needle, where in needles.items():
            if needle in squeezed:
                found.append(f"{relative}: holds mark-scheme text of {where}: {needle[:60]!r}")
        if relative.parts[0] == "labutils":
            continue  # the reference package: read by students by design, copying from it is the grader's concern
        for source in _code_of(path, text):
            for function in functions_in(source):
                where = solutions.get(normalized(function))
                if where:
                    found.append(f"{relative}: def {function.name} is the solution of {where}")
    return found
