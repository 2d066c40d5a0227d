"""What grading finds, as records: one exercise, one written answer, one student, one notebook's run.

:class:`GradeResult` is what ``results/<student>.json`` holds (:mod:`labutils.instructor.export`);
:class:`Run` is one submitted notebook after execution (:mod:`labutils.instructor.execute`) and scoring
(:mod:`labutils.instructor.scoring`), what the report (:mod:`labutils.instructor.report`) shows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import nbformat

from ..errors import LabError

if TYPE_CHECKING:
    from .similarity import Match


@dataclass
class Verdict:
    """What scoring one exercise of one submission found (:mod:`labutils.instructor.scoring`)."""

    passed: bool
    message: str  # "PASS: ..." or the one line that says why not
    cases: int = 0
    infrastructure: bool = False  # the grader's side failed (no scoring process...): not the student's doing


@dataclass
class ExerciseResult:
    """One exercise of one submission: what scoring found and the points it earned."""

    grade_id: str
    notebook: str
    points: float
    max_points: float
    passed: bool
    message: str  # the PASS line, or the one line that says why not
    copied: bool = False  # flagged by the copy check (labutils.instructor.similarity): the instructor judges
    similarity: float = 0.0  # share of the closest reference's fingerprints found in the solution, 0..1
    similar_to: str = ""  # that reference
    solution: str = ""  # the solution cell's code (for the class's similar pairs)


@dataclass
class QuestionResult:
    """One written (manually graded) answer: the student's text next to the mark scheme."""

    grade_id: str
    notebook: str
    max_points: float
    answer: str
    scheme: str
    points: Optional[float] = None  # from the marks CSV
    marked_at: Optional[str] = None  # the marks file (its full path) and line that gave ``points``


@dataclass
class GradeResult:
    """One student's graded lab."""

    student: str
    exercises: list[ExerciseResult]
    report: Path
    notes: list[str] = field(default_factory=list)  # what happened beyond the exercises (timeouts, crashes...)
    seconds: float = 0.0  # wall time spent on this student's notebooks
    questions: list[QuestionResult] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(e.points for e in self.exercises) + sum(q.points or 0.0 for q in self.questions)

    @property
    def max_points(self) -> float:
        return sum(e.max_points for e in self.exercises) + sum(q.max_points for q in self.questions)

    def to_json(self) -> dict:
        return {"student": self.student, "exercises": [asdict(e) for e in self.exercises],
                "questions": [asdict(q) for q in self.questions], "report": self.report.name, "notes": self.notes,
                "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: dict, folder: Path) -> "GradeResult":
        return cls(str(data["student"]), [ExerciseResult(**e) for e in data["exercises"]],
                   folder / Path(str(data["report"])).name, list(data.get("notes", [])),
                   float(data.get("seconds", 0.0)), [QuestionResult(**q) for q in data.get("questions", [])])



@dataclass
class Run:
    """One submitted notebook after execution and scoring."""

    notebook: str
    nb: nbformat.NotebookNode | None
    notes: list[str] = field(default_factory=list)
    timed_out: set[int] = field(default_factory=set)
    not_run: dict[int, str] = field(default_factory=dict)  # cell index -> why it did not run
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    similar: dict[str, Match] = field(default_factory=dict)  # exercise -> the closest reference (copy check)
    solutions: dict[str, str] = field(default_factory=dict)  # exercise -> the solution cell's code
    answers: dict[str, str] = field(default_factory=dict)  # question grade_id -> the student's cell
    infrastructure: list[str] = field(default_factory=list)  # the grader's failures: not graded
    seconds: float = 0.0
    submitted: Any = None  # --no-execute: the submitted file, whose outputs the report shows as data



def _points(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


class NotGraded(LabError):
    """Some students could not be graded for a reason that is not their code (the sandbox, a kernel, a
    scoring process): they are not in grades.csv, and a re-run grades them."""

    def __init__(self, results: list[GradeResult], causes: dict[str, str]) -> None:
        self.results, self.causes = results, causes
        first = next(iter(causes))
        super().__init__(f"{len(causes)} student(s) not graded, e.g. {first}: {causes[first]}; fix the cause "
                         "and run the same command again to grade them")
