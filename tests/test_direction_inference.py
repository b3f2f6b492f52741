"""Direction-level inference against controls: calibrated where pooling control rows is not."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import fisher_exact

from common.direction_inference import holm, versus_controls


def _simulated_directions(rng, n_directions: int, n_tasks: int, direction_sd: float, base_logit: float) -> np.ndarray:
    """Outcomes [directions, tasks] with a task effect shared by every direction and a per-direction
    disruptiveness (log-normal, sd `direction_sd`): the null where the target is one more control."""
    task = rng.normal(0.0, 1.0, n_tasks)
    direction = rng.normal(0.0, direction_sd, n_directions)
    logits = base_logit + task[None, :] + direction[:, None]
    return rng.random((n_directions, n_tasks)) < 1.0 / (1.0 + np.exp(-logits))


@pytest.mark.parametrize("direction_sd", [0.5, 1.0])
def test_the_false_positive_rate_stays_near_nominal_when_directions_differ(direction_sd):
    """250 simulated nulls, 20 controls, 140 tasks: the prediction and rank tests reject at most 7% at 5%;
    Fisher's test on pooled rows, which treats control x task as independent, rejects far more often."""
    rng = np.random.default_rng(7)
    rejections = {"prediction": 0, "rank": 0, "lower_bound": 0, "fisher": 0}
    n_nulls = 250
    for _ in range(n_nulls):
        outcomes = _simulated_directions(rng, 21, 140, direction_sd, -2.0)
        result = versus_controls(outcomes[0], outcomes[1:])
        rejections["prediction"] += result["prediction_p"] < 0.05
        rejections["rank"] += result["rank_p"] <= 0.05
        rejections["lower_bound"] += result["difference_lower_bound"] > 0
        k, pooled = int(outcomes[0].sum()), int(outcomes[1:].sum())
        table = [[k, 140 - k], [pooled, outcomes[1:].size - pooled]]
        rejections["fisher"] += fisher_exact(table, alternative="greater")[1] < 0.05
    rates = {name: count / n_nulls for name, count in rejections.items()}
    assert 0.01 <= rates["prediction"] <= 0.07 and 0.01 <= rates["rank"] <= 0.07  # calibrated, not inert
    assert rates["lower_bound"] == rates["prediction"]  # one test, two readings
    assert rates["fisher"] > 0.12


def test_a_real_effect_is_found_and_its_lower_bound_is_positive():
    rng = np.random.default_rng(3)
    controls = _simulated_directions(rng, 20, 140, 0.5, -3.0)
    target = rng.random(140) < 0.35  # about 7 times the controls' rate
    result = versus_controls(target, controls)
    assert result["rank_p"] == pytest.approx(1 / 21) and result["controls_at_or_above_target"] == 0
    assert result["prediction_p"] < 0.01 and result["difference_lower_bound"] > 0.1


def test_a_fix_rate_far_above_rare_control_fixes_is_detected():
    """The correction regime: controls fix about 1 in 140; a target fixing 10 of 140 is a real difference."""
    rng = np.random.default_rng(11)
    controls = _simulated_directions(rng, 20, 140, 0.5, -5.0)
    target = np.zeros(140, dtype=bool)
    target[:10] = True
    result = versus_controls(target, controls)
    assert result["prediction_p"] < 0.05 and result["difference_lower_bound"] > 0


def test_controls_that_never_fire_do_not_make_one_success_significant():
    """All 20 controls at 0 of 140: a target at 1 of 140 is within binomial noise, whatever the controls' spread."""
    result = versus_controls(np.eye(1, 140, dtype=bool)[0], np.zeros((20, 140), dtype=bool))
    assert result["prediction_p"] > 0.05 and result["difference_lower_bound"] < 0
    assert result["rank_p"] == pytest.approx(1 / 21)


def test_too_few_controls_give_no_test():
    result = versus_controls(np.ones(10, dtype=bool), np.zeros((1, 10), dtype=bool))
    assert result["prediction_p"] is None and result["rank_p"] is None and result["target"]["successes"] == 10


def test_holm_matches_the_step_down_by_hand():
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": None})
    assert adjusted == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06, "d": None})
    assert holm({"a": 0.5, "b": 0.6}) == pytest.approx({"a": 1.0, "b": 1.0})
