"""Statistics used across phases. Every rate is reported with its count and a 95% interval."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

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
