"""AUROC, Brier and ECE with task-bootstrap intervals, checked against hand computations."""

from __future__ import annotations

import numpy as np

from common.calibration_metrics import calibration_metrics, paired_differences, reliability_table


def test_brier_and_ece_match_a_hand_computation():
    probability = np.array([0.05, 0.05, 0.35, 0.35, 0.35, 0.95, 0.95, 0.95, 0.95, 1.0])
    positive = np.array([0, 0, 1, 0, 0, 1, 1, 1, 0, 1], dtype=bool)
    tasks = np.arange(10).astype(str)
    result = calibration_metrics(probability, positive, tasks, n_resamples=200, seed=0)
    assert np.isclose(result["brier"]["value"], np.mean((probability - positive) ** 2))
    # bins [0, .1): gap .05 - 0 over 2; [.3, .4): .35 - 1/3 over 3; [.9, 1]: mean(.95 x4, 1.0) - 4/5 over 5
    by_hand = (2 * 0.05 + 3 * abs(0.35 - 1 / 3) + 5 * abs(0.96 - 0.8)) / 10
    assert np.isclose(result["ece"]["value"], by_hand)
    assert result["n_programs"] == 10 and result["n_passing"] == 5 and result["n_tasks"] == 10
    for metric in ("auroc", "brier", "ece"):
        assert result[metric]["low"] <= result[metric]["value"] <= result[metric]["high"]


def test_a_perfectly_calibrated_predictor_has_a_small_ece_and_its_reliability_lies_on_the_diagonal():
    rng = np.random.default_rng(0)
    probability = rng.uniform(size=20000)
    positive = rng.uniform(size=20000) < probability
    tasks = (np.arange(20000) // 4).astype(str)
    assert calibration_metrics(probability, positive, tasks, n_resamples=50)["ece"]["value"] < 0.02
    table = reliability_table(probability, positive)
    assert len(table) == 10 and sum(b["n_programs"] for b in table) == 20000
    assert all(abs(b["observed"]["rate"] - b["mean_predicted"]) < 0.04 for b in table)
    shifted = np.clip(probability + 0.2, 0, 1)
    assert calibration_metrics(shifted, positive, tasks, n_resamples=50)["ece"]["value"] > 0.15


def test_paired_differences_are_zero_against_itself_and_signed_for_a_better_predictor():
    rng = np.random.default_rng(1)
    positive = rng.uniform(size=400) < 0.3
    tasks = (np.arange(400) // 4).astype(str)
    good = np.where(positive, 0.7, 0.2) + rng.normal(0, 0.05, 400).clip(-0.15, 0.15)
    noise = rng.uniform(size=400)
    same = paired_differences(good, good, positive, tasks, n_resamples=100)
    assert all(same[m]["difference"] == 0 and same[m]["low"] == same[m]["high"] == 0 for m in same)
    better = paired_differences(good, noise, positive, tasks, n_resamples=100)
    assert better["auroc"]["low"] > 0 and better["brier"]["high"] < 0
