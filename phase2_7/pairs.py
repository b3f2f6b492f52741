"""Contrastive pairs for phase 2.7: a program that passes its task's tests against one that fails them.

Two kinds, both verified in the sandbox:
- `mutant`: the task's reference solution against a single-point AST mutation of it (common/synthetic/engine.py)
  that fails the tests (a timeout does not count: under load it can be flaky). Both sides are rendered by
  `ast.unparse`, so the pair differs in the mutated token only (comments and layout of the reference would
  otherwise differ too). Any dataset with reference code has them.
- `own`: a passing and a failing program the model itself wrote for the task in phase 1, where it wrote both.
For a multiple-choice question the minimal pair is its correct option's letter against a wrong one's (kind `mutant`,
so every reader treats it as the minimal pair it is), and `own` pairs are the model's right and wrong answers.
A third kind is a control, never fitted on: `equivalent`, the reference against a mutant that still passes
every test of the task. Equivalent under those tests only: many are wrong programs the few asserts miss (`>= 50`
made `>= 51`), so a direction about correctness may order some of them; one about "looks mutated" orders them
as well as the failing ones.
Each side becomes the text a model would have answered (`as_output`), so the teacher-forced pass reads it where the
model's own answer would sit.
"""

from __future__ import annotations

import ast
import random
import textwrap
from typing import Any, Mapping

import pandas as pd

from common.answer_formats import CHOICE, WRONG_OPTION, choice_output, option_letters, split_format
from common.contrastive_pairs import ContrastivePair
from common.prompt_utils import PromptBuilder
from common.sandbox import Program, evaluate_many
from common.synthetic.engine import mutants

CANDIDATES_PER_MUTANT = 3  # mutants tried per mutant wanted: many change nothing the tests see (e.g. a docstring)
UNRELIABLE_VERDICTS = ("unsupported", "timeout", "memory", "killed")  # no label, or one that load can change


def as_output(code: str, problem: Mapping[str, Any], builder: PromptBuilder) -> str:
    """The answer text holding `code`: a fenced block in chat style; for a base prompt, the code on the line after
    "# Solution:", or, where the prompt is a stub to complete (HumanEval), the body of the stub's function."""
    if builder.style != "base":
        return f"```python\n{code.rstrip()}\n```"
    body = _function_body(code, str(problem["entry_point"])) if builder.code_prefix(problem) else None
    return body if body is not None else "\n" + code


def _function_body(code: str, name: str) -> str | None:
    """The statements of function `name` after its docstring, indented as a completion of its stub writes them;
    None when the code defines no such top-level function."""
    function = next((node for node in ast.parse(code).body if isinstance(node, ast.FunctionDef) and node.name == name),
                    None)
    if function is None:
        return None
    body = function.body[1:] if ast.get_docstring(function) is not None else function.body
    return "".join(textwrap.indent(ast.unparse(statement), "    ") + "\n" for statement in body)


def _normalised(code: str) -> str | None:
    try:
        return ast.unparse(ast.parse(code)) + "\n"
    except (SyntaxError, ValueError):
        return None


def _changed_line(before: str, after: str) -> list[str]:
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
    return [changed[0][0].strip(), changed[0][1].strip()] if changed else []


def mutant_pairs(problems: pd.DataFrame, builder: PromptBuilder, per_task: int, seed: int, exec_timeout_s: float
                 ) -> tuple[list[ContrastivePair], dict[str, int]]:
    """Up to `per_task` (reference, failing mutant) pairs per task, and as many (reference, passing mutant) controls
    of kind `equivalent`, every side verified in one sandbox batch. Pairs whose two answer texts are the same (a
    mutation outside what the answer holds) are left out. Multiple-choice questions get `option_pairs`."""
    records = problems.to_dict("records")
    if split_format(records) is CHOICE:
        return option_pairs(records, per_task, seed), {}
    candidates: list[tuple[int, str, str, int]] = []  # (problem row, reference, mutant, mutation index)
    skipped = {"reference_not_parsed": 0, "no_mutant": 0}
    for row, problem in enumerate(records):
        reference = _normalised(str(problem["reference_code"]))
        if reference is None:
            skipped["reference_not_parsed"] += 1
            continue
        pool = [(i, m) for i, m in enumerate(mutants(reference)) if m != reference]
        random.Random(f"{seed}/{problem['task_id']}").shuffle(pool)
        if not pool:
            skipped["no_mutant"] += 1
        candidates += [(row, reference, m, i) for i, m in pool[:per_task * CANDIDATES_PER_MUTANT]]
    references = {row: reference for row, reference, _, _ in candidates}
    programs = [Program(builder.code_prefix(records[row]) + code, records[row]["tests"])
                for row, code in [*references.items(), *((r, m) for r, _, m, _ in candidates)]]
    results = evaluate_many(programs, timeout=exec_timeout_s, description="verifying references and mutants")
    reference_passed = {row: result.passed for row, result in zip(references, results)}
    pairs: list[ContrastivePair] = []
    taken: dict[tuple[int, str], int] = {}
    for (row, reference, mutant, index), result in zip(candidates, results[len(references):]):
        if not reference_passed[row] or result.error_type in UNRELIABLE_VERDICTS:
            continue
        kind = "equivalent" if result.passed else "mutant"
        problem = records[row]
        positive, negative = as_output(reference, problem, builder), as_output(mutant, problem, builder)
        if taken.get((row, kind), 0) >= per_task or positive == negative:
            continue
        taken[row, kind] = taken.get((row, kind), 0) + 1
        pairs.append(ContrastivePair(str(problem["task_id"]), kind, reference, mutant, positive, negative,
                                     {"mutation_index": index, "changed_line": _changed_line(reference, mutant),
                                      "negative_error_type": result.error_type}))
    skipped["reference_failed"] = sum(not passed for passed in reference_passed.values())
    skipped["tasks_without_a_failing_mutant"] = sum(passed and (row, "mutant") not in taken
                                                    for row, passed in reference_passed.items())
    return pairs, skipped


def option_pairs(records: list[dict[str, Any]], per_task: int, seed: int) -> list[ContrastivePair]:
    """Up to `per_task` (correct option, wrong option) pairs per question, the wrong options in a seeded order; the
    answer key is the verdict, so nothing needs running."""
    pairs = []
    for problem in records:
        correct = str(problem["correct_option"])
        wrong = [letter for letter in option_letters(len(problem["options"])) if letter != correct]
        random.Random(f"{seed}/{problem['task_id']}").shuffle(wrong)
        pairs += [ContrastivePair(str(problem["task_id"]), "mutant", correct, letter, choice_output(correct),
                                  choice_output(letter), {"wrong_option": letter, "negative_error_type": WRONG_OPTION})
                  for letter in wrong[:per_task]]
    return pairs


def own_pairs(table: pd.DataFrame, problems: pd.DataFrame, builder: PromptBuilder, per_task: int, seed: int
              ) -> list[ContrastivePair]:
    """Up to `per_task` distinct (passing, failing) pairs of the model's own programs per task where it wrote both;
    the labels are phase 1's sandbox verdicts, and programs without a reliable one are left out. Samples often repeat
    a text (a multiple-choice answer is one letter), and a repeated pair would only weigh its task more."""
    by_task = {str(p["task_id"]): p for p in problems.to_dict("records")}
    judged = table[~table["error_type"].isin(UNRELIABLE_VERDICTS) & table["generated_code"].astype(bool)]
    pairs = []
    for task_id, group in judged.groupby("task_id", sort=True):
        good = group[group["test_passed"]].to_dict("records")
        bad = group[~group["test_passed"]].to_dict("records")
        if not good or not bad or str(task_id) not in by_task:
            continue
        rng = random.Random(f"{seed}/{task_id}/own")
        rng.shuffle(good)
        rng.shuffle(bad)
        seen = set()
        for i in range(min(per_task, max(len(good), len(bad)))):  # the shorter side's programs recur
            passing, failing = good[i % len(good)], bad[i % len(bad)]
            texts = (passing["raw_output"], failing["raw_output"])
            if texts[0] == texts[1] or texts in seen:  # one text judged both ways, or a pair already taken
                continue
            seen.add(texts)
            pairs.append(ContrastivePair(str(task_id), "own", passing["generated_code"], failing["generated_code"],
                                         passing["raw_output"], failing["raw_output"],
                                         {"positive_sample": int(passing["sample_idx"]),
                                          "negative_sample": int(failing["sample_idx"]),
                                          "negative_error_type": failing["error_type"]}))
    return pairs
