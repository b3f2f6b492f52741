"""Phase 4.9's statistics: per arm, how pass rate and NLL move with the coefficient c.

Per arm and coefficient: the pass rate (count, Wilson interval) and the NLL rise of the unsteered programs under the
arm (nats per program token, mean over programs, task-bootstrap interval). Over the coefficients of an arm:
- `plus_vs_unsteered`, `minus_vs_unsteered`: pass at c = +1 (and at c = -1) against c = 0 on the same tasks, the
  difference with a task-bootstrap interval and an exact McNemar p (does +c fix code, does -c break it: the journal's
  effect alone cannot tell these apart);
- `effect`: pass rate at c = +1 minus pass rate at c = -1 (seed 004's effect), task-bootstrap interval;
- `rho`: Spearman's rank correlation between c and the pass rate over the trained range {-1, 0, 1} (the journal's
  choice; the same three points for every arm, prompting included), and `rho_all_levels` over every coefficient
  swept. With three or five points a rho is coarse: `share_of_resamples_positive` says how often task resampling
  keeps it above 0 (a stability figure, not a p-value);
- `slope`: least-squares slope of pass (0/1) on c over every (task, c), task-bootstrap interval;
- `normalized_gain` = 100 * effect * max(0, rho) / (1 + max(0, delta_nll)), where delta_nll is the larger of the
  NLL rises at c = -1 and c = +1: seed 004's score, pinned so that damage on either side counts and an arm that
  lowers the NLL gets no bonus for it; its interval resamples tasks for effect and rho (delta_nll held fixed).
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


def _interval(draws: np.ndarray) -> dict[str, float | None]:
    """The 95% percentile interval of bootstrap draws."""
    finite = draws[np.isfinite(draws)]
    if not len(finite):
        return {"low": None, "high": None}
    low, high = np.percentile(finite, [2.5, 97.5])
    return {"low": float(low), "high": float(high)}


def mean_with_interval(values: np.ndarray, seed: int) -> dict[str, Any]:
    """Mean and 95% bootstrap interval over rows (one row per task here)."""
    if not len(values):
        return {"mean": None, "low": None, "high": None, "n": 0}
    draws = values[task_resamples(len(values), seed)].mean(1)
    return {"mean": float(values.mean()), **_interval(draws), "n": int(len(values))}


def arm_summary(coefficients: Sequence[float], passed: np.ndarray, delta_nll: dict[float, dict[str, Any]],
                seed: int) -> dict[str, Any]:
    """`passed`: [len(coefficients), n_tasks] booleans, the same tasks in every row (c = 0 is the unsteered
    generation, shared by every arm); `delta_nll`: per coefficient, `mean_with_interval` of the NLL rises."""
    coefficients = [float(c) for c in coefficients]
    passed = passed.astype(float)
    n_tasks = passed.shape[1]
    rates = passed.mean(1)
    plus, zero, minus = (coefficients.index(c) for c in (1.0, 0.0, -1.0))
    draws = passed[:, task_resamples(n_tasks, seed)].mean(2)  # [levels, resamples]
    trained = [minus, zero, plus]
    rho = spearman([-1.0, 0.0, 1.0], list(rates[trained]))
    rho_draws = np.array([spearman([-1.0, 0.0, 1.0], list(column)) for column in draws[trained].T], dtype=float)
    worst_nll = max(delta_nll[1.0]["mean"] or 0.0, delta_nll[-1.0]["mean"] or 0.0)
    effect = float(rates[plus] - rates[minus])
    gain_draws = 100 * (draws[plus] - draws[minus]) * np.maximum(0.0, np.nan_to_num(rho_draws)) / (
        1 + max(0.0, worst_nll))
    slopes = _slopes(np.asarray(coefficients), passed, draws)
    return {
        "n_tasks": n_tasks,
        "by_coefficient": {f"{c:g}": {"pass_rate": rate(int(passed[i].sum()), n_tasks).to_dict(),
                                      "delta_nll": delta_nll.get(c)} for i, c in enumerate(coefficients)},
        "plus_vs_unsteered": _paired(passed[plus], passed[zero], draws[plus] - draws[zero]),
        "minus_vs_unsteered": _paired(passed[minus], passed[zero], draws[minus] - draws[zero]),
        "effect": {"value": effect, **_interval(draws[plus] - draws[minus])},
        "rho": {"value": rho, "share_of_resamples_positive": float(np.mean(np.nan_to_num(rho_draws) > 0)),
                "rho_all_levels": spearman(coefficients, list(rates))},
        "slope": {"value": float(slopes[0]), **_interval(slopes[1:])},
        "delta_nll": worst_nll,
        "normalized_gain": {"value": 100 * effect * max(0.0, rho or 0.0) / (1 + max(0.0, worst_nll)) + 0.0,  # no -0
                            **_interval(gain_draws)},
    }


def task_resamples(n_tasks: int, seed: int) -> np.ndarray:
    """[RESAMPLES, n_tasks] task indices drawn with replacement: the same draws for every arm of a run, so arms
    compare paired."""
    return np.random.default_rng(seed).integers(0, n_tasks, (RESAMPLES, n_tasks))


def _paired(steered: np.ndarray, unsteered: np.ndarray, difference_draws: np.ndarray) -> dict[str, Any]:
    gained = int(((steered == 1) & (unsteered == 0)).sum())
    lost = int(((steered == 0) & (unsteered == 1)).sum())
    return {"difference": float(steered.mean() - unsteered.mean()), **_interval(difference_draws),
            "tasks_gained": gained, "tasks_lost": lost, "mcnemar_p": mcnemar_exact(gained, lost)}


def effect_difference(coefficients: Sequence[float], passed: np.ndarray, other: np.ndarray, seed: int
                      ) -> dict[str, Any]:
    """This arm's effect minus another's on the same tasks, with a paired task-bootstrap interval."""
    coefficients = [float(c) for c in coefficients]
    plus, minus = coefficients.index(1.0), coefficients.index(-1.0)
    resampled = task_resamples(passed.shape[1], seed)

    def effects(matrix: np.ndarray) -> np.ndarray:
        values = matrix.astype(float)
        return np.concatenate([[values[plus].mean() - values[minus].mean()],
                               values[plus][resampled].mean(1) - values[minus][resampled].mean(1)])

    difference = effects(passed) - effects(other)
    return {"difference": float(difference[0]), **_interval(difference[1:])}


def _slopes(coefficients: np.ndarray, passed: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """The least-squares slope of pass on c, on all tasks, then on each task resample: with every task at every
    coefficient, it is cov(c, mean pass at c) / var(c)."""
    centred = coefficients - coefficients.mean()
    rates = np.concatenate([passed.mean(1, keepdims=True), draws], axis=1)
    return centred @ rates / (centred @ centred)
