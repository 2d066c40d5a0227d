"""The in-notebook checks: one PASS line for a right answer; one FAIL line and no exception for a wrong one
(Run All goes on), an exception under nbgrader's autograder or LABUTILS_CHECKS=raise; the registry's
contract with the grader. The messages themselves: tests/test_wrong_answers.py."""

from __future__ import annotations

import pytest
import torch

import answers
from labutils import checks
from labutils.checks import ExerciseError
from labutils.exercise import Exercise, Net, Outcome


@pytest.fixture(autouse=True)
def print_mode(monkeypatch):
    """Tests run as a student would in JupyterLab, unless a test sets another mode."""
    monkeypatch.delenv("LABUTILS_CHECKS", raising=False)
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    checks._passed.clear()


def not_implemented(*args):
    # YOUR CODE HERE
    raise NotImplementedError()


@pytest.mark.parametrize("grade_id", [e.grade_id for e in checks.EXERCISES])
def test_the_right_answer_prints_one_pass_line(grade_id, capsys):
    function = answers.ANSWERS[grade_id]
    getattr(checks, f"check_{grade_id}")(function)
    out = capsys.readouterr().out
    assert out.startswith(f"PASS: {grade_id} — ") and out.count("\n") == 1, out
    assert checks.passed(grade_id, function)
    used, label = checks.yours_or_reference(grade_id, function, None)
    assert used.__wrapped__ is function and label == f"your my_{grade_id}"  # wrapped: results in float32 (as_the_lab_uses_it)


@pytest.mark.parametrize("grade_id", [e.grade_id for e in checks.EXERCISES])
def test_an_unfinished_exercise_prints_one_fail_line_and_goes_on(grade_id, capsys):
    result = getattr(checks, f"check_{grade_id}")(not_implemented)  # no exception: the notebook continues
    assert result is None
    out = capsys.readouterr().out
    assert out == f"FAIL: {grade_id}: not implemented yet — write my_{grade_id} above\n"
    used, label = checks.yours_or_reference(grade_id, not_implemented, "the reference")
    assert used == "the reference" and label.startswith("labutils' reference (your my_")


def test_a_later_failing_check_takes_back_the_pass(capsys):
    checks.check_alpha(answers.my_alpha)
    checks.check_alpha(lambda g: g.sum(dim=(-2, -1)))
    assert not checks.passed("alpha", answers.my_alpha)
    assert "FAIL: alpha, on gradients (1, 512, 14, 14) like VGG-16's features.29: wrong scale" in capsys.readouterr().out


@pytest.mark.parametrize("env", [{"LABUTILS_CHECKS": "raise"}, {"NBGRADER_EXECUTION": "autograde"},
                                 {"NBGRADER_EXECUTION": "validate"}])
def test_raise_mode_raises_one_line(env, monkeypatch, capsys):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ExerciseError) as info:
        checks.check_combine(lambda alpha, a: (alpha[..., None, None] * a).sum(dim=-3))
    assert str(info.value).startswith("combine, on a conv layer's output") and "ReLU missing" in str(info.value)
    assert "\n" not in str(info.value) and capsys.readouterr().out == ""
    checks.check_combine(answers.my_combine)  # a right answer still passes quietly in raise mode
    assert capsys.readouterr().out.startswith("PASS: combine")


def test_labutils_checks_print_overrides_nbgrader(monkeypatch, capsys):
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    monkeypatch.setenv("LABUTILS_CHECKS", "print")
    checks.check_alpha(not_implemented)
    assert capsys.readouterr().out.startswith("FAIL: alpha: not implemented yet")


def test_the_students_own_error_is_reported_with_its_line(capsys):
    def my_alpha(gradients):
        flat = gradients.flatten(2)
        return flat.mean(dim=5)

    checks.check_alpha(my_alpha)
    out = capsys.readouterr().out.strip()
    assert out.startswith("FAIL: alpha, on gradients (1, 512, 14, 14) like VGG-16's features.29: my_alpha raised "
                          "IndexError: Dimension out of range")
    assert out.endswith("(line 3 of my_alpha: return flat.mean(dim=5))")


def test_passing_something_else_than_a_function(capsys):
    checks.check_alpha(answers.my_alpha(torch.zeros(1, 2, 3, 3)))
    assert capsys.readouterr().out == ("FAIL: alpha: pass the function itself, e.g. check_alpha(my_alpha), not Tensor\n")


def test_render_traceback_is_one_line():
    assert ExerciseError("alpha: wrong shape")._render_traceback_() == ["FAIL: alpha: wrong shape"]


def test_ipython_shows_one_line_in_raise_mode(capsys, monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.setenv("LABUTILS_CHECKS", "raise")
    shell = InteractiveShell.instance()
    try:
        result = shell.run_cell("from labutils.checks import check_alpha\ncheck_alpha(lambda g: g.sum(dim=-1))")
    finally:
        InteractiveShell.clear_instance()
    assert isinstance(result.error_in_exec, ExerciseError)
    shown = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert shown == [
        "FAIL: alpha, on gradients (1, 512, 14, 14) like VGG-16's features.29: wrong shape: alpha should be "
        "(1, 512), got (1, 512, 14) (the dimensions are (images, K feature maps))"
    ]


def test_checks_leave_no_state(capsys):
    """The checks use their own seeded generators and restore the thread count: the caller's state is untouched."""
    torch.manual_seed(123)
    before, threads = torch.random.get_rng_state(), torch.get_num_threads()
    for exercise in checks.EXERCISES:
        checks.check(exercise.grade_id, answers.ANSWERS[exercise.grade_id])
        assert torch.equal(torch.random.get_rng_state(), before), exercise.grade_id
    checks.check_alpha(not_implemented)
    assert torch.get_num_threads() == threads


# ---------------------------------------------------------------- the registry: the grader's side of the contract

# the module holding each exercise's reference: the student's code must not be able to import it when graded
REFERENCE_MODULES = {
    "layer_cost": {"labutils.summary", "labutils.checks"},
    "capture": {"labutils.hooks", "labutils.steps", "labutils.gradcam"},
    "alpha": {"labutils.gradcam", "labutils.equations", "labutils.steps"},
    "combine": {"labutils.gradcam", "labutils.equations", "labutils.steps"},
    "postprocess": {"labutils.gradcam", "labutils.equations", "labutils.steps"},
    "gradcam": {"labutils.gradcam", "labutils.pipeline", "labutils.cached"},
    "layer_sweep": {"labutils.checks"},
    "cam": {"labutils.gradcam", "labutils.equations", "labutils.steps"},
    "guided_relu": {"labutils.guided"},
    "guided_gradcam": {"labutils.guided"},
    "counterfactual": {"labutils.steps", "labutils.guided"},
    "overlay": {"labutils.overlay"},
    "pointing_game": {"labutils.sanity"},
}


def test_the_registry():
    ids = [e.grade_id for e in checks.EXERCISES]
    assert len(ids) == len(set(ids)) >= 13 and set(ids) == set(REFERENCE_MODULES)
    for e in checks.EXERCISES:
        assert isinstance(e, Exercise) and e.function == f"my_{e.grade_id}" and e.solution_grade_id == f"{e.grade_id}-solution"
        assert not set(e.modules) & REFERENCE_MODULES[e.grade_id], e.grade_id
        assert all(m == "labutils.nets" or m in ("labutils.steps", "labutils.pipeline", "labutils.gradcam", "labutils.equations", "labutils.models")
                   for m in e.modules), e.modules
        for case in e.cases(None):  # plain data and Nets only: what can travel to the grader's sandbox
            for arg in case.args:
                assert isinstance(arg, (torch.Tensor, Net, int, float, str, tuple, list, dict)), (e.grade_id, type(arg))
                if isinstance(arg, Net):
                    assert arg.builder.split(":")[0] in e.modules, (e.grade_id, arg.builder)


def test_the_pipeline_exercise_gets_the_pieces_not_the_pipeline():
    case = checks.BY_ID["gradcam"].cases(None)[0]
    steps = case.args[-1].build()
    assert steps.gradcam is None and callable(steps.alpha)
    cause = checks.BY_ID["gradcam"].diagnose(case, Outcome(None, "TypeError: 'NoneType' object is not callable"))
    assert cause == "my_gradcam raised TypeError: 'NoneType' object is not callable"


def test_diagnose_reads_only_plain_data():
    """The grader calls diagnose with an Outcome it rebuilt from plain data: hooks and in-place changes count."""
    e = checks.BY_ID["capture"]
    case = e.cases(None)[0]
    a, g = answers.my_capture(case.args[0].build(), case.args[1], case.args[2], case.args[3])
    assert e.diagnose(case, Outcome((a, g))) is None
    assert "a hook is still on the model" in e.diagnose(case, Outcome((a, g), hooks_left=("features.9: 1 forward hook(s)",)))
    assert "changed its input number 3 in place" in e.diagnose(case, Outcome((a, g), changed_inputs=(2,)))


@pytest.mark.parametrize("grade_id", [e.grade_id for e in checks.EXERCISES])
def test_diagnose_names_any_odd_result_without_crashing(grade_id):
    """Whatever plain data comes back, diagnose returns one line: it never raises in the grader."""
    e = checks.BY_ID[grade_id]
    case = e.cases(None)[0]
    for odd in (None, "text", 3, 2.5, (), ("a", "b", "c"), [torch.zeros(2)] * 3, torch.zeros(2, dtype=torch.bool),
                torch.zeros(0), {"a": 1}, (torch.zeros(3), None), torch.full((1,), float("nan"))):
        cause = e.diagnose(case, Outcome(odd))
        assert isinstance(cause, str) and cause and "\n" not in cause, (odd, cause)
