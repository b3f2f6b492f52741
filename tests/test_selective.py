"""Selective steering: gates chosen on one split, and the selective arm derived from the full arm's rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from common.classification import youden_threshold
from common.errors import PipelineError
from common.gates import choose_gate, flags
from common.steered_runs import with_outcomes
from phase4_8.analysis import selective_effects


def test_youden_threshold_does_not_flag_everything_when_failing_is_the_majority():
    rng = np.random.default_rng(0)
    failed = rng.random(400) < 0.8
    scores = np.where(failed, 1.0, -1.0) + rng.normal(0, 0.5, 400)
    threshold = youden_threshold(scores, failed)
    assert -0.6 < threshold < 0.6  # near the midpoint of the two classes, not the lowest score
    assert (scores >= threshold)[~failed].mean() < 0.1 and (scores >= threshold)[failed].mean() > 0.9


def test_a_gate_orients_a_pass_score_and_flags_programs_without_a_score():
    rng = np.random.default_rng(1)
    failed = rng.random(200) < 0.6
    passing_score = np.where(failed, -2.0, 2.0) + rng.normal(0, 0.3, 200)
    gate = choose_gate("detector", "planted", "code_last", "pass", True, passing_score, failed)
    assert gate.hyperparams_auroc == pytest.approx(1.0) and gate.hyperparams_flag_rate == pytest.approx(failed.mean())
    assert list(flags(np.array([-3.0, 3.0, np.nan]), gate)) == [True, False, True]


def _rows(baseline: list[bool], steered: list[bool]) -> pd.DataFrame:
    return with_outcomes(pd.DataFrame({"task_id": [f"t{i}" for i in range(len(baseline))],
                                       "baseline_passed": baseline, "steered_passed": steered,
                                       "steered_error_type": None}))


def test_selective_steering_keeps_the_baseline_where_the_gate_is_silent():
    # failing t0-t3: t0 and t1 fixed by steering, only t0 flagged; passing t4-t6: t4 and t5 broken, only t4 flagged
    rows = _rows([False, False, False, False, True, True, True], [True, True, False, False, False, False, True])
    flagged = pd.Series([True, False, True, True, True, False, False], index=[f"t{i}" for i in range(7)])
    result = selective_effects(rows, flagged.sample(frac=1.0, random_state=0))  # matched by task, not by order
    assert (result["correction"]["successes"], result["correction"]["trials"]) == (1, 4)
    assert (result["preservation"]["successes"], result["preservation"]["trials"]) == (2, 3)
    assert result["net_tasks_fixed"] == 0 and result["full_arm"]["net_tasks_fixed"] == 0
    assert result["flagged"]["failing"]["successes"] == 3 and result["flagged"]["passing"]["successes"] == 1
    assert result["uninformed_gate_expected"]["correction"] == pytest.approx(2 * 4 / 7 / 4)
    assert result["uninformed_gate_expected"]["preservation"] == pytest.approx(1 - 2 * 4 / 7 / 3)
    matched = result["class_matched_gate_expected"]  # 3 of 4 failing flagged, 1 of 3 passing
    assert matched["fixes_kept"] == pytest.approx(2 * 3 / 4) and matched["correction"] == pytest.approx(1.5 / 4)
    assert matched["preservation"] == pytest.approx(1 - 2 * (1 / 3) / 3)
    # drawing 3 of 4 failing tasks, 2 of them fixable: at least 1 fixable always; exactly 1 with chance 1/2
    assert matched["fixes_kept_p"] == pytest.approx(1.0)
    assert result["perfect_gate"] == {"correction": 0.5, "preservation": 1.0}


def test_a_gate_that_misses_steered_tasks_is_refused():
    rows = _rows([False, True], [True, True])
    with pytest.raises(PipelineError, match="miss 1 steered tasks"):
        selective_effects(rows, pd.Series([True], index=["t0"]))


def test_a_gate_that_keeps_no_fixes_among_many_is_unlikely_by_chance():
    failing = 40
    rows = _rows([False] * failing, [True] * 10 + [False] * 30)  # t0-t9 fixable
    flagged = pd.Series([False] * 10 + [True] * 30, index=[f"t{i}" for i in range(failing)])
    matched = selective_effects(rows, flagged)["class_matched_gate_expected"]
    assert matched["fixes_kept"] == pytest.approx(7.5) and matched["fixes_kept_p"] < 1e-6


def test_a_gate_that_flags_everything_is_the_full_arm():
    rows = _rows([False, True, False, True], [True, False, False, True])
    result = selective_effects(rows, pd.Series(True, index=[f"t{i}" for i in range(4)]))
    assert result["correction"] == result["full_arm"]["correction"]
    assert result["preservation"] == result["full_arm"]["preservation"]
