"""A class graded in shards through a real Slurm equals the one-machine run (issue 21, item 3).

The test starts a single-node Slurm of its own (tests/slurmnode.py: its own munge key and socket, its
own ports, no cgroup plugin), submits the lab's ``submit-slurm.sh`` exactly as an instructor would
(a job array of 3 shards, then the merge as a job that depends on it), waits for the merge, compares
its output with one run on one machine, and stops every daemon it started. It runs where Slurm can be
started (root, ``slurm-wlm`` and ``munge`` installed: ``.ci/run`` installs them) and is skipped, with
the reason, anywhere else.

What stands in: the small synthetic lab of tests/gradinglab.py instead of the real one (grading with
``--no-execute`` keeps it to seconds). The jobs run ``$LABUTILS_PYTHON -m labutils grade ...``; the
Python given here is a three-line shim that points the grader at that lab's exercise registry before
calling the same command line.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import slurmnode
from gradinglab import EXERCISES, NOTEBOOK, cell, variant, write_lab
from labutils.cli import main
from labutils.instructor import sandbox
from labutils.instructor.cluster import FOLDER, copy_to
from labutils.instructor.student import make_student_versions

why = slurmnode.missing() or (None if sandbox.bwrap_works() else "needs bubblewrap (apt-get install bubblewrap)")
pytestmark = pytest.mark.skipif(why is not None, reason=f"a real Slurm cannot be started here: {why}")
SHIM = """#!{python}
import sys
sys.path.insert(0, {tests!r})
import gradinglab, labutils.instructor.grading as grading
grading.default_registry = lambda: gradinglab.EXERCISES  # the small lab's exercises, not the real lab's
from labutils.cli import main
assert sys.argv[1:3] == ["-m", "labutils"], sys.argv
sys.exit(main(sys.argv[3:]))
"""


def without_timing(text: str) -> dict:
    data = json.loads(text)
    data.pop("seconds")
    for e in data["exercises"]:  # the cases drawn for grading are fresh in every run
        e["message"] = re.sub(r" — on .* \(drawn for grading\)$", " — on (a drawn case)", e["message"])
    return data


def a_class(folder: Path) -> tuple[Path, Path]:
    """The instructor's folder and 9 submissions: right, blank and wrong answers, one folder per student."""
    lab = write_lab(folder / "instructor")
    handout = make_student_versions([lab / NOTEBOOK], folder / "handout")[0]
    subs = folder / "submissions"

    def wrong(nb):
        source = cell(nb, "alpha-solution").source
        cell(nb, "alpha-solution").source = source.replace("raise NotImplementedError()", "return gradients.sum()")

    for n in range(9):
        source = (lab / NOTEBOOK, handout, handout)[n % 3]
        variant(source, subs / f"student{n}" / NOTEBOOK, wrong if n % 3 == 2 else (lambda nb: None))
    return lab, subs


def test_the_cluster_scripts_ship_with_the_package(tmp_path):
    copied = copy_to(tmp_path / "scripts")
    assert sorted(p.name for p in copied) == sorted(p.name for p in FOLDER.iterdir()
                                                    if p.suffix in (".sh", ".sbatch", ".yaml"))
    assert all(os.access(p, os.X_OK) for p in copied if p.suffix in (".sh", ".sbatch"))
    for script in ("submit-slurm.sh", "grade.sbatch", "merge.sbatch"):
        assert subprocess.run(["bash", "-n", str(FOLDER / script)]).returncode == 0
    yaml = pytest.importorskip("yaml")
    (grade,) = yaml.safe_load_all((FOLDER / "grade-indexed-job.yaml").read_text())
    (merge,) = yaml.safe_load_all((FOLDER / "merge-job.yaml").read_text())
    assert grade["kind"] == merge["kind"] == "Job" and grade["spec"]["completionMode"] == "Indexed"
    container = grade["spec"]["template"]["spec"]["containers"][0]
    shards = {e["name"]: e["value"] for e in container["env"]}["SHARDS"]
    assert int(shards) == grade["spec"]["completions"]  # the pods' N is the Job's
    assert '--shard "$i/$SHARDS"' in container["args"][0] and "JOB_COMPLETION_INDEX + 1" in container["args"][0]
    assert "--merge /class/grades/shards/*" in merge["spec"]["template"]["spec"]["containers"][0]["args"][0]


def test_a_class_graded_in_shards_through_slurm_equals_the_one_machine_run(tmp_path, monkeypatch, capsys):
    lab, subs = a_class(tmp_path)
    one = tmp_path / "one"
    monkeypatch.setattr("labutils.instructor.grading.default_registry", lambda: EXERCISES)
    assert main(["grade", str(subs), "--notebooks", str(lab), "--no-execute", "--out", str(one), "--feedback"]) == 0
    capsys.readouterr()
    shim = tmp_path / "python"
    shim.write_text(SHIM.format(python=sys.executable, tests=str(Path(__file__).parent)), encoding="utf-8")
    shim.chmod(0o755)
    out = tmp_path / "grades"
    with slurmnode.slurm_cluster() as env:
        env = {**env, "LABUTILS_PYTHON": str(shim), "LABUTILS_MERGE_ARGS": "--feedback", "LABUTILS_WEIGHTS": "random"}
        submitted = subprocess.run([str(FOLDER / "submit-slurm.sh"), "--wait", "3", str(out), str(subs),
                                    "--notebooks", str(lab), "--no-execute"], env=env, cwd=tmp_path,
                                   capture_output=True, text=True, timeout=300)
        logs = {p.name: p.read_text(errors="replace")[-1500:] for p in (out / "logs").glob("*.log")}
        assert submitted.returncode == 0, (submitted.stdout, submitted.stderr, logs)
    assert re.search(r"grading: job \d+ \(3 array tasks\)\nmerging: job \d+ \(after \d+\)", submitted.stdout)
    assert sorted(re.sub(r"\d+_", "", name) for name in logs if name.startswith("grade-")) == \
           ["grade-0.log", "grade-1.log", "grade-2.log"]  # one log per array task
    assert [re.fullmatch(r"merge-\d+\.log", name) is not None for name in logs].count(True) == 1
    assert all(re.search(r"grading: \d+/\d+ students done", text) for name, text in logs.items()
               if name.startswith("grade-"))  # the progress, as plain lines in a log
    held = [json.loads((out / "shards" / str(i) / "shard.json").read_text())["students"] for i in (1, 2, 3)]
    assert sorted(sum(held, [])) == [f"student{n}" for n in range(9)]
    assert (out / "grades.csv").read_bytes() == (one / "grades.csv").read_bytes()
    assert (out / "marks-template.csv").read_bytes() == (one / "marks-template.csv").read_bytes()
    assert (out / "similarity.json").read_bytes() == (one / "similarity.json").read_bytes()  # pairs across shards
    names = sorted(p.name for p in (one / "results").iterdir())
    assert sorted(p.name for p in (out / "results").iterdir()) == names
    assert len([n for n in names if n.endswith(".json")]) == 9
    for name in names:  # the results (timing aside), and the notebooks' part of each report (as written)
        mine, theirs = (out / "results" / name).read_text(), (one / "results" / name).read_text()
        assert (without_timing(mine) == without_timing(theirs)) if name.endswith(".json") else mine == theirs, name
    assert sorted(p.name for p in (out / "feedback").iterdir()) == sorted(p.name for p in (one / "feedback").iterdir())
    rows = {row[0]: row[1:] for row in csv.reader((out / "grades.csv").open(encoding="utf-8"))}
    assert rows["student0"][:2] == ["2", "3"] and rows["student1"][:2] == ["0", "0"] and rows["student2"][0] == "0"
