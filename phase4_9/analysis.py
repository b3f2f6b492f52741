"""Phase 4.9's statistics: per arm, how pass rate and NLL move with the coefficient c.

Per arm and coefficient: the pass rate (count, Wilson interval) and the NLL rise of the unsteered programs under the
arm (nats per program token, mean over programs, task-bootstrap interval). Over the coefficients of an arm:
- `effect`: pass rate at c = +1 minus pass rate at c = -1, on the same tasks (task-bootstrap interval; exact
  McNemar p on the tasks whose outcome differs);
- `rho`: Spearman's rank correlation between c and the pass rate across the arm's coefficients (the journal's
  monotonicity over the trained range), with the share of task resamples in which it is positive;
- `slope`: least-squares slope of pass (0/1) on c over every (task, c), task-bootstrap interval;
- `normalized_gain` = 100 * effect * max(0, rho) / (1 + max(0, delta_nll)), where delta_nll is the larger of the
  NLL rises at c = -1 and c = +1: seed 004's score, pinned so that damage on either side counts and an arm that
  lowers the NLL gets no bonus for it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy.stats import spearmanr

from common.statistics import mcnemar_exact, rate

RESAMPLES = 2000


def spearman(coefficients: Sequence[float], rates: Sequence[float]) -> float | None:
    """None where the rates do not vary (a rank correlation is undefined)."""
    if len(set(rates)) < 2:
        return None
    return float(spearmanr(coefficients, rates).statistic)


def _interval(draws: np.ndarray) -> tuple[float | None, float | None]:
    finite = draws[np.isfinite(draws)]
    if not len(finite):
        return None, None
    low, high = np.percentile(finite, [2.5, 97.5])
    return float(low), float(high)


def mean_with_interval(values: np.ndarray, seed: int) -> dict[str, Any]:
    """Mean and 95% bootstrap interval over rows (one row per task here)."""
    if not len(values):
        return {"mean": None, "low": None, "high": None, "n": 0}
    rng = np.random.default_rng(seed)
    draws = values[rng.integers(0, len(values), (RESAMPLES, len(values)))].mean(1)
    low, high = _interval(draws)
    return {"mean": float(values.mean()), "low": low, "high": high, "n": int(len(values))}


def arm_summary(coefficients: Sequence[float], passed: np.ndarray, delta_nll: dict[float, dict[str, Any]],
                seed: int) -> dict[str, Any]:
    """`passed`: [len(coefficients), n_tasks] booleans, the same tasks in every row (c = 0 is the unsteered
    generation, shared by every arm); `delta_nll`: per coefficient, `mean_with_interval` of the NLL rises."""
    coefficients = [float(c) for c in coefficients]
    passed = passed.astype(float)
    n_tasks = passed.shape[1]
    rates = passed.mean(1)
    plus, minus = coefficients.index(1.0), coefficients.index(-1.0)
    rng = np.random.default_rng(seed)
    resampled = rng.integers(0, n_tasks, (RESAMPLES, n_tasks))
    draws = passed[:, resampled].mean(2)  # [levels, resamples]
    effect_draws = draws[plus] - draws[minus]
    rho_draws = np.array([spearman(coefficients, column) if len(set(column)) > 1 else np.nan for column in draws.T],
                         dtype=float)
    slopes = _slopes(np.asarray(coefficients), passed, resampled)
    gained = int(((passed[plus] == 1) & (passed[minus] == 0)).sum())
    lost = int(((passed[plus] == 0) & (passed[minus] == 1)).sum())
    effect = float(rates[plus] - rates[minus])
    rho = spearman(coefficients, list(rates))
    worst_nll = max(delta_nll[1.0]["mean"] or 0.0, delta_nll[-1.0]["mean"] or 0.0)
    return {
        "n_tasks": n_tasks,
        "by_coefficient": {f"{c:g}": {"pass_rate": rate(int(passed[i].sum()), n_tasks).to_dict(),
                                      "delta_nll": delta_nll.get(c)} for i, c in enumerate(coefficients)},
        "effect": {"value": effect, **dict(zip(("low", "high"), _interval(effect_draws))),
                   "tasks_gained": gained, "tasks_lost": lost, "mcnemar_p": mcnemar_exact(gained, lost)},
        "rho": {"value": rho, "share_of_resamples_positive": float(np.mean(np.nan_to_num(rho_draws) > 0))},
        "slope": {"value": float(slopes[0]), **dict(zip(("low", "high"), _interval(slopes[1:])))},
        "delta_nll": worst_nll,
        "normalized_gain": 100 * effect * max(0.0, rho or 0.0) / (1 + max(0.0, worst_nll)),
    }


def _slopes(coefficients: np.ndarray, passed: np.ndarray, resampled: np.ndarray) -> np.ndarray:
    """The least-squares slope of pass on c, on all tasks, then on each task resample: with every task at every
    coefficient, it is cov(c, mean pass at c) / var(c)."""
    centred = coefficients - coefficients.mean()
    rates = np.concatenate([passed.mean(1, keepdims=True), passed[:, resampled].mean(2)], axis=1)
    return centred @ rates / (centred @ centred)
