"""The pieces phases 4.5 and 4.8 are built from: tests, intervals, problem choice, the coefficient rule,
code divergence and the residual-norm yardstick."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from common.activation_cache import mean_residual_norms
from common.code_extraction import defines_function
from common.code_similarity import char_similarity, length_ratio, token_similarity
from common.statistics import compare_with_controls, mcnemar_exact
from phase4_5.runner import propose_coefficient, stratified_by_complexity
from phase4_8.analysis import steering_effects


@pytest.mark.parametrize("b, c, p", [(5, 0, 2 / 32), (3, 1, 10 / 16), (0, 0, 1.0), (0, 7, 2 / 128), (4, 4, 1.0)])
def test_exact_mcnemar_matches_hand_computed_binomial_tails(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p)


def test_exact_mcnemar_matches_statsmodels():
    contingency = pytest.importorskip("statsmodels.stats.contingency_tables")
    for b, c in [(9, 2), (1, 6), (12, 12), (0, 3)]:
        expected = contingency.mcnemar([[10, b], [c, 20]], exact=True).pvalue
        assert mcnemar_exact(b, c) == pytest.approx(expected)


def test_control_comparison_on_a_hand_case():
    target = np.array([1, 1, 0, 0], dtype=bool)
    controls = np.array([[1, 0, 0, 0], [0, 0, 0, 0]], dtype=bool)
    result = compare_with_controls(target, controls, bootstrap_samples=500, seed=0)
    assert (result["target"]["successes"], result["target"]["trials"]) == (2, 4)
    assert (result["pooled_control"]["successes"], result["pooled_control"]["trials"]) == (1, 8)
    assert result["difference"] == pytest.approx(0.5 - 0.125)
    low, high = result["difference_interval"]
    assert low <= 0.375 <= high
    assert result["controls_at_or_above_target"] == 0 and result["rank_p"] == pytest.approx(1 / 3)
    assert result["control_rates"] == [0.25, 0.0]
    assert 0 < result["fisher_p"] < 1


def test_a_direction_no_better_than_its_controls_is_not_called_better():
    """300 experiments where the target is one more control (tasks differ in how easily they flip): the
    task bootstrap interval covers 0 about 95% of the time and Fisher's test rarely says p < 0.05."""
    covered = significant = 0
    for trial in range(300):
        rng = np.random.default_rng(100 + trial)
        flips = rng.random((6, 200)) < rng.beta(0.5, 2.0, size=200)  # six exchangeable directions
        result = compare_with_controls(flips[0], flips[1:], bootstrap_samples=1000, seed=trial)
        low, high = result["difference_interval"]
        covered += low < 0 < high
        significant += result["fisher_p"] < 0.05
    assert 0.90 <= covered / 300 <= 0.99
    assert significant / 300 <= 0.08
    rng = np.random.default_rng(4)
    strong = compare_with_controls(rng.random(300) < 0.6, rng.random((5, 300)) < 0.2, bootstrap_samples=2000, seed=1)
    assert strong["difference_interval"][0] > 0.2 and strong["fisher_p"] < 1e-6
    assert strong["controls_at_or_above_target"] == 0 and strong["rank_p"] == pytest.approx(1 / 6)


def _correction_rows(arm: str, valid_tasks: range, fixed_tasks: list[int], n_tasks: int = 100) -> pd.DataFrame:
    fixed = np.isin(np.arange(n_tasks), fixed_tasks)
    return pd.DataFrame({"arm": arm, "task_id": [f"t{i}" for i in range(n_tasks)], "direction": arm,
                         "source": "random", "layer": 3, "alpha": 10.0, "token_similarity": 0.5,
                         "baseline_passed": False, "steered_passed": fixed, "flipped": fixed,
                         "steered_valid_code": np.isin(np.arange(n_tasks), valid_tasks)})


def test_a_direction_that_only_breaks_less_code_is_no_better_among_valid_code():
    """The target keeps 80 of 100 programs valid and fixes 4; each control keeps 10 valid and the five
    together fix 2. Over all tasks the target looks better; among valid programs (4/80 vs 2/50) it is not."""
    target = _correction_rows("sae/correct", range(80), [0, 1, 2, 3])
    controls = [_correction_rows(f"control/correct/random_{c}", range(10 * c, 10 * c + 10), fixed)
                for c, fixed in enumerate([[0], [], [25], [], []])]
    effects = steering_effects(pd.concat([target, *controls]), bootstrap_samples=200, seed=0)
    correction = effects["correct"]["by_method"]["sae"]["correction"]
    assert correction["vs_controls"]["fisher_p"] < 0.05
    given_valid = correction["given_valid_code"]
    assert (given_valid["target"]["successes"], given_valid["target"]["trials"]) == (4, 80)
    assert (given_valid["pooled_control"]["successes"], given_valid["pooled_control"]["trials"]) == (2, 50)
    assert given_valid["fisher_p"] == pytest.approx(1.0)


def test_stratified_choice_spreads_over_complexity_and_is_reproducible():
    pool = pd.DataFrame({"task_id": [f"t{i:02d}" for i in range(30)], "cyclomatic_complexity": list(range(30, 0, -1))})
    picked = stratified_by_complexity(pool, 5, seed=3)
    complexities = sorted(picked["cyclomatic_complexity"])
    assert [(c - 1) // 6 for c in complexities] == [0, 1, 2, 3, 4]  # one from each sixth of the range
    assert picked["task_id"].tolist() == stratified_by_complexity(pool, 5, seed=3)["task_id"].tolist()
    assert len(stratified_by_complexity(pool.head(4), 5, seed=3)) == 4  # a short pool is used whole


def _metrics(coefficient: float, flips: int, invalid: int, n: int = 10) -> dict:
    return {"coefficient": coefficient, "n_problems": n, "flip_rate": {"successes": flips, "trials": n},
            "valid_code_rate": {"successes": n - invalid, "trials": n, "rate": (n - invalid) / n}}


def test_the_coefficient_rule():
    grid = [_metrics(1, 0, 0), _metrics(10, 3, 1), _metrics(30, 3, 2), _metrics(100, 8, 5)]
    assert propose_coefficient(grid, 0.8)[0] == 10  # 100 flips more but breaks half the code; 10 ties 30, smaller
    assert propose_coefficient(grid, 0.4)[0] == 100
    nothing = [_metrics(1, 0, 0), _metrics(10, 0, 1), _metrics(100, 0, 9)]
    coefficient, why = propose_coefficient(nothing, 0.8)
    assert coefficient == 10 and "no coefficient flipped" in why
    broken = [_metrics(1, 0, 5), _metrics(10, 2, 6)]
    assert propose_coefficient(broken, 0.8) == (1, "no coefficient kept valid code >= 80%; the smallest is proposed")


def test_code_similarity_counts_tokens_not_layout():
    a = "def f(x):\n    return x + 1\n"
    assert token_similarity(a, a) == char_similarity(a, a) == 1.0
    assert token_similarity(a, "def f(x):\n    return (x + 1)  # one\n") < 1.0
    assert token_similarity(a, "def f( x ):\n        return x+1\n") == 1.0 > char_similarity(a, "def f( x ):\n  return x+1\n")
    assert 0 < token_similarity(a, "def f(x:\n return x +") < 1  # does not tokenize: compared as words
    assert length_ratio("abcd", "ab") == 2.0 and length_ratio("", "") == 1.0 and np.isnan(length_ratio("a", ""))


def test_mean_residual_norm_equals_the_norm_of_the_hidden_states(tiny_model):
    model, tokenizer = tiny_model
    prompts = ["def add(a, b):", "Write a function that reverses a list of numbers and returns it."]
    norms = mean_residual_norms(model, tokenizer, prompts, [1, 2], batch_size=1)
    for layer in (1, 2):
        expected = []
        for prompt in prompts:
            encoded = tokenizer(prompt, return_tensors="pt")
            with torch.no_grad():
                hidden = model(**encoded, output_hidden_states=True).hidden_states[layer + 1][0]
            expected.append(hidden[1:].norm(dim=-1))
        assert norms[layer] == pytest.approx(float(torch.cat(expected).mean()), rel=1e-5)
    batched = mean_residual_norms(model, tokenizer, prompts, [1, 2], batch_size=2)  # left padding left out
    assert batched[1] == pytest.approx(norms[1], rel=1e-4)


def test_valid_code_parses_and_defines_the_function_under_test():
    assert defines_function("import os\n\ndef solve(x):\n    return x\n", "solve")
    assert not defines_function("4444444444444444\n", "solve")  # steered garbage that parses
    assert not defines_function("def solve(x:\n", "solve")
    assert not defines_function("def helper():\n    def solve():\n        pass\n", "solve")  # not top level
