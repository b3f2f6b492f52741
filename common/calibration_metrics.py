"""How good a probability of "this program passes" is: AUROC (ranking), Brier score and expected calibration error
(calibration), a reliability table, and task-bootstrap intervals for all three.

ECE uses `ECE_BINS` equal-width bins of the predicted probability: the share-weighted mean gap between the mean
prediction and the observed pass rate in each bin. Every interval resamples tasks (the programs of one task are not
independent); the three metrics are computed on the same resamples, so their differences between two predictors on
the same rows can be read from `paired_differences`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from common.classification import group_bootstrap_counts, percentile_interval, weighted_aurocs
from common.statistics import rate

ECE_BINS = 10
METRICS = ("auroc", "brier", "ece")


def _bins(probability: np.ndarray) -> np.ndarray:
    """Bin index 0..ECE_BINS-1 of each prediction; 1.0 falls in the last bin."""
    return np.minimum((np.asarray(probability, dtype=float) * ECE_BINS).astype(int), ECE_BINS - 1)


def _weighted_metrics(probability: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric under each row of `weights` [n_resamples, n_rows] (how often each row was drawn)."""
    gap = probability - positive
    totals = weights.sum(1)
    one_hot = np.eye(ECE_BINS)[_bins(probability)]  # [n_rows, bins]
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"auroc": weighted_aurocs(probability, positive, weights),
                "brier": weights @ gap ** 2 / totals,
                "ece": np.abs((weights * gap) @ one_hot).sum(1) / totals}


def _point_and_draws(probability: np.ndarray, positive: np.ndarray, counts: np.ndarray
                     ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Each metric on the rows as they are, and under each task resample of `counts`."""
    probability = np.asarray(probability, dtype=float)
    point = _weighted_metrics(probability, positive, np.ones((1, len(probability))))
    return {name: float(values[0]) for name, values in point.items()}, _weighted_metrics(probability, positive, counts)


def calibration_metrics(probability: np.ndarray, positive: np.ndarray, tasks: np.ndarray, n_resamples: int = 1000,
                        seed: int = 0) -> dict[str, Any]:
    """AUROC, Brier and ECE of `probability` against `positive`, each with a 95% task-bootstrap interval."""
    positive = np.asarray(positive, dtype=bool)
    point, draws = _point_and_draws(probability, positive, group_bootstrap_counts(tasks, n_resamples, seed))
    return {"n_programs": len(positive), "n_passing": int(positive.sum()), "n_tasks": len(set(tasks)),
            **{name: {"value": point[name], **percentile_interval(draws[name])} for name in METRICS}}


def paired_differences(probability: np.ndarray, reference: np.ndarray, positive: np.ndarray, tasks: np.ndarray,
                       n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Each metric of `probability` minus that of `reference` on the same rows, the interval from the same task
    resamples for both (positive AUROC and negative Brier or ECE differences favour `probability`)."""
    positive = np.asarray(positive, dtype=bool)
    counts = group_bootstrap_counts(tasks, n_resamples, seed)
    (mine, mine_draws), (theirs, their_draws) = (_point_and_draws(p, positive, counts)
                                                 for p in (probability, reference))
    return {name: {"difference": mine[name] - theirs[name], **percentile_interval(mine_draws[name] - their_draws[name])}
            for name in METRICS}


def reliability_table(probability: np.ndarray, positive: np.ndarray) -> list[dict[str, Any]]:
    """Per non-empty bin: its range, how many programs, their mean prediction and their observed pass rate with
    a Wilson interval (the points and bars of a reliability diagram)."""
    probability, positive = np.asarray(probability, dtype=float), np.asarray(positive, dtype=bool)
    bins = _bins(probability)
    table = []
    for b in range(ECE_BINS):
        members = bins == b
        if members.any():
            observed = rate(int(positive[members].sum()), int(members.sum())).to_dict()
            table.append({"bin": [b / ECE_BINS, (b + 1) / ECE_BINS], "n_programs": int(members.sum()),
                          "mean_predicted": float(probability[members].mean()), "observed": observed})
    return table
