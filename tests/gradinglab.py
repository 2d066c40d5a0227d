"""A small synthetic lab for the grading tests: one instructor notebook, two exercises and a written question.

The exercises are real ones in miniature: ``my_alpha`` (equation (1), reference
``labutils.equations:alpha_weights``) and ``my_combine`` (equation (2), reference
``labutils.equations:combine``). Their cases and diagnoses follow the contract of
``labutils.exercise``: fixed cases students see, fresh ones drawn by the grader, and a diagnosis
computed in the grader's process from the reference. The notebook imports only torch, so a
sandboxed kernel runs it in a few seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import nbformat
import torch
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from labutils.exercise import Case, Exercise, Outcome
from labutils.gradcam import alpha_weights, combine

NOTEBOOK = "01_tiny.ipynb"
KERNELSPEC = {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}}
ALPHA_BODY = "return gradients.mean(dim=(-2, -1))"
COMBINE_BODY = "return torch.relu((alpha[..., None, None] * activations).sum(dim=-3))"


def _shapes(generator: Optional[torch.Generator], fixed: list[tuple], count: int) -> list[tuple]:
    if generator is None:
        return fixed
    sizes = torch.randint(1, 6, (count, 4), generator=generator).tolist()
    return [(b, k + 1, h + 1, w + 2) for b, k, h, w in sizes]  # never square, like the lab's real checks


def alpha_cases(generator: Optional[torch.Generator]) -> list[Case]:
    shapes = _shapes(generator, [(1, 3, 2, 2), (2, 4, 3, 5)], 3)
    return [Case(f"gradients of shape {s}", (torch.randn(*s, generator=generator) if generator else
                                             torch.linspace(-1, 1, torch.Size(s).numel()).reshape(s),))
            for s in shapes]


def combine_cases(generator: Optional[torch.Generator]) -> list[Case]:
    shapes = _shapes(generator, [(1, 3, 2, 2), (2, 4, 3, 5)], 3)
    cases = []
    for s in shapes:
        g = generator or torch.Generator().manual_seed(sum(s))
        cases.append(Case(f"alpha {s[:2]} and A^k {s}", (torch.randn(*s[:2], generator=g),
                                                         torch.randn(*s, generator=g))))
    return cases


def _diagnose(reference: Callable) -> Callable[[Case, Outcome], Optional[str]]:
    def diagnose(case: Case, outcome: Outcome) -> Optional[str]:
        if outcome.error:
            return "not implemented yet" if outcome.error == "NotImplementedError" else outcome.error
        expected, got = reference(*case.args), outcome.result
        if type(got) is not torch.Tensor:
            return f"returned a {type(got).__name__}, expected a torch.Tensor"
        if got.shape != expected.shape:
            return f"shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
        if got.dtype != expected.dtype or not torch.allclose(got, expected, atol=1e-5):
            return "wrong values"
        if outcome.changed_inputs:
            return "it changed its input in place"
        return None

    return diagnose


EXERCISES = [
    Exercise("alpha", NOTEBOOK, "my_alpha", (), alpha_cases, _diagnose(alpha_weights),
             reference="labutils.equations:alpha_weights"),
    Exercise("combine", NOTEBOOK, "my_combine", (), combine_cases, _diagnose(combine),
             reference="labutils.equations:combine"),
]


def _meta(grade_id: str, *, grade: bool, solution: bool, points: float = 0) -> dict:
    meta = {"grade": grade, "solution": solution, "locked": not solution, "grade_id": grade_id, "schema_version": 3}
    if grade:
        meta["points"] = points
    return {"nbgrader": meta}


def solution(name: str, args: str, doc: str, body: str, grade_id: str) -> nbformat.NotebookNode:
    source = f'def {name}({args}):\n    """{doc}"""\n    ### BEGIN SOLUTION\n    {body}\n    ### END SOLUTION'
    return new_code_cell(source, metadata=_meta(grade_id, grade=False, solution=True))


def check(call: str, grade_id: str, points: float) -> nbformat.NotebookNode:
    """The in-notebook check: what the student sees (the grader does not read it, only its points)."""
    source = f"try:\n    {call}\n    print('PASS: {grade_id}')\nexcept Exception as error:\n" \
             f"    print('FAIL: {grade_id}:', type(error).__name__)"
    return new_code_cell(source, metadata=_meta(grade_id, grade=True, solution=False, points=points))


def instructor_notebook() -> nbformat.NotebookNode:
    return new_notebook(metadata=KERNELSPEC, cells=[
        new_markdown_cell("# Tiny Grad-CAM"),
        new_code_cell("import torch"),
        solution("my_alpha", "gradients", "Equation (1): average over the h*w positions.", ALPHA_BODY,
                 "alpha-solution"),
        check("g = torch.randn(2, 3, 4, 5)\n    assert torch.allclose(my_alpha(g), g.mean((-2, -1)))", "alpha", 2),
        new_code_cell("%matplotlib inline\nimport matplotlib.pyplot as plt\n\nfig, ax = plt.subplots(figsize=(2, 2))\n"
                      "ax.imshow(torch.rand(4, 5))\nax.set_title('tiny map (untrained)')\nplt.show()"),
        solution("my_combine", "alpha, activations", "Equation (2) with its ReLU.", COMBINE_BODY, "combine-solution"),
        check("a, A = torch.randn(1, 3), torch.randn(1, 3, 2, 2)\n    my_combine(a, A)", "combine", 3),
        new_markdown_cell("Why does 1/Z drop out after normalisation?\n\n=== BEGIN MARK SCHEME ===\n"
                          "Normalisation divides by the range, and 1/Z scales every value alike.\n"
                          "=== END MARK SCHEME ===", metadata=_meta("why-z", grade=True, solution=True, points=2)),
    ])  # fmt: skip


def write_lab(folder: Path) -> Path:
    """The instructor's folder: 01_tiny.ipynb (exercises) and 00_intro.ipynb (none: skipped by the grader)."""
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(instructor_notebook(), folder / NOTEBOOK)
    nbformat.write(new_notebook(metadata=KERNELSPEC, cells=[new_code_cell("print('hello')")]),
                   folder / "00_intro.ipynb")
    return folder


def cell(nb: nbformat.NotebookNode, grade_id: str) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def variant(source: Path, target: Path, change: Callable[[nbformat.NotebookNode], None]) -> Path:
    """A copy of notebook ``source`` at ``target``, changed by ``change(nb)``."""
    nb = nbformat.read(source, as_version=4)
    change(nb)
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)
    return target
