"""Statistics used across phases. Every rate is reported with its count and a 95% interval."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import fisher_exact
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint


@dataclass(frozen=True)
class Rate:
    successes: int
    trials: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.successes / self.trials if self.trials else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rate": self.value}

    def __str__(self) -> str:
        if not self.trials:
            return "n/a (0 trials)"
        return f"{self.successes}/{self.trials} = {100 * self.value:.1f}% [95% CI {100 * self.low:.1f}-{100 * self.high:.1f}%]"


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval: unlike the normal approximation it stays inside [0, 1] and works at 0 or n."""
    if trials == 0:
        return (0.0, 1.0)
    low, high = proportion_confint(successes, trials, alpha=1 - confidence, method="wilson")
    return (max(0.0, float(low)), min(1.0, float(high)))


def rate(successes: int, trials: int) -> Rate:
    return Rate(int(successes), int(trials), *wilson_interval(int(successes), int(trials)))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs (b: fail->pass, c: pass->fail).

    Under no effect each discordant pair goes either way with probability 1/2."""
    if not b + c:
        return 1.0
    return float(mcnemar([[0, int(b)], [int(c), 0]], exact=True).pvalue)


def compare_with_controls(target: np.ndarray, controls: np.ndarray, bootstrap_samples: int = 2000,
                          seed: int = 0) -> dict[str, Any]:
    """Does a direction change outcomes more often than control directions on the same tasks?

    `target` [n_tasks] and `controls` [n_controls, n_tasks] are booleans (outcome changed). The control
    rate is an estimate, not a known constant, so three views are given:
    - Fisher's exact test of target k/n against the pooled controls K/N (both rates estimated; it
      takes the pooled observations as independent, which they are not: they share tasks);
    - a task bootstrap interval for target rate minus control rate (keeps each task's outcomes together);
    - the direction-level rank: how many controls reach the target's rate, and p = (1 + that) / (1 + m),
      whose floor 1 / (1 + m) says how many controls a claim needs."""
    target = np.asarray(target, dtype=bool)
    controls = np.asarray(controls, dtype=bool).reshape(-1, target.shape[0])
    n_tasks, n_controls = target.shape[0], controls.shape[0]
    k, big_k = int(target.sum()), int(controls.sum())
    out: dict[str, Any] = {"target": rate(k, n_tasks).to_dict(), "pooled_control": rate(big_k, controls.size).to_dict(),
                           "n_controls": n_controls}
    if n_tasks == 0 or n_controls == 0:
        return {**out, "difference": None, "difference_interval": None, "fisher_p": None,
                "controls_at_or_above_target": None, "rank_p": None}
    per_task_difference = target.astype(float) - controls.mean(axis=0)
    rng = np.random.default_rng(seed)
    resampled = per_task_difference[rng.integers(0, n_tasks, size=(bootstrap_samples, n_tasks))].mean(axis=1)
    at_or_above = int((controls.mean(axis=1) >= target.mean()).sum())
    return {**out, "difference": float(per_task_difference.mean()),
            "difference_interval": [float(np.percentile(resampled, 2.5)), float(np.percentile(resampled, 97.5))],
            "fisher_p": float(fisher_exact([[k, n_tasks - k], [big_k, controls.size - big_k]])[1]),
            "controls_at_or_above_target": at_or_above, "rank_p": (1 + at_or_above) / (1 + n_controls),
            "control_rates": [float(r) for r in controls.mean(axis=1)]}
