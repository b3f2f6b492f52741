"""From a family's draft (statement, reference code, candidate inputs) to a finished task.

A family proposes a function and some inputs; this module runs the reference solution on them (it
is our own generated code, run in-process), derives a deliberately wrong variant by mutating one
operator or constant of the reference, and picks asserts that include edge cases and at least one
input on which the wrong variant is caught. So every task's tests can tell right from wrong.
"""

from __future__ import annotations

import ast
import builtins
import copy
import keyword
import random
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

N_ASSERTS = 4
_STEP_BUDGET = 200_000  # traced lines per call: mutants may loop forever
_RESERVED_NAMES = set(dir(builtins)) | set(keyword.kwlist)


@dataclass
class Draft:
    family: str
    category: str
    level: int  # 1..4: how many primitives the solution composes
    name: str
    statement: str
    code: str
    inputs: list[tuple]  # argument tuples; edge cases first


@dataclass
class SyntheticTask:
    task_id: str
    family: str
    category: str
    difficulty: int
    statement: str
    entry_point: str
    reference_code: str
    wrong_code: str
    test_list: list[str] = field(default_factory=list)


class _Budget(Exception):
    pass


def call_with_budget(fn: Callable[..., Any], args: tuple) -> tuple[bool, Any]:
    """(ok, value) of fn(*args) on a copy of args; exceptions and runaway loops give (False, name)."""
    steps = [0]

    def tracer(frame, event, arg):
        steps[0] += 1
        if steps[0] > _STEP_BUDGET:
            raise _Budget
        return tracer

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        return True, fn(*copy.deepcopy(args))
    except _Budget:
        return False, "budget"
    except Exception as exc:  # noqa: BLE001 - any failure of generated code is data here
        return False, type(exc).__name__
    finally:
        sys.settrace(previous)


def compile_function(code: str, name: str) -> Callable[..., Any]:
    namespace: dict[str, Any] = {}
    exec(compile(code, f"<synthetic {name}>", "exec"), namespace)  # noqa: S102 - our own generated code
    return namespace[name]


class _Mutator(ast.NodeTransformer):
    """Applies the `target`-th possible mutation: a comparison, arithmetic, set or boolean operator
    swapped, an integer constant moved by one, a string constant changed, max/min/sum/len swapped,
    or the order of a sorted() call flipped."""

    _COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
                ast.NotEq: ast.Eq}
    _BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.FloorDiv: ast.Mod, ast.Mod: ast.FloorDiv,
              ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd, ast.BitXor: ast.BitOr}
    _BUILTINS = {"max": "min", "min": "max", "sum": "len", "len": "sum"}

    def __init__(self, target: int):
        self.target = target
        self.seen = 0

    def _hit(self) -> bool:
        self.seen += 1
        return self.seen - 1 == self.target

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        op = type(node.ops[0])
        if op in self._COMPARE and self._hit():
            node.ops[0] = self._COMPARE[op]()
        return node

    def visit_BinOp(self, node: ast.BinOp | ast.AugAssign) -> ast.AST:
        self.generic_visit(node)
        op = type(node.op)
        if op in self._BINOP and self._hit():
            node.op = self._BINOP[op]()
        return node

    visit_AugAssign = visit_BinOp  # `total += x` carries the same operator as `total + x`

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        if self._hit():
            node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if type(node.value) is int and self._hit():
            return ast.copy_location(ast.Constant(node.value + 1), node)
        if type(node.value) is str and self._hit():
            return ast.copy_location(ast.Constant(node.value[:-1] if len(node.value) > 1 else node.value + "_"), node)
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if isinstance(node.ctx, ast.Load) and node.id in self._BUILTINS and self._hit():
            return ast.copy_location(ast.Name(self._BUILTINS[node.id], ast.Load()), node)
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id == "sorted" and self._hit():
            flipped = [k for k in node.keywords if k.arg != "reverse"]
            if len(flipped) == len(node.keywords):
                flipped.append(ast.keyword("reverse", ast.Constant(True)))
            node.keywords = flipped
        return node


def mutants(code: str) -> list[str]:
    """Every single-point mutation of `code`, as source."""
    tree = ast.parse(code)
    counter = _Mutator(-1)
    counter.visit(copy.deepcopy(tree))
    out = []
    for target in range(counter.seen):
        mutated = _Mutator(target).visit(copy.deepcopy(tree))
        out.append(ast.unparse(ast.fix_missing_locations(mutated)) + "\n")
    return out


def finish(draft: Draft, task_id: str, rng: random.Random) -> SyntheticTask | None:
    """The task with its asserts and wrong variant, or None if no mutant is caught by its inputs."""
    if draft.name in _RESERVED_NAMES:  # `assert sum([]) == 0` would pass whatever the model wrote
        return None
    reference = compile_function(draft.code, draft.name)
    results = []
    for args in draft.inputs:
        ok, value = call_with_budget(reference, args)
        if ok and (args, value) not in results:
            results.append((args, value))
    if len(results) < 3:
        return None
    candidates = mutants(draft.code)
    rng.shuffle(candidates)
    for wrong_code in candidates:
        try:
            wrong = compile_function(wrong_code, draft.name)
        except Exception:  # noqa: BLE001 - a mutant that does not even define the function
            continue
        catching = [i for i, (args, value) in enumerate(results) if call_with_budget(wrong, args) != (True, value)]
        if catching:
            chosen = _choose_asserts(len(results), catching[0], rng)
            asserts = [_assert(draft.name, *results[i]) for i in chosen]
            return SyntheticTask(task_id, draft.family, draft.category, draft.level, draft.statement, draft.name,
                                 draft.code, wrong_code, asserts)
    return None


def _choose_asserts(n_results: int, catching: int, rng: random.Random) -> list[int]:
    """Two edge cases (the first inputs), the catching input, then random others; original order kept."""
    chosen = {0, 1, catching}
    others = [i for i in range(n_results) if i not in chosen]
    rng.shuffle(others)
    for i in others:
        if len(chosen) >= N_ASSERTS:
            break
        chosen.add(i)
    return sorted(chosen)


def _assert(name: str, args: tuple, value: Any) -> str:
    call = f"{name}({', '.join(repr(a) for a in args)})"
    if value is None:
        return f"assert {call} is None"
    if value is True:
        return f"assert {call} == True"
    if value is False:
        return f"assert {call} == False"
    return f"assert {call} == {value!r}"
