"""An infrastructure failure is never a grade (issue 20, item 1): the grader's own environment, tried.

- bubblewrap that cannot create user namespaces, or cannot mount ``/proc`` (a container): simulated by a
  fake ``bwrap`` first on PATH that fails as bubblewrap does there; grading refuses in one line with
  bubblewrap's own message and how to fix it, exit status 2, nothing written;
- a sandbox that fails during the run (after the preflight): that student is "not graded" with the cause,
  never 0, listed at the end, exit status 3; the same command run again grades them;
- the grader run through a virtual environment reached by a symbolic link (``venv-link/bin/python``), from
  another folder: the instructor's notebook earns full marks (it earned 0 / 41: "bwrap: execvp
  .../venv-link/bin/python");
- SIGTERM stops that run cleanly: the student graded is kept, no sandbox, cgroup or folder is left;
- a non-root user created with ``useradd`` (no delegated cgroup), through a Python whose packages come from a
  ``.pth`` file, from its own folder: full marks, and nothing said but the missing cgroup.

Three short sandboxed runs in all (one student each).
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest

from nbformat.v4 import new_code_cell

from gradinglab import NOTEBOOK, variant, write_lab
from labutils.cli import main
from labutils.instructor import sandbox

pytestmark = pytest.mark.skipif(not sandbox.bwrap_works(), reason="needs bubblewrap (apt-get install bubblewrap)")
TESTS = Path(__file__).resolve().parent
NO_USERNS = ("bwrap: No permissions to create new namespace, likely because the kernel does not allow "
             "non-privileged user namespaces. On e.g. debian this can be enabled with "
             "'sysctl kernel.unprivileged_userns_clone=1'.")
NO_PROC = "bwrap: Can't mount proc on /newroot/proc: Operation not permitted"


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    return write_lab(tmp_path_factory.mktemp("tinylab") / "instructor")


@pytest.fixture()
def teacher(lab, tmp_path) -> Path:
    (tmp_path / "subs" / "teacher").mkdir(parents=True)
    shutil.copy(lab / NOTEBOOK, tmp_path / "subs" / "teacher" / NOTEBOOK)
    return tmp_path / "subs"


def fake_bwrap(folder: Path, script: str) -> str:
    """A folder whose ``bwrap`` runs ``script`` (sh), to put first on PATH."""
    folder.mkdir(exist_ok=True)
    (folder / "bwrap").write_text(f"#!/bin/sh\n{script}\n", encoding="utf-8")
    (folder / "bwrap").chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


@pytest.mark.parametrize("said, fix", [(NO_USERNS, "unprivileged user namespaces are off here"),
                                       (NO_PROC, "cannot mount a fresh /proc")], ids=["no-userns", "no-proc"])
def test_a_sandbox_that_cannot_start_stops_grading_in_one_line(said, fix, lab, teacher, tmp_path, monkeypatch,
                                                                capsys):
    real = shutil.which("bwrap")
    script = f"echo \"{said}\" >&2; exit 1" if said == NO_USERNS else \
        f'for a; do [ "$a" = --proc ] && {{ echo "{said}" >&2; exit 1; }}; done; exec {real} "$@"'
    monkeypatch.setenv("PATH", fake_bwrap(tmp_path / "bin", script))
    monkeypatch.setattr("labutils.instructor.grading.default_registry", lambda: __import__("gradinglab").EXERCISES)
    out = tmp_path / "grades"
    assert main(["grade", str(teacher), "--notebooks", str(lab), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err and fix in err, err
    assert not out.exists()  # nothing written


def leftovers(pid: int) -> list[str]:
    """What grader ``pid`` left behind: kernel folders in /dev/shm and /tmp, scoring folders, cgroups."""
    found = [str(p) for folder in ("/dev/shm", "/tmp") for p in Path(folder).glob(f"labutils-*-{pid}-*")]
    found += [str(p) for p in Path("/sys/fs/cgroup").glob(f"**/labutils-grade-{pid}-*")]
    return found


def test_a_failure_during_the_run_is_not_a_grade_and_a_rerun_through_a_symlinked_venv_grades(lab, teacher,
                                                                                           tmp_path, monkeypatch,
                                                                                           capsys):
    real = shutil.which("bwrap")
    count = tmp_path / "kernels"
    variant(lab / NOTEBOOK, teacher / f"zloop_{NOTEBOOK}", lambda nb: nb.cells.insert(3, new_code_cell(
        "while True:\n    pass")))
    # kernels after the preflight's fail as bubblewrap fails in a container; everything else is the real bwrap
    script = (f'case "$*" in *ipykernel_launcher*) echo x >> {count}; '
              f'[ "$(wc -l < {count})" -gt 1 ] && {{ echo "{NO_PROC}" >&2; exit 1; }};; esac; exec {real} "$@"')
    monkeypatch.setenv("PATH", fake_bwrap(tmp_path / "bin", script))
    monkeypatch.setattr("labutils.instructor.grading.default_registry", lambda: __import__("gradinglab").EXERCISES)
    out = tmp_path / "grades"
    assert main(["grade", str(teacher), "--notebooks", str(lab), "--out", str(out), "--timeout", "60"]) == 3
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith(("not graded", "error"))]
    assert len(lines) == 3 and "run the same command again" in lines[-1], captured.err
    for line, student in zip(lines, ("teacher", "zloop")):
        assert line.startswith(f"not graded: {student}: 01_tiny.ipynb: the kernel did not start") \
            and NO_PROC in line, captured.err
    rows = list(csv.reader((out / "grades.csv").open(encoding="utf-8")))
    assert rows == [["student", "total", "max"]]  # no 0 for anyone
    assert not list((out / "results").glob("*.json")) and not [p for p in out.glob("*.html")
                                                               if p.name != "similarity.html"]  # no report

    link = tmp_path / "venv-link"  # the same environment, through a symbolic link, from another folder
    link.symlink_to(Path(sys.prefix))
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); import gradinglab\n"
            "import labutils.instructor.grading as grading; grading.default_registry = lambda: gradinglab.EXERCISES\n"
            "from labutils.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["PATH"] = os.environ["PATH"].split(os.pathsep, 1)[1]  # the real bwrap again
    rerun = subprocess.Popen([str(link / "bin" / "python"), "-c", code, str(TESTS), "grade", str(teacher),
                              "--notebooks", str(lab), "--out", str(out), "--timeout", "60"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    try:
        deadline = time.monotonic() + 400
        while not (out / "results" / "teacher.json").exists() or \
                not any("labutils-kernel-" in p for p in leftovers(rerun.pid)):
            assert rerun.poll() is None and time.monotonic() < deadline, rerun.communicate()
            time.sleep(0.5)  # the teacher graded, zloop's kernel running its endless cell
        time.sleep(3)
        rerun.send_signal(signal.SIGTERM)
        stdout, stderr = rerun.communicate(timeout=60)
    finally:
        rerun.kill()
    assert rerun.returncode == 2 and stderr.strip().splitlines()[-1].startswith("error: stopped by SIGTERM: the 1 "
                                                                                "student(s) graded so far"), stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr and "Unknown child" not in stderr, stderr
    assert leftovers(rerun.pid) == []
    rows = {row[0]: row for row in csv.reader((out / "grades.csv").open(encoding="utf-8"))}
    assert sorted(rows) == ["student", "teacher"] and rows["teacher"][1:3] == ["2", "3"]  # full marks, kept
    assert "5 / 7 points" in (out / "teacher.html").read_text(encoding="utf-8")



@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_the_preflight_stops_in_one_line_and_leaves_nothing(sig, lab, teacher, tmp_path):
    out = tmp_path / "grades"
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); import gradinglab\n"
            "import labutils.instructor.grading as grading; grading.default_registry = lambda: gradinglab.EXERCISES\n"
            "from labutils.cli import main; sys.exit(main(sys.argv[1:]))")
    run = subprocess.Popen([sys.executable, "-c", code, str(TESTS), "grade", str(teacher), "--notebooks", str(lab),
                            "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not any("labutils-kernel-" in p for p in leftovers(run.pid)):  # the preflight's kernel is starting
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            time.sleep(0.05)
        run.send_signal(sig)
        stdout, stderr = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 2 and stderr.strip() == f"error: stopped by {sig.name} during the preflight: nothing " \
                                                     "was graded or written", stderr
    assert not out.exists() and leftovers(run.pid) == []


SYSTEM_PYTHON = Path("/usr/bin/python3")


def _same_python(python: Path) -> bool:
    """Whether ``python`` is a CPython of this one's version: the environment's compiled packages load in it."""
    try:
        said = subprocess.run([str(python), "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                              text=True, timeout=30).stdout.strip()
    except OSError:
        return False
    return said == str(tuple(sys.version_info[:2]))


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("useradd") or not _same_python(SYSTEM_PYTHON),
                    reason="needs root, useradd and a system Python of this version (CI has them)")
def test_a_non_root_user_without_cgroups_grades_through_a_pth_environment(lab):
    """A user created here (no delegated cgroup, no access to /root) grades with another Python whose packages
    are reached through a ``.pth`` file (``site.addsitedir``, as conda and some hubs lay them out), from its own
    folder: the preflight passes (kernel and scorers), the instructor's notebook earns full marks, and the run
    says nothing but the missing cgroup."""
    user = f"labgrade{os.getpid() % 100000}"
    home = Path(tempfile.mkdtemp(prefix="gradinguser-"))
    subprocess.run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/usr/sbin/nologin", user],
                   check=True)
    try:
        subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", "--without-pip", str(home / "env")], check=True)
        site = next((home / "env" / "lib").glob("python3*/site-packages"))
        (site / "lab.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n",
                                      encoding="utf-8")
        shutil.copytree(lab, home / "instructor")
        (home / "subs" / "teacher").mkdir(parents=True)
        shutil.copy(lab / NOTEBOOK, home / "subs" / "teacher" / NOTEBOOK)
        subprocess.run(["chown", "-R", f"{user}:", str(home)], check=True)
        home.chmod(0o755)
        code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); import gradinglab\n"
                "import labutils.instructor.grading as grading; grading.default_registry = lambda: gradinglab.EXERCISES\n"
                "from labutils.cli import main; sys.exit(main(sys.argv[1:]))")
        env = ["env", "-i", "PATH=/usr/bin:/bin", f"HOME={home}", "LABUTILS_WEIGHTS=random",
               f"LABUTILS_DATA={os.environ.get('LABUTILS_DATA', '')}"]
        done = subprocess.run(["runuser", "-u", user, "--", *env, str(home / "env" / "bin" / "python"), "-c", code,
                               str(TESTS), "grade", "subs", "--notebooks", "instructor", "--out", "grades",
                               "--timeout", "60"], capture_output=True, text=True, cwd=home, timeout=600)
        assert done.returncode == 0, done.stderr
        said = [line for line in done.stderr.splitlines() if not line.startswith(("grading", "graded"))]
        assert said and "no writable cgroup here" in said[0] and "Traceback" not in done.stderr, done.stderr
        rows = {row[0]: row for row in csv.reader((home / "grades" / "grades.csv").open(encoding="utf-8"))}
        assert rows["teacher"][1:3] == ["2", "3"], rows  # the exercises' full marks (the question is marked by hand)
        assert (home / "grades" / "teacher.html").stat().st_uid != 0  # written by that user, not by root
    finally:
        subprocess.run(["pkill", "-KILL", "-u", user], check=False)
        subprocess.run(["userdel", user], check=False)
        shutil.rmtree(home, ignore_errors=True)
