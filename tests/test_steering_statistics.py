"""The pieces phases 4.5 and 4.8 are built from: the exact McNemar test, the outcomes of a steered program
against its baseline, code divergence and what counts as valid code."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from common.code_extraction import defines_function
from common.code_similarity import char_similarity, length_ratio, token_similarity
from common.statistics import mcnemar_exact
from common.steered_runs import outcome_matrix, with_outcomes
from phase4_8.analysis import primary_tests


@pytest.mark.parametrize("b, c, p", [(5, 0, 2 / 32), (3, 1, 10 / 16), (0, 0, 1.0), (0, 7, 2 / 128), (4, 4, 1.0)])
def test_exact_mcnemar_matches_hand_computed_binomial_tails(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p)


def test_exact_mcnemar_matches_statsmodels():
    contingency = pytest.importorskip("statsmodels.stats.contingency_tables")
    for b, c in [(9, 2), (1, 6), (12, 12), (0, 3)]:
        expected = contingency.mcnemar([[10, b], [c, 20]], exact=True).pvalue
        assert mcnemar_exact(b, c) == pytest.approx(expected)


def _rows(arm: str, baseline: list[bool], steered: list[bool], error: str = "name") -> list[dict]:
    return [{"arm": arm, "task_id": i, "baseline_passed": b, "steered_passed": s, "steered_error_type": error}
            for i, (b, s) in enumerate(zip(baseline, steered))]


def test_each_outcome_is_defined_on_its_own_class_of_tasks_and_unjudged_programs_are_left_out():
    rows = pd.DataFrame(_rows("a", [True, True, False, False], [True, False, True, False])
                        + _rows("b", [True], [False], error="unsupported"))
    out = with_outcomes(rows).set_index("task_id")
    assert list(out["arm"]) == ["a"] * 4  # the unsupported row is gone
    assert out["kept"].tolist()[:2] == [True, False] and out["kept"].iloc[2:].isna().all()
    assert out["broken"].tolist()[:2] == [False, True] and out["fixed"].tolist()[2:] == [True, False]
    assert out["fixed"].iloc[:2].isna().all() and out["broken"].iloc[2:].isna().all()


def test_the_holm_family_is_what_the_config_declares_not_what_ran():
    ran = {"a": {"correct": {"versus_controls": {"correction": {"prediction_p": 0.01},
                                                 "preservation": {"prediction_p": 0.04}}}}}
    primary = primary_tests(ran, ["a", "b"], ["correction", "preservation"])
    assert primary["b/correction"] == {"p": 1.0, "holm_p": 1.0, "ran": False}
    assert primary["a/correction"]["holm_p"] == pytest.approx(0.04)  # 4 tests, not 2
    assert primary["a/preservation"]["holm_p"] == pytest.approx(0.12)


def test_the_outcome_matrix_keeps_only_tasks_every_arm_has():
    rows = pd.DataFrame(_rows("target", [False] * 4, [True, False, True, False])
                        + _rows("control", [False] * 3, [False, False, True]))
    matrix, tasks = outcome_matrix(with_outcomes(rows), ["target", "control"], "fixed")
    assert tasks == [0, 1, 2] and matrix.tolist() == [[True, False, True], [False, False, True]]


def test_code_similarity_counts_tokens_not_layout():
    a = "def f(x):\n    return x + 1\n"
    assert token_similarity(a, a) == char_similarity(a, a) == 1.0
    assert token_similarity(a, "def f(x):\n    return (x + 1)  # one\n") < 1.0
    assert token_similarity(a, "def f( x ):\n        return x+1\n") == 1.0 > char_similarity(a, "def f( x ):\n  return x+1\n")
    assert 0 < token_similarity(a, "def f(x:\n return x +") < 1  # does not tokenize: compared as words
    assert length_ratio("abcd", "ab") == 2.0 and length_ratio("", "") == 1.0 and np.isnan(length_ratio("a", ""))


def test_valid_code_parses_and_defines_the_function_under_test():
    assert defines_function("import os\n\ndef solve(x):\n    return x\n", "solve")
    assert not defines_function("4444444444444444\n", "solve")  # steered garbage that parses
    assert not defines_function("def solve(x:\n", "solve")
    assert not defines_function("def helper():\n    def solve():\n        pass\n", "solve")  # not top level
