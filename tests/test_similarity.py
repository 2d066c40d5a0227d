"""The copy check (labutils.instructor.similarity): disguised copies found, honest answers left alone.

The measure: every exercise's honest answers (tests/similarity_cases.py, twelve each, all correct)
against the exercise's references; disguised copies of every reference long enough to tell, made
by hand (COPIED) and by machine here (every own name renamed, reformatted, dead code added, and
combinations). Goal (issue 20): at least 90% of the copies flagged, at most 5% of the honest answers.
"""

from __future__ import annotations

import ast
import builtins
import io
import json
import keyword
import random
import re
import sys
import tokenize
from pathlib import Path

import pytest

from labutils.checks import BY_ID, EXERCISES, diagnose
from labutils.instructor import similarity
from labutils.instructor.references import REFERENCES
from labutils.instructor.similarity import (MIN_FINGERPRINTS, against_references, class_pairs, fingerprints,
                                            normal_form, reference_sources)

sys.path.insert(0, str(Path(__file__).parent))
from similarity_cases import COPIED, HONEST, PRELUDE  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SOURCES = {e.grade_id: reference_sources(e, NOTEBOOKS) for e in EXERCISES}
WORDS = ("data", "tmp", "val", "res", "item", "thing", "out", "buf", "acc", "cur", "node", "entry", "piece", "blob")


# ---------------------------------------------------------------- disguises made by machine


def own_names(source: str) -> set[str]:
    """Arguments, assigned names, loop variables and functions the code defines."""
    tree = ast.parse(source)
    names = {n.arg for n in ast.walk(tree) if isinstance(n, ast.arg)}
    names |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    names |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    return names - set(dir(builtins))


def renamed(source: str, entry: str, seed: int) -> str:
    """Every own name changed (the entry function to the exercise's name), by tokens: attributes kept."""
    rng = random.Random(seed)
    names = sorted(own_names(source))
    new = {name: f"{rng.choice(WORDS)}_{n}{rng.choice('xyzq')}" for n, name in enumerate(names)}
    functions = [n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)]
    if functions:
        new[functions[-1]] = entry
    out, previous = [], None
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        text = token.string
        if token.type == tokenize.NAME and text in new and not keyword.iskeyword(text) \
                and not (previous and previous.string == "."):
            text = new[text]
        out.append(token._replace(string=text))
        if token.type not in (tokenize.NL, tokenize.COMMENT):
            previous = token
    return tokenize.untokenize(out)


def reformatted(source: str) -> str:
    """Other quotes, half the indentation, comment lines, a docstring, parentheses after ``return``."""
    lines, previous = [], ""
    for line in source.replace('"', "'").split("\n"):
        stripped = line.lstrip(" ")
        indent = " " * ((len(line) - len(stripped)) // 2)
        balanced = all(stripped.count(a) == stripped.count(b) for a, b in ("()", "[]", "{}"))
        if re.match(r"return \S", stripped) and balanced and "#" not in stripped and not stripped.endswith(("\\", ",")):
            stripped = f"return ({stripped[7:]})"
        if stripped and not previous.endswith("\\"):
            lines.append(f"{indent}# {len(lines)}")
        lines.append(indent + stripped)
        if stripped.startswith("def ") and stripped.endswith(":"):
            lines.append(indent + "  '''My own solution.'''")
        previous = stripped
    return "\n".join(lines)


DEAD = ["unused_{n} = None", "if False:\n    print('checking', {n})", "debug_{n} = [0] * {n}",
        "_ = len(str({n}))"]


def with_dead_code(source: str, seed: int) -> str:
    """Dead statements between the entry function's statements, a helper never called, code after return."""
    rng = random.Random(seed)
    tree = ast.parse(source)
    function = [n for n in tree.body if isinstance(n, ast.FunctionDef)][-1]
    lines = source.split("\n")
    body = [s for s in function.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    places = sorted({s.lineno - 1 for s in body if s.col_offset == body[0].col_offset}, reverse=True)
    indent = " " * body[0].col_offset
    for n, place in enumerate(places[: 3]):
        dead = rng.choice(DEAD).format(n=n + 2)
        lines[place:place] = [indent + piece for piece in dead.split("\n")]
    helper = "def helper_unused(values):\n    total = 0\n    for v in values:\n        total += v\n    return total\n"
    end = function.end_lineno + (len(lines) - len(source.split("\n")))
    lines[end:end] = [indent + "print('unreachable')"] if isinstance(body[-1], ast.Return) else []
    return helper + "\n" + "\n".join(lines)


DISGUISES = {
    "renamed": lambda s, e: renamed(s, e, 1),
    "reformatted": lambda s, e: reformatted(renamed(s, e, 0) if "def my_" not in s else s),
    "dead code": lambda s, e: with_dead_code(renamed(s, e, 2), 3),
    "renamed + reformatted": lambda s, e: reformatted(renamed(s, e, 4)),
    "renamed + dead code + reformatted": lambda s, e: reformatted(with_dead_code(renamed(s, e, 5), 6)),
}


def copies() -> list[tuple[str, str, str]]:
    """(grade_id, how, code): machine disguises of every reference long enough to tell, and the hand-made ones."""
    found = []
    for exercise in EXERCISES:
        for name, source in SOURCES[exercise.grade_id].items():
            if len(fingerprints(source)) >= MIN_FINGERPRINTS:
                for how, disguise in DISGUISES.items():
                    found.append((exercise.grade_id, f"{how} ({name})", disguise(source, exercise.function)))
        found += [(exercise.grade_id, "by hand", code) for code in COPIED.get(exercise.grade_id, [])]
    return found


def rates() -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
    """Per exercise: (flagged, copies) and (flagged, honest answers)."""
    detected, false = {}, {}
    for grade_id, how, code in copies():
        match = against_references(code, SOURCES[grade_id], BY_ID[grade_id].function)
        hit, total = detected.get(grade_id, (0, 0))
        detected[grade_id] = (hit + bool(match and match.flagged), total + 1)
    for grade_id, cells in HONEST.items():
        flagged = [against_references(c, SOURCES[grade_id], BY_ID[grade_id].function) for c in cells]
        false[grade_id] = (sum(bool(m and m.flagged) for m in flagged), len(cells))
    return detected, false


# ---------------------------------------------------------------- the measure


def test_disguised_copies_are_flagged_and_honest_answers_are_not() -> None:
    detected, false = rates()
    print("\nexercise         copies flagged   honest answers flagged")
    for exercise in EXERCISES:
        d, f = detected.get(exercise.grade_id, (0, 0)), false[exercise.grade_id]
        copies_text = f"{d[0]:>3} / {d[1]:<3}" if d[1] else "too short"
        print(f"{exercise.grade_id:<16} {copies_text:<16} {f[0]:>3} / {f[1]}")
    hits, copies_total = map(sum, zip(*detected.values()))
    flags, honest_total = map(sum, zip(*false.values()))
    print(f"detection {hits}/{copies_total} = {hits / copies_total:.1%}; "
          f"false flags {flags}/{honest_total} = {flags / honest_total:.1%}")
    assert len(detected) >= 7 and all(len(HONEST[e.grade_id]) >= 12 for e in EXERCISES)
    assert hits / copies_total >= 0.90
    assert flags / honest_total <= 0.05


def test_the_test_data_is_what_it_claims() -> None:
    """The honest answers are correct; each disguise changed the code, and it is still Python."""
    for grade_id, cells in HONEST.items():
        for n, cell in enumerate(cells):
            namespace: dict = {}
            exec(PRELUDE, namespace)
            exec(cell, namespace)
            assert diagnose(BY_ID[grade_id], namespace[BY_ID[grade_id].function]) is None, (grade_id, n)
    for grade_id, how, code in copies():
        ast.parse(code)
        assert code.strip() not in {s.strip() for s in SOURCES[grade_id].values()}, (grade_id, how)


# ---------------------------------------------------------------- the reproductions, the threshold


def test_the_obvious_one_line_answers_are_never_flagged() -> None:
    for grade_id, code in [("alpha", "def my_alpha(gradients):\n    return gradients.mean(dim=(-2, -1))\n"),
                           ("guided_relu", "def my_guided_relu(relu_input, grad_out):\n"
                                           "    return grad_out.clamp(min=0) * (relu_input > 0)\n")]:
        match = against_references(code, SOURCES[grade_id], BY_ID[grade_id].function)
        assert match is not None and match.score == 1.0 and not match.flagged  # identical, and too short to tell


def test_the_pointing_game_reference_with_names_changed_and_lines_swapped_is_flagged() -> None:
    copy = '''
def my_pointing_game(heat, boxes, tolerance=0):
    best = heat.flatten(1).argmax(dim=1)
    c, r = best % heat.shape[-1], best // heat.shape[-1]
    return (
        (r >= boxes[:, 0] - tolerance) & (r <= boxes[:, 2] + tolerance)
        & (c >= boxes[:, 1] - tolerance) & (c <= boxes[:, 3] + tolerance)
    )
'''
    match = against_references(copy, SOURCES["pointing_game"], "my_pointing_game")
    assert match.flagged and match.score == 1.0 and match.source == "labutils.sanity:pointing_game"


def test_every_exercise_has_a_reference_to_compare_with_and_the_instructors_pass_their_checks() -> None:
    assert all(SOURCES[e.grade_id] for e in EXERCISES)
    for grade_id, function in REFERENCES.items():
        assert diagnose(BY_ID[grade_id], function) is None, grade_id


def test_the_normal_form_undoes_renaming_reordering_folding_and_dead_code() -> None:
    first = "def f(a, b):\n    x = a * 2\n    y = b + 1\n    return x > y\n"
    second = ("import torch\n\ndef g(p, q):\n    '''doc'''\n    unused = p\n    w = 1 + q  # one\n"
              "    z = (2 * p)\n    if 0:\n        z = 3\n    return w < z\n    print(z)\n")
    assert normal_form(first) == normal_form(second) == \
        "def v(v, v):\n    v = 1 + v\n    v = 2 * v\n    return v < v"
    assert normal_form("x = 2 * 3 ** 2 - 1\nprint(x)") == "v = 17\nprint(v)"
    assert normal_form("def f(:") is None
    assert normal_form("import torch.nn.functional as F\ndef f(x):\n    return F.relu(x)") == \
        normal_form("import torch\ndef f(t):\n    return torch.nn.functional.relu(t)")


def test_a_dependency_keeps_its_order() -> None:
    assert normal_form("def f(a):\n    b = a + 1\n    a = 2\n    return a * b") != \
        normal_form("def f(a):\n    a = 2\n    b = a + 1\n    return a * b")


# ---------------------------------------------------------------- the class report


def test_class_pairs_ranks_the_students_who_share_an_answer() -> None:
    sweep, overlay = HONEST["layer_sweep"], HONEST["overlay"]
    solutions = {f"student{n}": {"layer_sweep": sweep[n], "overlay": overlay[n]} for n in range(8)}
    solutions["student1"]["layer_sweep"] = DISGUISES["renamed + dead code + reformatted"](sweep[3], "my_layer_sweep")
    solutions["student6"]["overlay"] = renamed(overlay[2], "my_overlay", 9)
    solutions["student7"]["overlay"] = overlay[2].replace("    return torch.lerp", "    # mine\n    return torch.lerp")
    solutions["student5"]["alpha"] = solutions["student4"]["alpha"] = HONEST["alpha"][0]  # too short to tell
    pairs = class_pairs(solutions)
    found = [(p.exercise, p.first, p.second) for p in pairs]
    assert set(found) == {("layer_sweep", "student1", "student3"), ("overlay", "student2", "student6"),
                          ("overlay", "student2", "student7"), ("overlay", "student6", "student7")}
    assert all(p.score >= similarity.PAIR_SCORE and p.size >= MIN_FINGERPRINTS // 3 for p in pairs)
    assert [p.score for p in pairs] == sorted((p.score for p in pairs), reverse=True)
    assert pairs[0].to_json()["students"] == [pairs[0].first, pairs[0].second]


def test_class_pairs_leaves_out_what_most_of_the_class_shares_and_the_handout() -> None:
    same = HONEST["pointing_game"][1]
    solutions = {f"s{n}": {"pointing_game": same} for n in range(6)}
    assert class_pairs(solutions) == []  # the whole class wrote it: common, not copied
    two = {"a": {"pointing_game": same}, "b": {"pointing_game": same}}
    assert len(class_pairs(two)) == 1
    assert class_pairs(two, {"pointing_game": [same]}) == []  # it is the handout's code


def test_the_class_report_files_list_the_pairs_escaped(tmp_path) -> None:
    from labutils.instructor.export import write_similarity
    from labutils.instructor.results import ExerciseResult, GradeResult

    def student(name: str, code: str) -> GradeResult:
        return GradeResult(name, [ExerciseResult("overlay", "04.ipynb", 2, 2, True, "PASS", solution=code)],
                           tmp_path / f"{name}.html")

    answer = HONEST["overlay"][4]
    results = [student("<b>ann</b>", answer), student("bob", renamed(answer, "my_overlay", 3)),
               student("cy", HONEST["overlay"][7])]
    pairs = write_similarity(results, tmp_path)
    assert [(p.first, p.second, p.score) for p in pairs] == [("<b>ann</b>", "bob", 1.0)]
    saved = json.loads((tmp_path / "similarity.json").read_text(encoding="utf-8"))
    assert saved == {"pairs": [{"exercise": "overlay", "students": ["<b>ann</b>", "bob"], "score": 1.0,
                                "shared": pairs[0].shared, "size": pairs[0].size}]}
    page = (tmp_path / "similarity.html").read_text(encoding="utf-8")
    assert "&lt;b&gt;ann&lt;/b&gt;" in page and "<b>ann" not in page and "100%" in page
