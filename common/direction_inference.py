"""Is one direction's effect beyond its controls'? Inference with the direction as the unit.

Every direction (target and controls) steers the same tasks, so task effects are shared and cancel
in a comparison of directions; what differs is the direction itself, and directions differ far more
than tasks (how disruptive a push is varies from one random direction to the next). Pooling control
directions times tasks as independent rows (Fisher's test) ignores that and is anti-conservative
(tests/test_direction_inference.py simulates it). Two direction-level tests instead:
- rank: the target's place among its m controls, p = (1 + controls at or above it) / (1 + m), exact
  when the target is exchangeable with the controls under the null;
- prediction: the target's empirical logit against the controls' mean, scaled by their spread
  (never below the sampling spread of an empirical logit at the pooled count) times sqrt(1 + 1/m),
  one-sided t with m - 1 degrees of freedom: the test of "a new draw from the controls'
  distribution", a summary-statistics alternative to a mixed model with a direction random effect
  (it assumes roughly normal direction effects on the logit scale and does not model the task
  pairing, which cancels in the means). `difference_lower_bound` is the target's rate minus the
  controls' upper prediction bound (back on the rate scale): positive exactly when that test rejects,
  and what phase 4.5's rule asks for.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from common.statistics import rate


def empirical_logit(successes: np.ndarray, trials: int) -> np.ndarray:
    successes = np.asarray(successes, dtype=float)
    return np.log((successes + 0.5) / (trials - successes + 0.5))


def _rate_of_logit(logit: float, trials: int) -> float:
    """The rate whose empirical logit is `logit` (the inverse of `empirical_logit`)."""
    odds = np.exp(logit)
    return float((odds * (trials + 0.5) - 0.5) / (1.0 + odds) / trials)


def versus_controls(target: np.ndarray, controls: np.ndarray, confidence: float = 0.95) -> dict[str, Any]:
    """`target` [n_tasks] and `controls` [m, n_tasks] booleans: did the outcome of interest happen (a fix,
    a break)? Higher is the direction of the claim. Returns counts, rates, the rank and prediction
    p-values (one-sided), and the difference of rates with its one-sided lower bound."""
    target = np.asarray(target, dtype=bool)
    controls = np.asarray(controls, dtype=bool).reshape(-1, target.shape[0])
    n_tasks, m = target.shape[0], controls.shape[0]
    k, control_k = int(target.sum()), controls.sum(axis=1)
    out: dict[str, Any] = {"target": rate(k, n_tasks).to_dict(), "n_controls": m, "n_tasks": n_tasks,
                           "control_rates": [float(c) / n_tasks for c in control_k] if n_tasks else []}
    if n_tasks == 0 or m < 2:
        return {**out, "controls_mean_rate": None, "difference": None, "controls_upper_prediction_rate": None,
                "difference_lower_bound": None,
                "controls_at_or_above_target": None, "rank_p": None, "prediction_p": None}
    at_or_above = int((control_k >= k).sum())
    pooled = control_k.sum() / (m * n_tasks)
    sampling_sd = np.sqrt(1.0 / (n_tasks * pooled + 0.5) + 1.0 / (n_tasks * (1.0 - pooled) + 0.5))
    logits = empirical_logit(control_k, n_tasks)
    spread = max(float(logits.std(ddof=1)), sampling_sd) * np.sqrt(1.0 + 1.0 / m)
    t_value = (float(empirical_logit(k, n_tasks)) - float(logits.mean())) / spread
    rates = control_k / n_tasks
    upper = _rate_of_logit(float(logits.mean()) + float(stats.t.ppf(confidence, m - 1)) * spread, n_tasks)
    return {**out, "controls_mean_rate": float(rates.mean()), "difference": k / n_tasks - float(rates.mean()),
            "controls_upper_prediction_rate": upper, "difference_lower_bound": k / n_tasks - upper,
            "controls_at_or_above_target": at_or_above, "rank_p": (1 + at_or_above) / (1 + m),
            "prediction_p": float(stats.t.sf(t_value, m - 1))}


def holm(p_values: dict[str, float | None]) -> dict[str, float | None]:
    """Holm-adjusted p-values (step-down, monotone); None stays None and does not count as a test."""
    named = sorted(((p, name) for name, p in p_values.items() if p is not None))
    adjusted: dict[str, float | None] = {name: None for name, p in p_values.items() if p is None}
    running = 0.0
    for i, (p, name) in enumerate(named):
        running = max(running, min(1.0, (len(named) - i) * p))
        adjusted[name] = running
    return adjusted
