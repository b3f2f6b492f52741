"""The built-in graded task set: right solutions pass, wrong ones are caught, difficulty is real."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import pytest

from common.datasets import cyclomatic_complexity, load_problems
from common.sandbox import Program, evaluate_many
from common.synthetic import FAMILY_NAMES, draft_for, generate_tasks
from common.synthetic.engine import call_with_budget, compile_function, mutants

CATEGORIES = {"arithmetic", "strings", "lists", "dicts", "sets", "control flow", "recursion", "sorting", "searching",
              "parsing", "formatting"}


@pytest.fixture(scope="module")
def tasks():
    return generate_tasks(500, 1234)


def test_size_families_categories_and_levels(tasks):
    assert len(tasks) == 500
    assert len(FAMILY_NAMES) >= 25 and {t.family for t in tasks} == set(FAMILY_NAMES)
    assert {t.category for t in tasks} == CATEGORIES
    cells = Counter((t.family, t.difficulty) for t in tasks)
    assert all(cells[(family, level)] >= 1 for family in FAMILY_NAMES for level in (1, 2, 3, 4))


def test_statements_are_unique_and_mbpp_style(tasks):
    assert len({t.statement for t in tasks}) == len(tasks)
    assert all(t.statement.startswith(("Write", "Create", "Implement", "Define")) for t in tasks)
    assert all(len(t.test_list) >= 3 for t in tasks)
    assert all(t.test_list[0].startswith(f"assert {t.entry_point}(") for t in tasks)


def test_deterministic_for_a_seed(tasks):
    again = generate_tasks(500, 1234)
    assert ([(t.statement, t.reference_code, t.test_list, t.wrong_code) for t in again] ==
        [(t.statement, t.reference_code, t.test_list, t.wrong_code) for t in tasks])
    other = generate_tasks(60, 99)
    assert [t.statement for t in other] != [t.statement for t in tasks[:60]]


def test_every_reference_passes_and_every_wrong_variant_fails_in_the_sandbox(tasks):
    tests = ["\n".join(t.test_list) + "\n" for t in tasks]
    right = evaluate_many([Program(t.reference_code, test) for t, test in zip(tasks, tests)], progress=False)
    wrong = evaluate_many([Program(t.wrong_code, test) for t, test in zip(tasks, tests)], progress=False)
    assert [t.task_id for t, r in zip(tasks, right) if not r.passed] == []
    assert [t.task_id for t, r in zip(tasks, wrong) if r.passed] == []
    caught_by_family = defaultdict(set)
    for task, result in zip(tasks, wrong):
        caught_by_family[task.family].add(result.error_type)
    assert set(caught_by_family) == set(FAMILY_NAMES)


def test_difficulty_is_a_real_axis(tasks):
    """Higher levels compose more primitives, so their reference solutions branch more."""
    by_level = defaultdict(list)
    for task in tasks:
        by_level[task.difficulty].append(cyclomatic_complexity(task.reference_code))
    means = [sum(by_level[level]) / len(by_level[level]) for level in (1, 2, 3, 4)]
    assert means == sorted(means) and means[3] - means[0] > 1.0, means
    lengths = [sum(len(t.statement) for t in tasks if t.difficulty == level) for level in (1, 2, 3, 4)]
    counts = Counter(t.difficulty for t in tasks)
    per_task = [lengths[i] / counts[i + 1] for i in range(4)]
    assert per_task == sorted(per_task), per_task


def test_level_weights_shape_the_mix():
    easy = Counter(t.difficulty for t in generate_tasks(104, 5, (1, 0, 0, 1)))
    assert set(easy) == {1, 4} and abs(easy[1] - easy[4]) <= 4


def test_mutants_change_behaviour():
    code = "def f(xs):\n    total = 0\n    for x in xs:\n        if x > 2:\n            total += x\n    return total\n"
    variants = mutants(code)
    assert len(variants) >= 4 and code not in variants
    behaviours = {call_with_budget(compile_function(v, "f"), ([1, 2, 3, 4],)) for v in variants}
    assert len(behaviours) > 2


def test_runaway_mutant_is_stopped():
    looping = compile_function("def f(n):\n    while n >= 0:\n        n += 1\n    return n\n", "f")
    assert call_with_budget(looping, (1,)) == (False, "budget")


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_each_family_drafts_runnable_code_at_every_level(family):
    for level in (1, 2, 3, 4):
        draft = draft_for(family, random.Random(level), level)
        function = compile_function(draft.code, draft.name)
        assert sum(call_with_budget(function, args)[0] for args in draft.inputs) >= 3


def test_phase_0_schema_for_synthetic():
    problems = load_problems("synthetic", n_tasks=60, synthetic_seed=3).problems
    assert len(problems) == 60
    assert all(p.source == "synthetic" and 1 <= p.difficulty <= 4 and p.family for p in problems)
    assert all(p.prompt_stub.startswith(f"def {p.entry_point}(") for p in problems)


def test_no_entry_point_shadows_a_builtin(tasks):
    import builtins
    import keyword

    assert not [t.entry_point for t in tasks if t.entry_point in dir(builtins) or keyword.iskeyword(t.entry_point)]


def test_combined_filters_never_contradict(tasks):
    """Two filters of one group (even AND odd) would keep nothing and make a trivial task."""
    contradictions = ("% 2 == 0 and x % 2 == 1", "% 2 == 1 and x % 2 == 0", "> 0 and x < 0", "< 0 and x > 0")
    assert not [t.task_id for t in tasks if any(c in t.reference_code for c in contradictions)]
