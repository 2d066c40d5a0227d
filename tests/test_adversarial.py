"""Adversarial grading: one fake student per attack, all graded in ONE sandboxed run of the synthetic lab.

Each attacker starts from the student version (nothing solved) of tests/gradinglab.py's notebook and
adds one attack: forging the checks from the kernel, using the reference instead of writing it,
reading the answers or other students' files, killing the grader, escaping with a detached process,
writing into the package or the grades, fork bombs, memory hogs, giant figures, endless sleeps... Every
attacker must score zero, the instructor's notebook full marks, grades.csv must be complete, nothing
may be left running and no file outside the sandbox may change.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from nbformat.v4 import new_code_cell

import gradinglab as lab_module
from gradinglab import EXERCISES, NOTEBOOK, cell, variant, write_lab
from labutils.instructor.grading import FIGURES_CAP, grade
from labutils.instructor.sandbox import bwrap_works
from labutils.instructor.student import REPO_ROOT, make_student_versions

MARK = "ATTACK-MARKER-5c1e"  # in every attacker's process command line and file name, to find leftovers
SECRET = "grader-secret-9d2f"  # in the grader's environment; no sandbox may see it
TIMEOUT, BUDGET, MEMORY = 30, 60, 1.5  # seconds per cell, seconds per notebook, GiB per sandbox

pytestmark = pytest.mark.skipif(not bwrap_works(), reason="needs bubblewrap: apt-get install bubblewrap (.ci/run does)")


def add_cell(source: str, at: int | None = None):
    def change(nb):
        nb.cells.insert(len(nb.cells) if at is None else at, new_code_cell(source))
    return change


def solve_with(alpha: str, combine: str | None = None, top: str = ""):
    """Replace the solution cells' code (the student's "solution")."""
    def change(nb):
        cell(nb, "alpha-solution").source = f"{top}\ndef my_alpha(gradients):\n{alpha}"
        if combine is not None:
            cell(nb, "combine-solution").source = f"def my_combine(alpha, activations):\n{combine}"
    return change


def attacks(paths: dict[str, Path]) -> dict[str, object]:
    """student id -> the change that makes the student's notebook an attack."""
    instructor = paths["instructor"] / NOTEBOOK
    csv_path = paths["out"] / "grades.csv"
    teacher = paths["subs"] / "teacher" / NOTEBOOK
    package = Path(lab_module.__file__).resolve().parents[1] / "labutils"
    detached = (f"import subprocess\nsubprocess.Popen(['sh', '-c', 'sleep 4; echo pwned > {csv_path}; "
                f"echo x > /tmp/{MARK}-detached # {MARK}'], start_new_session=True)")
    return {
        # point 1: forging the checks from the student's kernel
        "patch_checker": add_cell("import labutils.exercise as e\ne.call = lambda fn, case: None\n"
                                  "check = lambda *a: print('PASS')", 2),
        "fake_module": add_cell("import sys, types\nsys.modules['labutils.exercise'] = types.SimpleNamespace()\n"
                                "sys.modules['labutils.gradcam'] = types.SimpleNamespace()", 2),
        "import_hook": add_cell("import builtins\n_real = builtins.__import__\n"
                                "builtins.__import__ = lambda *a, **k: _real(*a, **k)", 2),
        "isclose_true": solve_with("    return torch.zeros(gradients.shape[:-2])",
                                   top="import torch\ntorch.isclose = torch.allclose = torch.equal = "
                                       "lambda *a, **k: True\ntorch.Tensor.__eq__ = lambda *a: True"),
        "input_transformer": add_cell("get_ipython().input_transformers_post.append(lambda lines: "
                                      "['print(\"PASS: alpha\")\\n'])", 2),
        "showtraceback": add_cell("ip = get_ipython()\nip.showtraceback = lambda *a, **k: print('PASS: alpha')", 2),
        "tensor_subclass": solve_with(
            "    class Yes(torch.Tensor):\n        @classmethod\n"
            "        def __torch_function__(cls, func, types, args=(), kwargs=None):\n            return True\n"
            "    return torch.zeros(gradients.shape[:-2]).as_subclass(Yes)"),
        "stdout_forgery": solve_with("    os = __import__('os', {})\n    print('PASS: alpha')\n"
                                     "    for fd in range(64):\n        try:\n"
                                     "            os.write(fd, b'PASS' * 100)\n        except OSError:\n"
                                     "            pass\n    return gradients"),
        # point 1: using the answer instead of writing it
        "reference_alias": solve_with("    return alpha_weights(gradients)",
                                      "    return combine(alpha, activations)",
                                      top="from labutils.gradcam import alpha_weights, combine"),
        "reference_dunder": solve_with("    return __import__('labutils.gradcam', {}, {}, ['x'])."
                                       "alpha_weights(gradients)"),
        "reads_instructor": solve_with(
            "    text = open(" + repr(str(instructor)) + ").read()\n    nb = __import__('json', {}).loads(text)\n"
            "    code = [''.join(c['source']) for c in nb['cells'] if 'def my_alpha' in ''.join(c['source'])]\n"
            "    ns = {}\n    exec(code[0], ns)\n    return ns['my_alpha'](gradients)"),
        "reads_package_notebooks": solve_with(
            "    labutils = __import__('labutils', {})\n"
            "    root = __import__('pathlib', {}).Path(labutils.__file__).parents[1]\n"
            "    raise RuntimeError(str(list(root.glob('**/*.ipynb'))))"),
        "reads_other_student": solve_with(
            "    text = open(" + repr(str(teacher)) + ").read()\n    nb = __import__('json', {}).loads(text)\n"
            "    code = [''.join(c['source']) for c in nb['cells'] if 'def my_alpha' in ''.join(c['source'])]\n"
            "    ns = {'torch': torch}\n    exec(code[0], ns)\n    return ns['my_alpha'](gradients)"),
        "reads_tests": solve_with("    return open(" + repr(str(Path(lab_module.__file__).resolve())) + ").read()"),
        "reads_tests_in_kernel": add_cell("print(open(" + repr(str(Path(lab_module.__file__).resolve())) +
                                          ").read())", 2),
        # point 2: breaking the run from the kernel and from the scoring process
        "kill_parent": add_cell("import os\nos.kill(os.getppid(), 9)", 2),
        "kill_parent_in_scoring": solve_with("    os = __import__('os', {})\n    os.kill(os.getppid(), 9)"),
        "kill_group": add_cell("import os\nos.kill(0, 9)", 2),
        "kill_group_in_scoring": solve_with("    os = __import__('os', {})\n    os.kill(0, 9)"),
        "kill_term_group": add_cell("import os\nos.system('kill -TERM 0')", 2),
        "kill_everything_visible": add_cell(
            "import os, signal\nfor p in os.listdir('/proc'):\n    if p.isdigit() and int(p) != os.getpid():\n"
            "        try:\n            os.kill(int(p), signal.SIGKILL)\n        except OSError:\n            pass", 2),
        "detached_process": add_cell(detached, 2),
        "writes_package": add_cell(
            f"from pathlib import Path\nfor name in ('exercise.py', 'gradcam.py', 'checks/__init__.py'):\n"
            f"    with open(Path({str(package)!r}) / name, 'a') as f:  # raises: read-only\n"
            f"        f.write('\\n# {MARK}\\n')", 2),
        "writes_grades": add_cell(
            f"import os\nfor path in ({str(csv_path)!r}, {str(paths['out'] / 'results' / 'teacher.json')!r}, "
            f"'/tmp/{MARK}-tmp', os.path.expanduser('~/{MARK}-home')):\n    try:\n"
            f"        os.makedirs(os.path.dirname(path), exist_ok=True)\n"
            f"        open(path, 'w').write('pwned')\n    except OSError as error:\n        print(error)", 2),
        "reads_secrets": add_cell("import os\nprint({k: v for k, v in os.environ.items()})\n"
                                  "print(open('/proc/1/environ', 'rb').read())", 2),
        "network": add_cell(f"import socket\ns = socket.create_connection(('127.0.0.1', PORT), timeout=2)\n"
                            f"s.sendall(b'{MARK}')", 2),
        "fork_bomb": add_cell(f"import os\nos.system(\"sh -c ': {MARK}; b() {{ b | b & }}; b'\")"),
        "fork_bomb_in_scoring": solve_with("    os = __import__('os', {})\n    while True:\n        os.fork()"),
        "memory_hog": add_cell("import torch\nkept = []\nwhile True:\n    kept.append(torch.ones(50_000_000))", 2),
        "memory_hog_in_scoring": solve_with("    kept = []\n    while True:\n"
                                            "        kept.append(torch.ones(50_000_000))"),
        "giant_figures": add_cell("import os\nfrom IPython.display import Image, display\nfor _ in range(3):\n"
                                  "    display(Image(data=b'\\x89PNG' + os.urandom(10_000_000), format='png'))", 2),
        "sleeper": lambda nb: [nb.cells.insert(2, new_code_cell("import time\ntime.sleep(25)")) for _ in range(8)],
        "exits_in_scoring": solve_with("    raise SystemExit(0)"),
        # point 3: what a submission file can hold
        "int_grade_id": lambda nb: cell(nb, "alpha-solution").metadata["nbgrader"].update(grade_id=7),
        "bad_metadata": lambda nb: [c.metadata.update(nbgrader=["not", "a", "dict"]) for c in nb.cells],
    }


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    root = tmp_path_factory.mktemp("adversarial")
    paths = {"instructor": write_lab(root / "instructor"), "subs": root / "subs", "out": root / "grades"}
    (paths["subs"] / "teacher").mkdir(parents=True)
    shutil.copy(paths["instructor"] / NOTEBOOK, paths["subs"] / "teacher" / NOTEBOOK)
    blank = make_student_versions([paths["instructor"] / NOTEBOOK], root / "handout")[0]
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    port = server.getsockname()[1]
    received: list[bytes] = []
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                received.append(conn.recv(100) or b"connected")
            except OSError:
                continue

    threading.Thread(target=listen, daemon=True).start()
    for student, change in attacks(paths).items():
        def patched(nb, change=change):
            change(nb)
            for c in nb.cells:
                c.source = c.source.replace("PORT", str(port))
        variant(blank, paths["subs"] / f"{student}_{NOTEBOOK}", patched)
    # point 3: two files claim alice's notebook; a symlink; a spreadsheet formula as student id
    shutil.copy(paths["instructor"] / NOTEBOOK, paths["subs"] / f"alice_{NOTEBOOK}")
    (paths["subs"] / "mallory").mkdir()
    shutil.copy(blank, paths["subs"] / "mallory" / f"alice_{NOTEBOOK}")
    os.symlink("/etc/passwd", paths["subs"] / f"symlink_{NOTEBOOK}")
    shutil.copy(paths["instructor"] / NOTEBOOK, paths["subs"] / f"=HYPERLINK(1+1)_{NOTEBOOK}")
    package = REPO_ROOT / "labutils"
    before = {"package": digest(package), "subs": digest(paths["subs"]), "instructor": digest(paths["instructor"])}
    children_before = set(descendants())
    os.environ["GRADER_SECRET"] = SECRET
    began = time.monotonic()
    try:
        results = grade([paths["subs"], paths["subs"] / "teacher" / NOTEBOOK], paths["out"], timeout=TIMEOUT,
                        budget=BUDGET, memory=MEMORY, instructor_dir=paths["instructor"], registry=EXERCISES,
                        jobs=2, score_timeout=15, progress=False)
    finally:
        del os.environ["GRADER_SECRET"]
    seconds = time.monotonic() - began
    csv_after = (paths["out"] / "grades.csv").read_bytes()
    time.sleep(6)  # the detached process would have written by now
    stop.set()
    after = {"package": digest(package), "subs": digest(paths["subs"]), "instructor": digest(paths["instructor"])}
    return {"results": {r.student: r for r in results}, "paths": paths, "before": before, "after": after,
            "csv": csv_after, "received": received, "children": set(descendants()) - children_before,
            "seconds": seconds}


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and
            not p.is_symlink() else "link" for p in sorted(folder.rglob("*")) if "__pycache__" not in p.parts}


def descendants() -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process().children(recursive=True)]


def test_every_attack_scores_zero_and_the_instructor_full_marks(attacked):
    results = attacked["results"]
    names = set(attacks({"instructor": Path("/i"), "subs": Path("/s"), "out": Path("/o")}))
    assert names <= set(results)
    teacher = results["teacher"]
    assert [(e.grade_id, e.points, e.passed) for e in teacher.exercises] == [("alpha", 2, True), ("combine", 3, True)]
    assert teacher.total == 5 and teacher.max_points == 7 and not teacher.notes, teacher.notes
    earned = {name: results[name].total for name in names}
    assert earned == dict.fromkeys(names, 0), {k: v for k, v in earned.items() if v}
    print(f"graded {len(results)} students in {attacked['seconds']:.0f} s")


def test_the_forgeries_fail_for_the_right_reason(attacked):
    messages = {s: {e.grade_id: e.message for e in r.exercises} for s, r in attacked["results"].items()}
    assert messages["reference_alias"]["alpha"].startswith("the solution cell raised ModuleNotFoundError: "
                                                           "labutils.gradcam is not available")
    assert "No module named 'labutils.gradcam'" in messages["reference_dunder"]["alpha"]
    assert "not a plain tensor or array (subclasses are refused)" in messages["tensor_subclass"]["alpha"]
    assert messages["isclose_true"]["alpha"].startswith("wrong values")
    for name in ("reads_instructor", "reads_other_student", "reads_tests"):
        assert "FileNotFoundError" in messages[name]["alpha"], messages[name]["alpha"]
    assert "RuntimeError: []" in messages["reads_package_notebooks"]["alpha"]  # no notebook is visible at all
    assert messages["kill_parent_in_scoring"]["alpha"] == "the scoring process was killed while it ran this solution"
    assert "ran longer than" in messages["fork_bomb_in_scoring"]["alpha"] or \
        "BlockingIOError" in messages["fork_bomb_in_scoring"]["alpha"], messages["fork_bomb_in_scoring"]["alpha"]
    assert "killed by signal 9 (out of memory" in messages["memory_hog_in_scoring"]["alpha"] or \
        "scoring process was killed" in messages["memory_hog_in_scoring"]["alpha"]
    assert messages["exits_in_scoring"]["alpha"].startswith("SystemExit: 0")
    # the attacks placed in the kernel leave the scoring untouched: the exercises are simply not solved
    for name in ("patch_checker", "fake_module", "import_hook", "input_transformer", "showtraceback"):
        assert messages[name]["alpha"].startswith("not implemented yet"), (name, messages[name])


def test_grades_csv_is_complete_and_unchanged(attacked):
    paths = attacked["paths"]
    text = (paths["out"] / "grades.csv").read_bytes()
    assert text == attacked["csv"]  # the detached process did not rewrite it
    rows = list(csv.reader(text.decode().splitlines()))
    assert rows[0] == ["student", "alpha", "combine", "why-z", "total", "max"]
    students = [r[0] for r in rows[1:]]
    assert sorted(students) == sorted(attacked["results"]) or \
        sorted(students) == sorted(s if not s.startswith("=") else "'" + s for s in attacked["results"])
    assert "'=HYPERLINK(1+1)" in students and "=HYPERLINK(1+1)" not in students
    assert all(not s.startswith(("=", "+", "-", "@")) for s in students)


def test_nothing_outside_the_sandbox_changed_and_nothing_left_running(attacked):
    import psutil

    for where in attacked["before"]:
        changed = {k for k in attacked["before"][where].keys() | attacked["after"][where].keys()
                   if attacked["before"][where].get(k) != attacked["after"][where].get(k)}
        assert not changed, (where, changed)
    assert not attacked["children"], attacked["children"]
    left = [p.info for p in psutil.process_iter(["pid", "cmdline"]) if MARK in " ".join(p.info["cmdline"] or [])]
    assert not left, left
    assert not Path(f"/tmp/{MARK}-detached").exists() and not Path(f"/tmp/{MARK}-tmp").exists()
    assert not Path(os.path.expanduser(f"~/{MARK}-home")).exists()
    assert attacked["received"] == []  # no sandbox reached the grader's network
    out = attacked["paths"]["out"]
    names = {p.name for p in out.iterdir()}
    graded = {p.stem for p in (out / "results").glob("*.json")}
    assert names == {"grades.csv", "marks-template.csv", "results", "similarity.json", "similarity.html"} | \
        {f"{stem}.html" for stem in graded}
    assert {p.name for p in (out / "results").iterdir()} == \
        {f"{stem}{kind}" for stem in graded for kind in (".json", ".notebooks.html")}


def test_the_sandbox_limits_hold(attacked):
    results, out = attacked["results"], attacked["paths"]["out"]
    notes = {s: " ".join(r.notes) for s, r in results.items()}
    assert "ran out of memory (limit 1.5 GiB)" in notes["memory_hog"]
    assert f"time budget of {BUDGET} s was used up" in notes["sleeper"]
    assert results["sleeper"].seconds < BUDGET + 30
    assert "later figures were left out" in notes["giant_figures"]
    assert (out / "giant_figures.html").stat().st_size < FIGURES_CAP + 200_000
    assert "the kernel died" in notes["kill_group"]  # it killed its own process group: the sandbox's session
    # os.kill(os.getppid(), 9) and killing every visible process reach only the sandbox, whose first process
    # ignores them: the notebook ran on, the grader and the other students are graded (tested above)
    report = " ".join(p.read_text(encoding="utf-8") for p in out.glob("*.html"))
    assert SECRET not in report
    assert "Read-only file system" in (out / "writes_package.html").read_text(encoding="utf-8")
    assert "FileNotFoundError" in (out / "reads_tests_in_kernel.html").read_text(encoding="utf-8")


def test_one_submission_never_costs_the_others(attacked):
    results = attacked["results"]
    alice = results["alice"]
    assert alice.total == 0 and "2 files claim this notebook" in " ".join(alice.notes)
    assert "mallory" not in results  # alice_... inside mallory/ is alice's
    assert "symlink" not in results
    assert results["=HYPERLINK(1+1)"].total == 5
    assert [e.message for e in results["int_grade_id"].exercises][0].startswith("no solution cell alpha-solution")
