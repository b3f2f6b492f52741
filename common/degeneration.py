"""When a generation has gone wrong and every further token is wasted: stop rules with measured thresholds.

Three signs, each with thresholds in the config (`repeat_copies` or `repeat_max_period`, `no_code_tokens`,
`code_tokens` at 0 turn their rule off; `repeat_tokens` 0 sets no minimum length):
- `repetition`: the output ends in `repeat_copies` copies of one span of at most `repeat_max_period`
  tokens, together at least `repeat_tokens` long: a loop the model will not leave ("1 1 1 1", the
  alphabet again and again, the same function written a third time);
- `no_code`: `no_code_tokens` tokens written and no code begun, fenced or a bare `def` (chat prompts
  only: a completion prompt is code from its first token);
- `overlong_code`: the open code block holds `code_tokens` tokens and is still not closed.
The defaults were set on unsteered programs of the default model that pass, so that almost none
of them would have been cut (README, "Stopping degenerate output"); `replay` measures that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

STOP_REASONS = ("eos", "code_end", "repetition", "no_code", "overlong_code", "max_new_tokens")
DEGENERATE_REASONS = ("repetition", "no_code", "overlong_code")


@dataclass(frozen=True)
class DegenerationLimits:
    repeat_tokens: int = 0
    repeat_copies: int = 0
    repeat_max_period: int = 0
    no_code_tokens: int = 0
    code_tokens: int = 0

    def repeat_run_needed(self, periods: np.ndarray) -> np.ndarray:
        """Per period p: how long the run of tokens equal to the one p back must be to stop the row. A run of
        r tokens at period p means the last r + p tokens are p-periodic: (copies - 1) * p covers the copies."""
        return np.maximum(self.repeat_tokens - periods, (self.repeat_copies - 1) * periods)


CodeOpened = Callable[[str], bool]  # text so far -> has a code block started?


class DegenerationGuard:
    """One row's incremental state. `step` takes the newest token and the text so far and says why the row
    should stop, or None. It also keeps the statistics the thresholds are set from."""

    def __init__(self, limits: DegenerationLimits, code_opened: CodeOpened | None, max_tokens: int,
                 track_period: int = 0):
        self.limits = limits
        self.code_opened = code_opened
        self.periods = np.arange(1, max(limits.repeat_max_period, track_period) + 1)
        self.runs = np.zeros(len(self.periods), dtype=np.int64)  # per period p: tokens equal to the one p back
        self.longest_runs = np.zeros(len(self.periods), dtype=np.int64)  # per period, over the whole row
        self.history = np.zeros(max_tokens, dtype=np.int64)
        self.n_tokens = 0
        self.code_start: int | None = 0 if code_opened is None else None  # tokens before the code (fence included)
        checked = self.periods[:limits.repeat_max_period] if limits.repeat_copies >= 2 else self.periods[:0]
        self.run_needed = limits.repeat_run_needed(checked)

    def step(self, token: int, text: str) -> str | None:
        i = self.n_tokens
        self.history[i] = token
        self.n_tokens += 1
        if len(self.periods):
            back = i - self.periods
            same = (back >= 0) & (self.history[np.maximum(back, 0)] == token)
            self.runs = np.where(same, self.runs + 1, 0)
            np.maximum(self.longest_runs, self.runs, out=self.longest_runs)
        if self.code_start is None and self.code_opened(text):
            self.code_start = i + 1
        limits = self.limits
        if len(self.run_needed) and (self.runs[:len(self.run_needed)] >= self.run_needed).any():
            return "repetition"
        if limits.no_code_tokens and self.code_start is None and self.n_tokens >= limits.no_code_tokens:
            return "no_code"
        if limits.code_tokens and self.code_start is not None and self.n_tokens - self.code_start >= limits.code_tokens:
            return "overlong_code"
        return None


@dataclass(frozen=True)
class ReplayedRow:
    n_tokens: int
    longest_runs: np.ndarray  # per period 1..track_period: the longest run of tokens equal to the one p back
    code_start: int | None  # tokens before the code (its opening fence included); None if it never opened
    cut_at: int | None  # tokens after which the limits would have stopped the row; None if never
    cut_reason: str | None


def replay(token_ids: Sequence[int], decode: Callable[[Sequence[int]], str], limits: DegenerationLimits,
           code_opened: CodeOpened | None, track_period: int = 64) -> ReplayedRow:
    """Run the guard over a finished generation, as if it were being written: where would it have cut?"""
    guard = DegenerationGuard(limits, code_opened, max(1, len(token_ids)), track_period)
    cut_at = cut_reason = None
    for n, token in enumerate(token_ids, start=1):
        text = decode(token_ids[:n]) if guard.code_start is None else ""  # only read until the code opens
        reason = guard.step(int(token), text)
        if reason and cut_at is None:
            cut_at, cut_reason = n, reason
    return ReplayedRow(len(token_ids), guard.longest_runs, guard.code_start, cut_at, cut_reason)
