"""The students' copy on its own: a fresh environment outside the repository, labutils from a wheel built
from the release (not editable), the notebooks run by nbclient in that environment's kernel.

- simulated Colab: a fresh environment with only Jupyter (ipykernel, nbclient) and torch, the release's
  notebook 00 alone in an empty folder; its first cell installs labutils from the wheel given at release
  (``--install-from``, a local path) and the notebook reaches READY. The "cannot install" case (the wheel
  gone) and the "no torch" case each print one line, no traceback;
- the installed release: notebook 01 runs to the end with its unfinished exercise reported as a FAIL line,
  not an error; ``LABUTILS_RELEASE_NOTEBOOKS=all`` runs 01 to 06 (the nightly run). On two busy cores the
  students' notebooks took 00: 34 s, 01: 38 s, 02: 82 s, 03: 124 s, 04: 79 s, 05: 175 s, 06: 83 s; the
  fresh environment takes about 80 s to make, 00 runs in the Colab test, and 01, the shortest graded
  notebook, keeps these tests near the 4 minutes they may add to CI.

torch reaches the fresh environment through a ``.pth`` file naming a folder of symbolic links to the
developer environment's torch, torchvision and numpy and the distributions they require (nvidia-*, triton,
sympy, pillow...): installing torch 2.14.1 here (the CUDA build, 5.5 GB, from local disk) took 5 min 31 s,
more than the whole budget. Everything else (labutils, matplotlib, tqdm, ipywidgets, ipykernel, nbclient...)
is a real install from the package index into the fresh environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement

from labutils.instructor.release import make_release

REPO = Path(__file__).resolve().parents[1]
DATA = os.environ.get("LABUTILS_DATA") or str(REPO.parent / "shared" / "data")
LINKED = ("torch", "torchvision", "numpy")

RUNNER = r"""
import json, sys
import nbformat
from nbclient import NotebookClient
source, target, cells = sys.argv[1], sys.argv[2], int(sys.argv[3])
nb = nbformat.read(source, as_version=4)
if cells:
    nb.cells = nb.cells[:cells]
nb.cells.append(nbformat.v4.new_code_cell(
    "import sys, importlib.util\nspec = importlib.util.find_spec('labutils')\n"
    "print('KERNEL', sys.prefix, spec.origin if spec else None)"))
NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
               resources={"metadata": {"path": str(__import__('pathlib').Path(source).parent)}}).execute()
nbformat.write(nb, target)
"""


def requirements(name: str) -> list[str]:
    """The distributions ``name`` requires on this machine (markers evaluated, extras left out)."""
    found = []
    for line in distribution(name).requires or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            found.append(req.name)
    return found


def link_torch(folder: Path) -> list[str]:
    """Symbolic links in ``folder`` to torch, torchvision, numpy and what they require; return the pins."""
    folder.mkdir()
    todo, seen, pins = list(LINKED), set(), []
    while todo:
        name = todo.pop()
        dist = distribution(name)
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        pins.append(f"{dist.metadata['Name']}=={dist.version}")
        todo += requirements(name)
        site = Path(dist.locate_file(""))
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            if (site / top).exists() and not (folder / top).exists():
                (folder / top).symlink_to(site / top)
    return pins


def run(command: list, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, **kw)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> dict:
    """Releases A (no install source), B (from the wheel), C (from a wheel since deleted); the wheel; a fresh
    environment with only Jupyter and torch."""
    if not (Path(DATA) / "cat_dog.jpg").is_file():
        pytest.skip(f"the sample images are not in {DATA}: set LABUTILS_DATA")
    root = tmp_path_factory.mktemp("students")
    a, b, c = root / "release_a", root / "release_b", root / "release_c"
    version = make_release(a)
    build = root / "build"
    shutil.copytree(a, build)  # pip wheel writes build/ and *.egg-info beside the sources: not in the release
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", root / "dist", build])
    wheel = next((root / "dist").glob("labutils-*.whl"))
    assert make_release(b, install_from=str(wheel)) == version
    gone = root / "gone" / wheel.name
    gone.parent.mkdir()
    shutil.copy(wheel, gone)
    make_release(c, install_from=str(gone))
    gone.unlink()
    env = root / "venv"
    run([sys.executable, "-m", "venv", env])
    python = env / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    pins = link_torch(root / "torch-from-the-dev-environment")
    (site / "_lab_torch.pth").write_text(f"{root / 'torch-from-the-dev-environment'}\n")
    (root / "constraints.txt").write_text("\n".join(pins) + "\n")
    run([python, "-m", "pip", "install", "-q", "-c", root / "constraints.txt", "ipykernel", "nbclient"])
    (root / "runner.py").write_text(RUNNER)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "JUPYTER", "VIRTUAL_ENV"))}
    environ.update(HOME=str(root / "home"), XDG_CACHE_HOME=str(root / "cache"), JUPYTER_DATA_DIR=str(root / "jd"),
                   TORCH_HOME=str(root / "torch-home"), LABUTILS_WEIGHTS="random", LABUTILS_DATA=DATA,
                   PIP_CONSTRAINT=" ".join(filter(None, [os.environ.get("PIP_CONSTRAINT"),
                                                         str(root / "constraints.txt")])),
                   PATH=f"{env / 'bin'}:{os.environ['PATH']}")
    return {"root": root, "a": a, "b": b, "c": c, "wheel": wheel, "python": python, "env": environ,
            "version": version, "site": site}


def execute(lab: dict, notebook: Path, cells: int = 0) -> nbformat.NotebookNode:
    """Run ``notebook`` (its first ``cells``, or all) in the fresh environment's kernel; the executed notebook."""
    target = notebook.with_name(notebook.stem + ".out.ipynb")
    run([lab["python"], lab["root"] / "runner.py", notebook, target, cells], env=lab["env"], cwd=notebook.parent,
        timeout=900)
    return nbformat.read(target, as_version=4)


def texts(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def errors(nb) -> list[str]:
    return [f"cell {n + 1}: {o.get('ename')}: {o.get('evalue')}" for n, c in enumerate(nb.cells)
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


def alone(lab: dict, release: str, name: str) -> Path:
    """A release's notebook copied alone into an empty folder (how Colab opens it)."""
    folder = lab["root"] / f"alone_{release}_{name[:2]}"
    folder.mkdir()
    shutil.copy(lab[release] / "notebooks" / name, folder / name)
    return folder / name


def test_colab_cannot_install_and_no_torch_each_say_one_line(lab):
    nb = execute(lab, alone(lab, "c", "00_start_here.ipynb"), cells=1)
    said = texts(nb.cells[0])
    assert errors(nb) == []
    assert said.count("\n") == 1 and said.startswith("labutils could not be installed from "), said
    assert "KERNEL" in texts(nb.cells[-1]) and texts(nb.cells[-1]).strip().endswith("None")  # still not there
    # a Python without torch (site-packages off): the same cell, one line
    source = nbformat.read(lab["c"] / "notebooks" / "00_start_here.ipynb", as_version=4).cells[0].source
    done = subprocess.run([sys.executable, "-S", "-c", source], capture_output=True, text=True, cwd=lab["root"])
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.count("\n") == 1 and done.stdout.startswith("labutils needs torch and torchvision")


def test_colab_first_cell_installs_the_lab_and_notebook_00_is_ready(lab):
    nb = execute(lab, alone(lab, "b", "00_start_here.ipynb"))
    assert errors(nb) == []
    first = texts(nb.cells[0])
    assert first == f"labutils (release {lab['version']}) installed from {lab['wheel']}: go on with the next cell.\n"
    everything = "".join(texts(c) for c in nb.cells)
    assert "Verdict: READY, UNTRAINED ON PURPOSE" in everything
    kernel = texts(nb.cells[-1]).split()
    assert kernel[1] == str(lab["root"] / "venv") and kernel[2].startswith(str(lab["site"] / "labutils"))
    # the installed release has no grader, and says so in one line
    done = subprocess.run([lab["python"], "-m", "labutils", "grade", "x.ipynb"], capture_output=True, text=True,
                          env=lab["env"], cwd=lab["root"])
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "students' copy of labutils" in done.stderr
    assert not (lab["site"] / "labutils" / "instructor").exists()
    assert (lab["site"] / "labutils" / "manifest" / "SHA256SUMS").is_file()


@pytest.fixture
def installed(lab) -> dict:
    """labutils from the wheel in the fresh environment (the Colab test installs it; on its own, this does)."""
    probe = subprocess.run([lab["python"], "-c", "import importlib.util as u; assert u.find_spec('labutils')"],
                           capture_output=True, env=lab["env"], cwd=lab["root"])
    if probe.returncode != 0:
        run([lab["python"], "-m", "pip", "install", "-q", "--no-deps", lab["wheel"]], env=lab["env"])
        run([lab["python"], "-m", "pip", "install", "-q", "matplotlib", "tqdm", "ipywidgets", "nbformat"],
            env=lab["env"])
    return lab


UNFINISHED = {  # notebook -> the exercises whose check must say FAIL in the students' copy
    "01_architectures.ipynb": ["layer_cost"],
    "02_hooks.ipynb": ["capture"],
    "03_gradcam_math.ipynb": ["alpha", "combine", "postprocess", "gradcam", "layer_sweep", "cam"],
    "04_guided_and_counterfactual.ipynb": ["overlay", "guided_relu", "guided_gradcam", "counterfactual"],
    "05_results.ipynb": [],
    "06_can_you_trust_the_map.ipynb": ["pointing_game"],
}
ALL = os.environ.get("LABUTILS_RELEASE_NOTEBOOKS", "").strip().lower() == "all"


@pytest.mark.parametrize("name", list(UNFINISHED) if ALL else ["01_architectures.ipynb"])
def test_release_notebooks_run_to_the_end_with_fail_lines(installed, name):
    folder = installed["root"] / f"students_{name[:2]}"
    shutil.copytree(installed["a"] / "notebooks", folder)
    nb = execute(installed, folder / name)
    assert errors(nb) == []
    everything = "".join(texts(c) for c in nb.cells)
    for grade_id in UNFINISHED[name]:
        assert f"FAIL: {grade_id}: not implemented yet" in everything
    assert not [line for line in everything.splitlines() if line.startswith("PASS:")]
    assert texts(nb.cells[-1]).split()[2].startswith(str(installed["site"] / "labutils"))
