"""Statistics used across phases. Every rate is reported with its count and a 95% interval."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from scipy.stats import norm


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
    z = norm.ppf(0.5 + confidence / 2)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def rate(successes: int, trials: int) -> Rate:
    return Rate(int(successes), int(trials), *wilson_interval(int(successes), int(trials)))
