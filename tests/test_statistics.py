import math

import pytest

from common.statistics import rate, wilson_interval


@pytest.mark.parametrize("successes, trials, low, high", [
    # Hand-checked values of the Wilson score interval at 95% (z = 1.959964).
    (8, 10, 0.4901624, 0.9433178),
    (0, 10, 0.0, 0.2775328),
    (10, 10, 0.7224672, 1.0),
    (50, 100, 0.4038315, 0.5961685),
])
def test_wilson_matches_hand_computed_values(successes, trials, low, high):
    got = wilson_interval(successes, trials)
    assert got == pytest.approx((low, high), abs=1e-6)


def test_wilson_formula_directly():
    k, n, z = 3, 17, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert wilson_interval(k, n) == pytest.approx((centre - half, centre + half))


def test_rate_reports_counts_and_handles_zero_trials():
    r = rate(3, 4)
    assert r.to_dict()["successes"] == 3 and r.to_dict()["trials"] == 4 and r.value == 0.75
    assert "3/4 = 75.0%" in str(r)
    assert math.isnan(rate(0, 0).value) and rate(0, 0).low == 0.0
