"""Shards of a class, and the merge of their outputs: one class graded on several machines.

    python -m labutils grade submissions/ --shard 2/4 --out grades/shards/2     # on each of 4 machines
    python -m labutils grade --merge grades/shards/* --out grades/             # then once

**Which students a shard grades.** Student ``s`` is in shard ``1 + H(s) mod N``, where ``H`` is the first
8 bytes of the SHA-256 of the student id (a stable hash: Python's ``hash()`` changes with every process).
It depends on the id alone, so a student is in the same shard whatever the order of the files, on every
machine, and a shard that is run again grades the same students. Each shard writes ``shard.json``
(its place, ``I`` of ``N``, and its students) beside its results.

**The merge** reads the ``results/`` of each folder, checks everything, then writes the class's
``grades.csv``, ``marks-template.csv``, ``results/``, the reports, the class's similar pairs
(``similarity.json``/``.html``, found across the shards) and ``feedback/`` if asked, into
``--out``, exactly as one run over the whole class would have. It refuses, naming what to fix:

- shards of different splits (``2/4`` beside ``1/3``), a shard given twice, a shard missing;
- folders graded against different labs (exercises, questions or points that differ);
- a student graded differently in two folders. The rules are those of merging marks, per cell: an
  exercise's points and verdict must agree (its message may differ: the cases drawn for grading are fresh
  each time); a written answer must be the same text, and a mark given in one folder only is kept (two
  different marks are a conflict); an exercise that was not graded in one folder takes the verdict of
  the folder where it was.

Results already in ``--out`` (an earlier merge, marks merged since) take part like one more folder, so
merging again after ``--marks`` keeps the marks.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from ..errors import LabError
from .export import _write_text, load_results, write_csv, write_marks_template, write_similarity
from .report import report_page
from .results import GradeResult

MARKER = "shard.json"


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N), with 1 <= I <= N; one clear error otherwise."""
    index, _, count = str(text).partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i = n = 0
    if not 1 <= i <= n:
        raise LabError(f"--shard {text}: give I/N with 1 <= I <= N, e.g. --shard 2/4 for the second of 4 shards")
    return i, n


def shard_of(student: str, count: int) -> int:
    """The shard (1..count) that grades ``student``: a stable hash of the id, whatever the order of the files."""
    digest = hashlib.sha256(student.encode("utf-8", "surrogatepass")).digest()
    return 1 + int.from_bytes(digest[:8], "big") % count


def in_shard(students: list[str], shard: tuple[int, int]) -> list[str]:
    """The students of ``students`` that shard ``(I, N)`` grades."""
    index, count = shard
    return [s for s in students if shard_of(s, count) == index]


def write_marker(out_dir: Path, shard: tuple[int, int], students: list[str]) -> None:
    """``shard.json``: this folder is shard I of N and holds these students (the merge checks it)."""
    _write_text(Path(out_dir) / MARKER, json.dumps({"shard": shard[0], "of": shard[1],
                                                      "students": sorted(students)}, indent=1))


def _marker(folder: Path) -> tuple[int, int] | None:
    path = folder / MARKER
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        i, n = int(data["shard"]), int(data["of"])
    except (OSError, ValueError, KeyError, TypeError):
        raise LabError(f"{path} is not a marker the grader wrote; grade that shard again") from None
    if not 1 <= i <= n:
        raise LabError(f"{path} says shard {i}/{n}; grade that shard again")
    return i, n


def _check_shards(folders: list[Path]) -> None:
    """All shards of one split, each once, none missing (folders without shard.json are whole runs)."""
    places: dict[tuple[int, int], Path] = {}
    for folder in folders:
        place = _marker(folder)
        if place is None:
            continue
        if place in places:
            raise LabError(f"--merge: {places[place]} and {folder} are both shard {place[0]}/{place[1]}; "
                           "give each shard once")
        places[place] = folder
    splits = sorted({n for _, n in places})
    if len(splits) > 1:
        raise LabError(f"--merge: the folders are shards of different splits ({' and '.join(f'of {n}' for n in splits)}"
                       "); merge the shards of one split")
    if splits:
        missing = sorted(set(range(1, splits[0] + 1)) - {i for i, _ in places})
        if missing:
            raise LabError(f"--merge: shard(s) {', '.join(f'{i}/{splits[0]}' for i in missing)} missing; grade "
                           "them (or wait for their jobs) and merge again")


def _layout(result: GradeResult) -> list[tuple]:
    return [("exercise", e.grade_id, e.notebook, e.max_points) for e in result.exercises] + \
           [("question", q.grade_id, q.notebook, q.max_points) for q in result.questions]


def _not_graded(exercise) -> bool:  # type: ignore[no-untyped-def]
    """An exercise the grader could not judge (the lab's failure, not the student's): issue 20's state."""
    return getattr(exercise, "graded", True) is False


def _merge_student(student: str, first: GradeResult, where: Path, other: GradeResult, there: Path) -> bool:
    """Merge ``other`` into ``first`` cell by cell; True if ``first`` changed. LabError on a conflict."""
    def conflict(what: str) -> LabError:
        return LabError(f"--merge: {student} was graded differently in {where} and {there} ({what}); grade "
                        f"{student} again in one of them (--regrade {student}) or leave one folder out")

    changed = False
    for n, (mine, theirs) in enumerate(zip(first.exercises, other.exercises)):
        if _not_graded(mine) and not _not_graded(theirs):
            first.exercises[n], changed = theirs, True
        elif _not_graded(theirs) or (mine.points, mine.passed, mine.copied) == (theirs.points, theirs.passed,
                                                                                 theirs.copied):
            continue
        else:
            raise conflict(f"exercise {mine.grade_id}: {mine.points:g} against {theirs.points:g} points")
    for mine, theirs in zip(first.questions, other.questions):
        if mine.answer != theirs.answer:
            raise conflict(f"the written answer {mine.grade_id} differs")
        if theirs.points is not None and mine.points is None:
            mine.points, mine.marked_at, changed = theirs.points, theirs.marked_at, True
        elif theirs.points is not None and mine.points != theirs.points:
            raise conflict(f"{mine.grade_id} marked {mine.points:g} and {theirs.points:g}")
    if sorted(other.notes) != sorted(first.notes):
        first.notes += [note for note in other.notes if note not in first.notes]
        changed = True
    return changed


def merge(folders: list[Path], out_dir: Path, feedback: bool = False) -> list[GradeResult]:
    """Merge the graded folders (shards) into ``out_dir``: results, reports, grades.csv, marks template.

    Everything is read and checked before anything is written; see the module's docstring for the rules.
    """
    out_dir = Path(out_dir)
    folders = [Path(f) for f in folders]
    if not folders:
        raise LabError("--merge: give the folders to merge (the shards' --out folders)")
    for folder in folders:
        if not (folder / "results").is_dir():
            raise LabError(f"--merge: {folder} holds no results/ folder; give the --out folders of the shards")
        if folder.resolve() == out_dir.resolve():
            raise LabError(f"--merge: {folder} is also --out; write the merge into another folder")
    _check_shards(folders)
    sources = ([out_dir] if (out_dir / "results").is_dir() else []) + folders
    merged: dict[str, GradeResult] = {}
    origin: dict[str, Path] = {}
    changed: set[str] = set()
    layout = None
    for folder in sources:
        for student, result in load_results(folder).items():
            if layout is None:
                layout = (_layout(result), folder)
            elif _layout(result) != layout[0]:
                raise LabError(f"--merge: {folder} and {layout[1]} were graded against different labs (exercises, "
                               "questions or points differ); grade every shard with the same instructor's notebooks")
            if student not in merged:
                merged[student], origin[student] = result, folder
            elif _merge_student(student, merged[student], origin[student], result, folder):
                changed.add(student)
    if not merged:
        raise LabError(f"--merge: no graded student in {', '.join(map(str, folders))}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results").mkdir(exist_ok=True)
    for student, result in sorted(merged.items()):
        source, name = origin[student], result.report.stem
        json_path = out_dir / "results" / f"{name}.json"
        if student in changed:
            _write_text(json_path, json.dumps(result.to_json(), indent=1))
        elif source != out_dir:  # the shard's own bytes: exactly what one run writes
            _write_text(json_path, (source / "results" / f"{name}.json").read_text(encoding="utf-8"))
        kept = source / "results" / f"{name}.notebooks.html"  # the notebooks' part of the report
        if source != out_dir and kept.is_file():
            shutil.copyfile(kept, out_dir / "results" / kept.name)
        report = source / f"{name}.html"
        if source != out_dir and report.is_file():
            shutil.copyfile(report, out_dir / f"{name}.html")
        result.report = out_dir / f"{name}.html"
        if student in changed and kept.is_file():  # a mark merged in: the report says what grades.csv says
            _write_text(result.report, report_page(result, kept.read_text(encoding="utf-8")))
    results = [merged[s] for s in sorted(merged)]
    write_csv(results, out_dir / "grades.csv")
    write_marks_template(results, out_dir / "marks-template.csv")
    write_similarity(results, out_dir)  # the class's similar pairs: across shards, as one run finds them
    if feedback:
        from .feedback import write_feedback

        write_feedback(results, out_dir)
    return results

