"""The copy check: how much of a reference (or of another student's answer) a solution holds, disguises undone.

Two solutions are compared the way MOSS compares programs, on what renaming, reordering and
reformatting cannot change:

1. **A normal form** (:func:`normal_form`, readable Python): imports, docstrings, comments and dead
   code (code after a ``return``, ``if False:`` branches, names assigned and never read, helpers never
   called) are dropped; constants are folded (``2 * 3`` -> ``6``); ``x += y`` is ``x = x + y``;
   ``a > b`` is ``b < a``; the operands of ``+ * & | and or`` and keyword arguments are sorted;
   ``F.relu``, ``torch.nn.functional.relu`` and ``relu`` are one name; every name of the solution's
   own (arguments, variables, helpers, string keys) is ``v``; statements that do not depend on each
   other are put in one canonical order.
2. **Fingerprints** (:func:`fingerprints`): the hashes of the normal form's k-grams of tokens
   (``K`` tokens), winnowed (the smallest hash of every ``W`` consecutive ones is kept): a run of
   ``K + W - 1`` tokens shared by two solutions is always seen.
3. **Scores**: against a reference, the share of the reference's fingerprints found in the solution
   (added code does not hide a copy); between two students, the share of the smaller one's
   fingerprints found in the other, fingerprints common to much of the class left out.

**Too short to tell.** An answer that any correct solution would share proves nothing: a comparison
counts only when the reference (or the smaller answer of a pair) has at least ``MIN_FINGERPRINTS``
fingerprints, about five lines of code. ``gradients.mean(dim=(-2, -1))`` has 8, the three calls of
the Grad-CAM pipeline 25, the pointing game's reference 34: one-line answers and the pipelines of
the lab's own steps are never flagged, whoever wrote them. Measured on twelve honest answers per
exercise and disguised copies (``tests/test_similarity.py``): K, W, the size and the score thresholds
were chosen where both rates are far from their limits, not at an edge.

A flag is a question for the instructor, not a verdict: it never changes a grade.
"""

from __future__ import annotations

import ast
import builtins
import copy
import functools
import importlib.util
import io
import itertools
import operator
import tokenize
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import nbformat

from ..exercise import Exercise
from ..submission import python_source

K = 5  # tokens per k-gram
W = 4  # winnowing window: the smallest hash of every W consecutive k-grams is kept
MIN_FINGERPRINTS = 30  # fewer in the reference (or the smaller answer, about 5 lines): too short to tell
FLAG_SCORE = 0.7  # share of the reference's fingerprints in the solution from which it is flagged
PAIR_SCORE = 0.7  # share of the smaller answer's fingerprints in the other from which a pair is listed
MAX_SOURCE, MAX_BLOCK = 50_000, 300  # characters compared at most; statements of a block reordered at most
COMMON_SHARE = 0.4  # a fingerprint in more than this share of the class (and 3 answers) is common, not copied
BUILTINS = frozenset(dir(builtins))
_FOLD = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
         ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge}
_COMMUTATIVE = (ast.Add, ast.Mult, ast.BitAnd, ast.BitOr, ast.BitXor)
_SWAPPED = {ast.Gt: ast.Lt, ast.GtE: ast.LtE}
_ENDS = (ast.Return, ast.Raise, ast.Break, ast.Continue)
_ORDERED = (ast.Return, ast.Raise, ast.Break, ast.Continue, ast.Expr, ast.With, ast.AsyncWith, ast.Try,
            ast.Delete, ast.Global, ast.Nonlocal)  # statements that keep their place among the others


# ---------------------------------------------------------------- the normal form


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)


def _has_call(node: ast.AST) -> bool:
    return any(isinstance(n, (ast.Call, ast.Await, ast.Yield, ast.YieldFrom)) for n in ast.walk(node))


def _names(node: ast.AST, ctx: type) -> set[str]:
    """Names ``node`` stores (ctx ast.Store, with the bases of ``x[i] = ``, ``x.a = ``) or loads (ast.Load)."""
    found = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ctx):
            found.add(n.id)
        elif ctx is ast.Store and isinstance(n, (ast.Subscript, ast.Attribute)) and isinstance(n.ctx, ast.Store):
            base = n.value
            while isinstance(base, (ast.Subscript, ast.Attribute)):
                base = base.value
            if isinstance(base, ast.Name):
                found.add(base.id)
        elif ctx is ast.Store and isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.add(n.name)
        elif ctx is ast.Store and isinstance(n, ast.arg):
            found.add(n.arg)
    return found


class _Simplify(ast.NodeTransformer):
    """Fold constants, undo the spellings that do not change a program (``+=``, ``>``, operand order)."""

    def visit_BinOp(self, node: ast.BinOp) -> ast.expr:
        self.generic_visit(node)
        numbers = [getattr(n, "value", None) for n in (node.left, node.right)]
        if all(type(v) in (int, float) and abs(v) < 1e12 for v in numbers) and type(node.op) in _FOLD \
                and not (isinstance(node.op, ast.Pow) and abs(numbers[1]) > 64):  # 9 ** 9 ** 9 is never computed
            try:
                value = _FOLD[type(node.op)](node.left.value, node.right.value)
                if isinstance(value, (int, float)) and abs(value) < 1e12:
                    return ast.Constant(value)
            except Exception:
                pass
        if isinstance(node.op, _COMMUTATIVE):
            operands = sorted(self._chain(node, type(node.op)), key=ast.dump)
            return self._rebuild(operands, lambda a, b: ast.BinOp(a, type(node.op)(), b))
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.expr:
        self.generic_visit(node)
        values = [v for child in node.values
                  for v in (child.values if isinstance(child, ast.BoolOp) and type(child.op) is type(node.op)
                            else [child])]  # fmt: skip
        return ast.BoolOp(type(node.op)(), sorted(values, key=ast.dump))

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.expr:
        self.generic_visit(node)
        if isinstance(node.operand, ast.Constant) and type(node.op) in _UNARY:
            try:
                return ast.Constant(_UNARY[type(node.op)](node.operand.value))
            except Exception:
                pass
        return node

    def visit_Compare(self, node: ast.Compare) -> ast.expr:
        self.generic_visit(node)
        if len(node.ops) == 1 and isinstance(node.left, ast.Constant) and isinstance(node.comparators[0], ast.Constant):
            try:
                return ast.Constant(bool(_COMPARE[type(node.ops[0])](node.left.value, node.comparators[0].value)))
            except Exception:
                pass
        if len(node.ops) == 1 and type(node.ops[0]) in _SWAPPED:
            return ast.Compare(node.comparators[0], [_SWAPPED[type(node.ops[0])]()], [node.left])
        return node

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.stmt:
        load = copy.deepcopy(node.target)
        for n in ast.walk(load):
            if hasattr(n, "ctx"):
                n.ctx = ast.Load()
        return self.visit(ast.Assign([node.target], ast.BinOp(load, node.op, node.value)))

    def visit_Assign(self, node: ast.Assign) -> ast.stmt | list[ast.stmt]:
        self.generic_visit(node)
        target, value = node.targets[0], node.value
        if len(node.targets) == 1 and isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) \
                and len(target.elts) == len(value.elts) and all(isinstance(t, ast.Name) for t in target.elts) \
                and not {t.id for t in target.elts} & _names(value, ast.Load):
            return [ast.Assign([t], v) for t, v in zip(target.elts, value.elts)]  # a, b = x, y: two lines
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.stmt:
        return self.visit(ast.Assign([node.target], node.value)) if node.value else ast.Pass()

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.annotation = None
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.stmt:
        node.returns, node.decorator_list = None, []
        return self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> ast.expr:
        self.generic_visit(node)
        node.keywords.sort(key=lambda k: k.arg or "")
        return node

    @staticmethod
    def _chain(node: ast.expr, op: type) -> list[ast.expr]:
        if isinstance(node, ast.BinOp) and isinstance(node.op, op):
            return _Simplify._chain(node.left, op) + _Simplify._chain(node.right, op)
        return [node]

    @staticmethod
    def _rebuild(operands: list[ast.expr], join) -> ast.expr:
        result = operands[0]
        for operand in operands[1:]:
            result = join(result, operand)
        return result


def _blocks(tree: ast.AST) -> list[tuple[ast.AST, str]]:
    """Every block of statements (node, field), the innermost first."""
    return [(node, field) for node in reversed(list(ast.walk(tree))) for field in ("body", "orelse", "finalbody")
            if isinstance(getattr(node, field, None), list) and getattr(node, field)
            and isinstance(getattr(node, field)[0], ast.stmt)]


def _live(body: list[ast.stmt]) -> list[ast.stmt]:
    """A block without docstrings, imports, ``pass``, what follows a ``return``, and ``if <constant>:`` tests."""
    kept = []
    for node in body:
        if _is_docstring(node) or isinstance(node, (ast.Pass, ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, (ast.If, ast.While)) and isinstance(node.test, ast.Constant):
            if isinstance(node, ast.If):
                kept += _live(node.body if node.test.value else node.orelse)
                continue
            if not node.test.value:
                continue
        kept.append(node)
        if isinstance(node, _ENDS):
            break
    return kept


def _without_unused(tree: ast.Module, keep: set[str]) -> bool:
    """Drop assignments to names never read (their calls stay) and functions never called; True if any."""
    read = _names(tree, ast.Load) | keep
    changed = False
    for node, field in _blocks(tree):
        new = []
        for stmt in getattr(node, field):
            if isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) and t.id not in read for t in stmt.targets):
                new += [ast.Expr(stmt.value)] if _has_call(stmt.value) else []
            elif isinstance(stmt, ast.Expr) and not _has_call(stmt.value):
                pass
            elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and stmt.name not in read:
                pass
            else:
                new.append(stmt)
        changed |= len(new) != len(getattr(node, field))
        setattr(node, field, new or ([ast.Pass()] if field == "body" else []))
    return changed


class _Blind(ast.NodeTransformer):
    """The solution's own names -> ``v``; what it uses from elsewhere by its last name (``F.relu`` -> ``relu``)."""

    def __init__(self, own: set[str], aliases: dict[str, str]) -> None:
        self.own, self.aliases = own, aliases

    def visit_Name(self, node: ast.Name) -> ast.Name:
        return ast.Name("v" if node.id in self.own else self.aliases.get(node.id, node.id), node.ctx)

    def visit_Attribute(self, node: ast.Attribute) -> ast.expr:
        base = node.value
        while isinstance(base, ast.Attribute):
            base = base.value
        if isinstance(base, ast.Name) and base.id not in self.own:
            return ast.Name(node.attr, node.ctx)  # torch.nn.functional.relu, F.relu -> relu
        return self.generic_visit(node)

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.arg = "v"
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        node.name = "v"
        return self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> ast.Constant:
        return ast.Constant("s") if isinstance(node.value, str) else node  # a string is a name: a key, a label


def _canonical_order(body: list[ast.stmt], key) -> list[ast.stmt]:
    """The block's statements, those that do not depend on each other sorted by ``key`` (a topological sort)."""
    if len(body) > MAX_BLOCK:
        return body
    writes = [_names(s, ast.Store) for s in body]
    reads = [_names(s, ast.Load) for s in body]
    after = {j: {i for i in range(j) if isinstance(body[i], _ORDERED) or isinstance(body[j], _ORDERED)
                 or writes[i] & (reads[j] | writes[j]) or reads[i] & writes[j]} for j in range(len(body))}
    keys = [key(s) for s in body]
    done: list[int] = []
    while len(done) < len(body):
        ready = [j for j in range(len(body)) if j not in done and after[j] <= set(done)]
        done.append(min(ready, key=lambda j: keys[j]))
    return [body[j] for j in done]


def normal_form(source: str, entry: Optional[str] = None) -> Optional[str]:
    """The code in its normal form (readable Python, every own name ``v``); None if it is not Python.

    ``entry``: the function the code must define (``my_alpha``); other functions count only if it uses
    them. Without it, every top-level function counts."""
    if len(source) > MAX_SOURCE:
        return None  # far longer than any answer: not compared (the report shows the code)
    try:
        tree = ast.parse(python_source(source))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    aliases = {alias.asname: alias.name.split(".")[-1] for node in ast.walk(tree)
               if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names if alias.asname}
    aliases |= {alias.name: alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for alias in node.names if not alias.asname}
    try:
        tree = _Simplify().visit(tree)
        for node, field in _blocks(tree):
            setattr(node, field, _live(getattr(node, field)) or ([ast.Pass()] if field == "body" else []))
        tops = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        keep = {entry} if entry in tops else tops
        while _without_unused(tree, keep):
            pass
        own = (_names(tree, ast.Store) | {n.arg for n in ast.walk(tree) if isinstance(n, ast.arg)}) - BUILTINS
        blind = _Blind(own, aliases)
        for node, field in _blocks(tree):
            setattr(node, field, _canonical_order(getattr(node, field),
                                                  lambda s: ast.dump(blind.visit(copy.deepcopy(s)))))
        return ast.unparse(ast.fix_missing_locations(blind.visit(tree)))
    except (RecursionError, MemoryError, ValueError, TypeError, AttributeError):
        return None  # code so odd that the rewriting failed: nothing to compare, rather than a guess


# ---------------------------------------------------------------- fingerprints


def tokens(source: str, entry: Optional[str] = None) -> list[str]:
    """The normal form's tokens (lines and blocks as ``;``, ``{``, ``}``); [] if the code is not Python."""
    form = normal_form(source, entry)
    if not form:
        return []
    marks = {tokenize.NEWLINE: ";", tokenize.INDENT: "{", tokenize.DEDENT: "}"}
    found = []
    for token in tokenize.generate_tokens(io.StringIO(form).readline):
        if token.type in marks:
            found.append(marks[token.type])
        elif token.type in (tokenize.NAME, tokenize.OP, tokenize.NUMBER, tokenize.STRING):
            found.append(token.string)
    return found


@functools.lru_cache(maxsize=4096)
def fingerprints(source: str, entry: Optional[str] = None, k: int = K, w: int = W) -> frozenset[int]:
    """The winnowed hashes of the normal form's k-grams (MOSS: Schleimer, Wilkerson & Aiken, 2003)."""
    found = tokens(source, entry)
    hashes = [zlib.crc32(" ".join(found[i: i + k]).encode()) for i in range(len(found) - k + 1)]
    if len(hashes) <= w:
        return frozenset(hashes)
    return frozenset(min(hashes[i: i + w]) for i in range(len(hashes) - w + 1))


# ---------------------------------------------------------------- against the references


@dataclass(frozen=True)
class Match:
    """How much of one reference a solution holds."""

    score: float  # share of the reference's fingerprints found in the solution, 0..1
    source: str  # which reference, e.g. "labutils.sanity:pointing_game"
    size: int  # the reference's fingerprints
    flagged: bool  # score >= FLAG_SCORE and the reference is long enough to tell


def containment(inner: frozenset[int], outer: frozenset[int]) -> float:
    """The share of ``inner``'s fingerprints found in ``outer`` (0 when ``inner`` has none)."""
    return len(inner & outer) / len(inner) if inner else 0.0


def against_references(code: str, references: dict[str, str], entry: Optional[str] = None) -> Optional[Match]:
    """The closest of ``references`` (name -> source) to the solution ``code`` (which defines ``entry``);
    None if there is none to compare."""
    mine = fingerprints(code, entry)
    best = None
    for name, source in references.items():
        theirs = fingerprints(source)
        if not theirs:
            continue
        score = containment(theirs, mine)
        match = Match(round(score, 3), name, len(theirs), score >= FLAG_SCORE and len(theirs) >= MIN_FINGERPRINTS)
        if best is None or (match.flagged, match.score) > (best.flagged, best.score):
            best = match
    return best


# ---------------------------------------------------------------- between students


@dataclass(frozen=True)
class Pair:
    """Two students whose answers to one exercise are unusually similar (for the instructor to judge)."""

    exercise: str
    first: str
    second: str
    score: float  # share of the smaller answer's (uncommon) fingerprints found in the other
    shared: int  # uncommon fingerprints the two share
    size: int  # uncommon fingerprints of the smaller answer (those the score counts)

    def to_json(self) -> dict:
        return {"exercise": self.exercise, "students": [self.first, self.second], "score": self.score,
                "shared": self.shared, "size": self.size}


def class_pairs(solutions: dict[str, dict[str, str]], references: Optional[dict[str, Iterable[str]]] = None,
                threshold: float = PAIR_SCORE) -> list[Pair]:
    """Pairs of students whose solutions to an exercise are unusually similar, most similar first.

    ``solutions`` is {student: {exercise: source}}. Per exercise, a fingerprint found in more than
    ``COMMON_SHARE`` of the answers (and in 3 at least), or in the handout code of ``references``
    (``{exercise: [sources]}``, e.g. the starting code every student got), is common: it counts for
    no one. A pair is listed when both answers have ``MIN_FINGERPRINTS`` fingerprints, the smaller keeps
    a third of that once the common ones are left out, and at least ``threshold`` of those are in the
    other's.
    """
    pairs = []
    exercises = sorted({e for answers in solutions.values() for e in answers})
    for exercise in exercises:
        prints = {s: fingerprints(answers[exercise]) for s, answers in solutions.items()
                  if isinstance(answers.get(exercise), str)}
        counts: dict[int, int] = {}
        for found in prints.values():
            for h in found:
                counts[h] = counts.get(h, 0) + 1
        limit = max(3, COMMON_SHARE * len(prints))
        common = {h for h, n in counts.items() if n > limit}
        for source in (references or {}).get(exercise, ()):
            common |= fingerprints(source)
        own = {s: found - common for s, found in prints.items()}
        for a, b in itertools.combinations(sorted(own), 2):
            if min(len(prints[a]), len(prints[b])) < MIN_FINGERPRINTS:
                continue  # too short to tell
            small, large = sorted((own[a], own[b]), key=len)
            if len(small) < MIN_FINGERPRINTS // 3:
                continue  # what the two share, most of the class shares
            score = containment(small, large)
            if score >= threshold:
                pairs.append(Pair(exercise, a, b, round(score, 3), len(small & large), len(small)))
    return sorted(pairs, key=lambda p: (-p.score, -p.shared, p.exercise, p.first, p.second))


# ---------------------------------------------------------------- the references of an exercise


def function_source(reference: str) -> Optional[str]:
    """The source of ``module:function``, read from the module's file (not imported, not run); None if absent."""
    module, _, function = reference.partition(":")
    try:
        spec = importlib.util.find_spec(module)
        text = Path(spec.origin).read_text(encoding="utf-8") if spec and spec.origin else ""
        tree = ast.parse(text)
    except (ImportError, ValueError, OSError, SyntaxError):
        return None
    found = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == function]
    return ast.get_source_segment(text, found[0]) if found else None


def notebook_solutions(folder: Path, solution_id: str) -> dict[str, str]:
    """The solution cells ``solution_id`` of the instructor's notebooks in ``folder``: {"notebook NAME": code}."""
    found = {}
    for path in sorted(Path(folder).glob("*.ipynb")):
        try:
            cells = nbformat.read(path, as_version=4).cells
        except Exception:
            continue
        for cell in cells:
            meta = cell.get("metadata", {}).get("nbgrader", {})
            if cell.get("cell_type") == "code" and isinstance(meta, dict) and meta.get("grade_id") == solution_id:
                found[f"the instructor's {path.name}"] = cell.source
    return found


def reference_sources(exercise: Exercise, notebooks: Optional[Path] = None) -> dict[str, str]:
    """Every source of ``exercise``'s answer a solution is compared with: {name: code}.

    The registry's ``reference`` with the labutils functions of ``references.LIBRARY`` (as one source),
    the instructor's reference of ``references.REFERENCES``, and the solution cells of the instructor's
    notebooks in ``notebooks``."""
    from . import references

    sources = {}
    library = [name for name in (*references.LIBRARY.get(exercise.grade_id, ()), exercise.reference) if name]
    texts = [text for text in map(function_source, library) if text]
    if texts:
        sources[" + ".join(library)] = "\n\n".join(texts)
    if exercise.grade_id in references.REFERENCES:
        name = references.REFERENCES[exercise.grade_id].__name__
        text = function_source(f"labutils.instructor.references:{name}")
        if text:
            sources[f"labutils.instructor.references:{name}"] = text
    if notebooks is not None:
        sources.update(notebook_solutions(notebooks, exercise.solution_grade_id))
    return sources
