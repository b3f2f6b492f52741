"""Stop rules for degenerate output: loops, no code, code that never ends."""

from __future__ import annotations

import pytest

from common.code_extraction import code_started
from common.config import Config
from common.degeneration import DegenerationGuard, DegenerationLimits, replay
from common.errors import PipelineError
from common.generation import EngineSettings, GenerationRequest, generate
from common.phases import get_phase

LOOPS = DegenerationLimits(repeat_tokens=12, repeat_copies=3, repeat_max_period=8)


def _first_stop(guard: DegenerationGuard, tokens: list[int], texts: list[str] | None = None):
    for n, token in enumerate(tokens, start=1):
        reason = guard.step(token, texts[n - 1] if texts else "")
        if reason:
            return n, reason
    return None


def test_a_loop_stops_once_it_reaches_its_copies_and_its_length():
    ones = [5, 6, 7] + [1] * 30
    assert _first_stop(DegenerationGuard(LOOPS, None, 64), ones) == (3 + 12, "repetition")  # 12 tokens of "1"
    line = [20, 21, 22, 23, 24]  # period 5: three copies are 15 tokens
    assert _first_stop(DegenerationGuard(LOOPS, None, 64), [9] + line * 4) == (1 + 15, "repetition")


def test_two_copies_a_long_period_or_varied_text_are_not_a_loop():
    assert _first_stop(DegenerationGuard(LOOPS, None, 64), [1, 2, 3, 4, 5, 6] * 2) is None  # two copies only
    long_period = list(range(100, 110))  # period 10 > repeat_max_period
    assert _first_stop(DegenerationGuard(LOOPS, None, 64), long_period * 4) is None
    assert _first_stop(DegenerationGuard(LOOPS, None, 128), list(range(100))) is None
    off = DegenerationLimits()
    assert _first_stop(DegenerationGuard(off, None, 64), [1] * 60) is None


def test_no_code_and_overlong_code_count_tokens_from_where_the_code_opens():
    limits = DegenerationLimits(no_code_tokens=5, code_tokens=6)
    opened = lambda text: "```" in text  # noqa: E731
    prose = [f"word{i} " for i in range(10)]
    assert _first_stop(DegenerationGuard(limits, opened, 32), list(range(10)), prose) == (5, "no_code")
    texts = ["Here", " it", " is", " ```", "python", "\n", "a", "b", "c", "d", "e"]
    cumulative = ["".join(texts[:n]) for n in range(1, len(texts) + 1)]
    assert _first_stop(DegenerationGuard(limits, opened, 32), list(range(11)), cumulative) == (3 + 1 + 6,
                                                                                               "overlong_code")
    # A completion prompt is code from its first token: no no-code rule, overlong from token 0.
    assert _first_stop(DegenerationGuard(limits, None, 32), list(range(10))) == (6, "overlong_code")


def test_code_begins_at_a_fence_or_a_bare_definition_but_not_at_prose():
    """The model sometimes answers with a bare `def` and no fence; extract_code takes that whole, so the
    no-code rule must not cut it (two such rows passed in phase 3.5 although the fence-only rule cut them)."""
    for text in ("Sure:\n```python\n", "def total(xs):\n", "Here:\n\nfrom math import sqrt\n", "import re\n",
                 "class Stack:\n"):
        assert code_started(text), text
    for text in ("Here is the function", "from the list we take", "we define a function def f( inline",
                 "classify the numbers", "import the module first"):
        assert not code_started(text), text


def test_a_repetition_rule_of_one_copy_is_refused_and_zero_turns_it_off():
    with pytest.raises(PipelineError, match="stop_repeat_copies"):
        Config(stop_repeat_copies=1).validate()
    assert _first_stop(DegenerationGuard(Config(stop_repeat_copies=0).degeneration_limits, None, 256), [1] * 200) is None


def test_replay_measures_what_the_rules_would_have_cut():
    tokens = [7, 8] + [3, 4] * 10
    row = replay(tokens, lambda ids: "```" if len(ids) > 1 else "", LOOPS, lambda text: "```" in text, track_period=4)
    assert row.n_tokens == 22 and row.code_start == 2
    assert row.longest_runs[:4].tolist() == [0, 18, 0, 16]  # period 2 repeats for 18 tokens after the first two
    assert (row.cut_at, row.cut_reason) == (2 + 12, "repetition")


def test_the_engine_records_why_each_row_stopped(planted_model_dir):
    """The planted model writes "1" forever: a loop the repetition rule cuts; without rules it runs to the end."""
    from common_simplified.model_loader import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(planted_model_dir), device="cpu")
    requests = [GenerationRequest("Write function number 1.", key=0),
                GenerationRequest("Write function number 2.", stopper=lambda text: 3 if len(text) >= 3 else None,
                                  key=1)]
    stopped = {r.request.key: r for r in generate(model, tokenizer, requests, EngineSettings(40, 2, limits=LOOPS))}
    assert (stopped[0].stop_reason, stopped[0].n_new_tokens) == ("repetition", 12)
    assert stopped[1].stop_reason == "code_end" and stopped[1].text == "111"
    free = {r.request.key: r for r in generate(model, tokenizer, requests, EngineSettings(40, 2))}
    assert (free[0].stop_reason, free[0].n_new_tokens) == ("max_new_tokens", 40)
    chat = GenerationRequest("Write function number 3.", code_opened=code_started, key=2)
    prose_only = EngineSettings(40, 1, limits=DegenerationLimits(no_code_tokens=7))
    no_code = next(generate(model, tokenizer, [chat], prose_only))
    assert (no_code.stop_reason, no_code.n_new_tokens) == ("no_code", 7)


def test_stop_rules_change_what_is_generated_so_they_are_generation_keys():
    for phase in ("1", "3.5", "3.6", "4.5", "4.8"):
        assert {"stop_repeat_tokens", "stop_repeat_copies", "stop_repeat_period", "stop_no_code_tokens",
                "stop_code_tokens"} <= set(get_phase(phase).generation_keys)
