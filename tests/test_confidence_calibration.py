"""Phase 3.9's calibrator and its comparisons, on planted splits held in memory: the validation verdicts never reach a
fit, a routing signal planted in the prompt activations is recovered, and the base rate is what a choice must beat."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from common.calibration_metrics import calibration_metrics
from common.positions import LAST_PROMPT
from common.split_tables import Split
from common.steering_dictionary import SteeringDictionary
from phase3_9.runner import CONFIDENCE, DELTA_LOGPROB, _loo_brier, _predictions

LAYER, D_MODEL = 3, 8


def _split(name: str, n_tasks: int, seed: int) -> Split:
    """Half the tasks' prompts lie near the dictionary's first mean and pass 80% of the time (a sharp route), half
    between its two means and pass 20% (an undecided one: the routing features measure how sharp a route is); two
    programs per task whose margins are noise."""
    rng = np.random.default_rng(seed)
    kind = np.repeat(np.arange(n_tasks) % 2, 2)
    centres = np.stack([np.eye(D_MODEL)[0] * 3, (np.eye(D_MODEL)[0] + np.eye(D_MODEL)[1]) * 1.5])
    hidden = torch.tensor(centres[kind] + rng.normal(0, 0.3, (2 * n_tasks, D_MODEL)), dtype=torch.float32)
    table = pd.DataFrame({"task_id": np.repeat([f"{name}{i}" for i in range(n_tasks)], 2),
                          "test_passed": rng.uniform(size=2 * n_tasks) < np.where(kind == 0, 0.8, 0.2),
                          "program_mean_margin": rng.normal(1.0, 0.3, 2 * n_tasks)})
    return Split(name, table, [], None, {(LAST_PROMPT, LAYER): hidden})


DICTIONARY = SteeringDictionary(LAYER, torch.eye(2, D_MODEL), torch.eye(D_MODEL), torch.zeros(D_MODEL),
                                torch.zeros(D_MODEL), torch.ones(D_MODEL), 10.0)


def test_the_calibrator_recovers_a_routing_signal_and_never_sees_validation_verdicts():
    sae, choose, report = _split("s", 60, 0), _split("h", 40, 1), _split("v", 100, 2)
    predictions = _predictions(DICTIONARY, sae.table, choose, report)
    assert {CONFIDENCE, "routing_only", DELTA_LOGPROB} <= set(predictions)
    routing = calibration_metrics(predictions["routing_only"], report.passed, report.tasks, 100)
    margin = calibration_metrics(predictions[DELTA_LOGPROB], report.passed, report.tasks, 100)
    assert routing["auroc"]["low"] > 0.65 and margin["auroc"]["value"] < 0.62
    flipped = Split("v", report.table.assign(test_passed=~report.passed), [], None, report._loaded)
    again = _predictions(DICTIONARY, sae.table, choose, flipped)
    assert all(np.array_equal(again[name], predictions[name]) for name in predictions)


def test_the_base_rate_is_each_task_scored_by_the_other_tasks_pass_rate():
    choose = _split("h", 20, 3)
    passed, tasks = choose.passed, choose.tasks
    by_hand = np.mean([(passed[tasks != t].mean() - p) ** 2 for t, p in zip(tasks, passed)])
    assert np.isclose(_loo_brier(None, choose), by_hand)
    assert _loo_brier(DICTIONARY, choose) < _loo_brier(None, choose)  # the planted routing helps
