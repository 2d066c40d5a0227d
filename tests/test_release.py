"""python -m labutils release: the students' copy holds no answer, ships no grader, says its version.

The leak check (``release.leaks``) is the test of issue 19: every solution function of the instructor's
notebooks, normalised (names, comments, docstrings, formatting), against every function in the release's
notebooks and in its files outside the package; every mark scheme's text against every file. It is shown
to find planted leaks (a renamed, re-commented, re-formatted solution; a mark-scheme line in the README; the
grader's package), so that its silence on the real release means something.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest

from labutils.instructor import release
from labutils.instructor.release import leaks, make_release, notebook_release
from labutils.instructor.student import default_notebooks

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("release") / "lab"
    return out, make_release(out)


def test_release_holds_the_students_side_only(made):
    out, version = made
    names = sorted(p.name for p in (out / "notebooks").glob("*.ipynb"))
    assert names == [p.name for p in default_notebooks()]
    assert not (out / "labutils" / "instructor").exists()
    shipped = {str(p.relative_to(out / "labutils")) for p in (out / "labutils").rglob("*") if p.is_file()}
    assert {"manifest/SOURCES.md", "manifest/SHA256SUMS", "checks/__init__.py", "gradcam.py", "handin.py"} <= shipped
    assert not any(s.startswith("instructor") or s.endswith(".pyc") for s in shipped)
    for name in ("README.md", "pyproject.toml", "binder/requirements.txt", "binder/postBuild", ".gitignore"):
        assert (out / name).is_file(), name
    text = json.dumps([nbformat.read(p, as_version=4) for p in sorted((out / "notebooks").glob("*.ipynb"))])
    assert "BEGIN SOLUTION" not in text and "MARK SCHEME" not in text


def test_release_version_is_in_every_notebook_and_the_package(made):
    out, version = made
    package_version, digest = version.split("+")
    assert package_version == release.project_metadata()["version"] and len(digest) == 10
    for path in sorted((out / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert notebook_release(nb) == version, path.name
        first = nb.cells[0]
        assert first.cell_type == "code" and first.metadata["labutils"] == {"setup": True}
        assert f"LAB_RELEASE = {version!r}" in first.source
    assert f'version = "{version}"' in (out / "pyproject.toml").read_text()


def test_same_sources_same_version_another_install_source_same_version(made, tmp_path):
    _, version = made
    assert make_release(tmp_path / "again", install_from="git+https://example.org/lab.git@v1") == version
    first = nbformat.read(tmp_path / "again" / "notebooks" / "03_gradcam_math.ipynb", as_version=4).cells[0]
    assert "LAB_INSTALL_FROM = 'git+https://example.org/lab.git@v1'" in first.source


def test_a_changed_notebook_is_another_release(tmp_path):
    changed = tmp_path / "nbs"
    changed.mkdir()
    for path in default_notebooks():
        nb = nbformat.read(path, as_version=4)
        if path.name.startswith("01"):
            nb.cells[0].source += "\n\nOne more sentence."
        nbformat.write(nb, changed / path.name)
    stripped = {p.name: release.student_version(nbformat.read(p, as_version=4), p.name)
                for p in sorted(changed.glob("*.ipynb"))}
    original = {p.name: release.student_version(nbformat.read(p, as_version=4), p.name) for p in default_notebooks()}
    assert release.release_version(stripped) != release.release_version(original)


def test_the_release_leaks_nothing(made):
    out, _ = made
    assert leaks(out, default_notebooks()) == []


def test_the_leak_check_finds_planted_leaks(made, tmp_path):
    out, _ = made
    planted = tmp_path / "planted"
    subprocess.run(["cp", "-r", str(out), str(planted)], check=True)
    # a solution, renamed, re-commented, re-formatted, without its docstring, pasted into a release notebook
    nb03 = nbformat.read(REPO / "notebooks" / "03_gradcam_math.ipynb", as_version=4)
    solution = next(c.source for c in nb03.cells if c.get("metadata", {}).get("nbgrader", {}).get("grade_id")
                    == "alpha-solution")
    import ast

    tree = ast.parse(solution)
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef))
    function.name = "helper"
    for arg in function.args.args:
        old = arg.arg
        arg.arg = "g_" + old
        for node in ast.walk(function):
            if isinstance(node, ast.Name) and node.id == old:
                node.id = "g_" + old
    function.body = function.body[1:]  # no docstring
    disguised = "# a small helper\n" + ast.unparse(function).replace("(", "( ")
    target = planted / "notebooks" / "05_results.ipynb"
    nb = nbformat.read(target, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(disguised))
    nbformat.write(nb, target)
    # the same solution as a .py file beside the notebooks; a mark-scheme line in the README; the grader
    (planted / "tools.py").write_text(solution)
    scheme = next(iter(release.mark_schemes([REPO / "notebooks" / "06_can_you_trust_the_map.ipynb"])))
    line = max(scheme.split("\n"), key=len)
    with open(planted / "README.md", "a") as readme:
        readme.write("\n" + "  ".join(line.split()) + "\n")
    (planted / "labutils" / "instructor").mkdir()
    (planted / "labutils" / "instructor" / "grading.py").write_text("# the grader\n")
    found = leaks(planted, default_notebooks())
    assert any(f.startswith("notebooks/05_results.ipynb: def helper is the solution of 03_gradcam_math.ipynb")
               for f in found), found
    assert any(f.startswith("tools.py: def my_alpha is the solution of 03_gradcam_math.ipynb") for f in found), found
    assert any(f.startswith("README.md: holds mark-scheme text of 06_can_you_trust_the_map.ipynb") for f in found)
    assert any("instructor's package is in the release" in f for f in found), found


def test_every_solution_and_scheme_is_looked_for():
    solutions = release.solution_functions(default_notebooks())
    schemes = release.mark_schemes(default_notebooks())
    assert len(schemes) == 10  # the ten written questions
    where = " ".join(solutions.values())
    for name in ("my_layer_cost", "my_capture", "my_alpha", "my_combine", "my_postprocess", "my_gradcam",
                 "my_layer_sweep", "my_cam", "my_guided_relu", "my_guided_gradcam", "my_counterfactual",
                 "my_overlay", "my_pointing_game"):
        assert f"def {name}" in where, name


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labutils", *args], capture_output=True, text=True, cwd=cwd)


def test_release_refuses_a_folder_in_use_and_a_missing_install_source(made, tmp_path):
    out, _ = made
    done = run_cli("release", "--out", str(out))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "exists and is not an empty folder" in done.stderr
    done = run_cli("release", "--out", str(tmp_path / "new"), "--install-from", str(tmp_path / "no.whl"))
    assert done.returncode == 2 and "no such file or folder" in done.stderr and done.stderr.count("\n") == 1
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary folder left behind


def test_handin_check_reruns_the_saved_exercises(made, tmp_path):
    out, version = made
    alice = tmp_path / "alice"
    alice.mkdir()
    solved = nbformat.read(REPO / "notebooks" / "06_can_you_trust_the_map.ipynb", as_version=4)
    nbformat.write(solved, alice / "06_can_you_trust_the_map.ipynb")  # solved: instructor's cells
    started = nbformat.read(out / "notebooks" / "03_gradcam_math.ipynb", as_version=4)
    nbformat.write(started, tmp_path / "alice_03_gradcam_math.ipynb")  # as released: nothing written yet
    nbformat.write(started, tmp_path / "03_gradcam_math_bob.ipynb")  # a name the grader cannot match
    lines = []
    status = release_handin([alice, tmp_path / "alice_03_gradcam_math.ipynb", tmp_path / "03_gradcam_math_bob.ipynb"],
                            lines)
    text = "\n".join(lines)
    assert status == 1
    assert "the grader takes it for student 'alice', notebook 06_can_you_trust_the_map.ipynb" in text
    assert "  PASS: pointing_game" in text
    assert "  FAIL: alpha: not implemented yet" in text and "  FAIL: cam: not implemented yet" in text
    assert "unanswered question(s): q_one_over_z, q_predict_layer" in text
    assert "03_gradcam_math_bob.ipynb: no graded exercise or question in it" in text
    assert "not among the files: 01_architectures.ipynb, 02_hooks.ipynb, 04_guided_and_counterfactual.ipynb" in text
    assert "different releases of the lab" in text  # the instructor's 06 carries no release
    assert "Exercises: 1 of 7 pass." in text


def release_handin(items: list[Path], lines: list[str]) -> int:
    from labutils.handin import handin_check

    return handin_check(items, student="alice", out=lines.append)


def test_the_grader_reads_the_release_back_and_notes_another_one(made, tmp_path, monkeypatch):
    import asyncio

    from labutils.instructor import grading

    out, version = made
    assert release.current_release(REPO / "notebooks") == version  # what the grader expects: this release
    ours = nbformat.read(out / "notebooks" / "03_gradcam_math.ipynb", as_version=4)
    older = nbformat.from_dict(ours)
    older.metadata["labutils"]["release"] = "0.0.9+0123456789"
    handout = release.student_version(nbformat.read(REPO / "notebooks" / "03_gradcam_math.ipynb", as_version=4))
    assert release.release_note(ours, version) is None
    assert release.release_note(handout, version) is None  # `student` handouts carry no release: nothing to say
    note = release.release_note(older, version)
    assert note.startswith(f"made from release 0.0.9+0123456789, not the current release {version}")

    async def nothing(*args, **kw):  # the wiring only: no kernel, no scoring
        return None

    monkeypatch.setattr(grading, "execute", nothing)
    monkeypatch.setattr(grading, "score_notebook", nothing)
    notes = {}
    for label, nb in (("ours", ours), ("older", older)):
        path = tmp_path / f"{label}_03_gradcam_math.ipynb"
        nbformat.write(nb, path)
        nothing_to_score = types.SimpleNamespace(exercises=[], questions=[])  # the note is what this test reads
        run = asyncio.run(grading.grade_notebook("03_gradcam_math.ipynb", [path], nothing_to_score,
                                                 types.SimpleNamespace(execute=False), None, version))
        notes[label] = run.notes
    assert notes == {"ours": [], "older": [note]}
