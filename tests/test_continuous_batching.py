"""Continuous batching on the tiny model: a row's output does not depend on the rows that shared its batch."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from common.directions import SteeringDirection
from common.generation import EngineSettings, GenerationRequest, generate, generate_batch
from common.hooks import decoder_layers
from common.kv_slots import SlotCache
from common.prefill import Prefiller, PrefillStats, capture_last_prompt_token
from common.interventions import ResidualAddition, residual_added

# Prompt lengths differ a lot, so rows join a running batch both shorter and longer than the window.
PROMPTS = ["x", "def add(a, b):", "Write a function that reverses a list of numbers and returns it.", "y =",
           "Sort the words of a sentence by length, then alphabetically, and join them with single spaces.",
           "def f():", "Count the vowels of a word, upper and lower case alike, and return the count."]


def _stop_after(n_chars: int):
    return lambda text: n_chars if len(text) >= n_chars else None


def _run(model, tokenizer, requests, batch_size, max_new_tokens=16, capture=(1, 3)):
    settings = EngineSettings(max_new_tokens, batch_size, tuple(capture))
    return {result.request.key: result for result in generate(model, tokenizer, requests, settings)}


def test_rows_that_join_a_running_batch_get_their_one_at_a_time_tokens_and_activations(tiny_model, monkeypatch):
    """Batch of 2 over 7 prompts: five rows join mid-run, into a window that had to move and grow."""
    model, tokenizer = tiny_model
    requests = [GenerationRequest(prompt, stopper=_stop_after(4 + 7 * (i % 3)), key=i)
                for i, prompt in enumerate(PROMPTS)]
    moves = []
    real_relocate = SlotCache._relocate
    monkeypatch.setattr(SlotCache, "_relocate", lambda self, *args: moves.append(args) or real_relocate(self, *args))
    together = _run(model, tokenizer, requests, batch_size=2)
    monkeypatch.undo()
    assert moves  # the window did move while rows were in it
    assert len({r.n_new_tokens for r in together.values()}) > 1  # rows really left at different steps
    for request in requests:
        alone = _run(model, tokenizer, [request], batch_size=1)[request.key]
        row = together[request.key]
        assert (row.text, row.n_new_tokens, row.stop_reason) == (alone.text, alone.n_new_tokens, alone.stop_reason)
        for layer in (1, 3):  # prefilled alone in both runs: the same bits
            assert torch.equal(row.activations[layer], alone.activations[layer])


def test_a_sampled_row_draws_the_same_tokens_whatever_rows_share_its_batch(tiny_model):
    model, tokenizer = tiny_model
    sampled = GenerationRequest(PROMPTS[2], temperature=1.0, seed=123, key="sampled")
    others = [GenerationRequest(p, temperature=t, seed=7 + i, key=i)
              for i, (p, t) in enumerate(zip(PROMPTS[3:], (0.0, 1.3, 0.7, 0.0)))]
    alone = _run(model, tokenizer, [sampled], 1)["sampled"].text
    for batch in ([sampled, *others], [*others[::-1], sampled], [others[0], sampled, others[2]]):
        assert _run(model, tokenizer, batch, batch_size=3)["sampled"].text == alone
    reseeded = GenerationRequest(PROMPTS[2], temperature=1.0, seed=124, key="sampled")
    assert _run(model, tokenizer, [reseeded], 1)["sampled"].text != alone


def test_rows_with_different_steerings_share_a_batch_and_each_gets_its_own(tiny_model):
    """Unsteered rows, rows steered at layer 1 on every position and at layer 2 on the last prompt token only,
    decoding side by side: each equals its own one-at-a-time generation, and steering changed some."""
    model, tokenizer = tiny_model
    d_model = model.config.hidden_size
    vectors = torch.randn(2, d_model, generator=torch.Generator().manual_seed(5))
    at_1 = ResidualAddition(SteeringDirection("test/a", 1, vectors[0], "random"), 40.0, "all")
    at_2 = ResidualAddition(SteeringDirection("test/b", 2, vectors[1], "random"), 40.0, "last_prompt")
    steerings = [None, at_1, at_2, at_1, None, at_2, at_1]
    requests = [GenerationRequest(prompt, intervention=s, key=i) for i, (prompt, s) in enumerate(zip(PROMPTS, steerings))]
    together = _run(model, tokenizer, requests, batch_size=3)
    plain = _run(model, tokenizer, [GenerationRequest(p, key=i) for i, p in enumerate(PROMPTS)], batch_size=3)
    for request in requests:
        assert together[request.key].text == _run(model, tokenizer, [request], 1)[request.key].text
    assert any(together[i].text != plain[i].text for i, s in enumerate(steerings) if s is not None)
    assert all(together[i].text == plain[i].text for i, s in enumerate(steerings) if s is None)


def _steered_greedy_without_cache(model, tokenizer, prompt: str, steering: ResidualAddition, max_new_tokens: int) -> str:
    """The reference the engine must match: every step one full pass over prompt + tokens so far, steered
    as a whole sequence (prompt positions by the policy, generated positions when it is `all`); no cache."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    prompt_mask = torch.ones_like(ids)
    new_tokens: list[int] = []
    with torch.no_grad(), residual_added(model, steering, prompt_mask):
        for _ in range(max_new_tokens):
            logits = model(input_ids=torch.cat([ids, torch.tensor([new_tokens], dtype=ids.dtype)], dim=1)).logits
            new_tokens.append(int(logits[0, -1].argmax()))
    return tokenizer.decode(new_tokens, skip_special_tokens=True)


def test_steered_rows_of_a_shared_batch_match_a_cacheless_steered_decode(tiny_model):
    """An independent reference for decode-step steering: a wrong layer, a lost vector or a vector given to
    the wrong row in the engine would each change these tokens."""
    model, tokenizer = tiny_model
    vectors = torch.randn(2, model.config.hidden_size, generator=torch.Generator().manual_seed(9))
    steerings = [ResidualAddition(SteeringDirection("test/a", 1, vectors[0], "random"), 30.0, "all"),
                 ResidualAddition(SteeringDirection("test/b", 3, vectors[1], "random"), 30.0, "all"),
                 ResidualAddition(SteeringDirection("test/c", 2, vectors[0], "random"), 30.0, "last_prompt")]
    requests = [GenerationRequest(prompt, intervention=steerings[i % 3], key=i) for i, prompt in enumerate(PROMPTS)]
    together = _run(model, tokenizer, requests, batch_size=3, max_new_tokens=10, capture=())
    for request in requests:
        expected = _steered_greedy_without_cache(model, tokenizer, request.prompt, request.intervention, 10)
        assert together[request.key].n_new_tokens == 10  # no eos here, so the texts cover the same tokens
        assert together[request.key].text == expected


def test_generate_batch_keeps_the_order_of_its_prompts_with_a_small_batch(tiny_model):
    model, tokenizer = tiny_model
    ordered = generate_batch(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=2)
    assert [r.request.prompt for r in ordered] == PROMPTS
    assert [r.text for r in ordered] == [generate_batch(model, tokenizer, [p], max_new_tokens=6)[0].text
                                         for p in PROMPTS]


def test_a_repeated_prompt_reuses_its_prefill(tiny_model, monkeypatch):
    model, tokenizer = tiny_model
    calls = {"n": 0}
    real_forward = model.forward

    def counting_forward(*args, **kwargs):
        calls["n"] += int(kwargs["input_ids"].shape[1] > 1)  # a prefill feeds more than one token
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", counting_forward)
    requests = [GenerationRequest(PROMPTS[1], temperature=1.0, seed=s, key=s) for s in range(5)]
    results = _run(model, tokenizer, requests, batch_size=2)
    assert calls["n"] == 1 and len({r.text for r in results.values()}) > 1


def test_slot_cache_keeps_each_rows_keys_through_moves_and_growth():
    """Rows are written, one leaves (the last moves into its slot), a longer one joins (the window shifts
    right), and decode columns run past the capacity (the window shifts left or grows)."""
    heads, dim, n_layers = 2, 3, 2
    cache = SlotCache(n_layers, max_rows=3, reserve_columns=4)

    def prompt(length: int, value: float):
        kv = torch.full((1, heads, length, dim), value)
        return [(kv, -kv) for _ in range(n_layers)]

    cache.add_row(prompt(2, 1.0))
    cache.add_row(prompt(3, 2.0))
    cache.remove_row(0)  # the 3-token row moves to slot 0
    cache.add_row(prompt(9, 3.0))  # longer than the window: shifts right
    for step in range(12):  # past the buffer's columns
        cache.make_room(1)
        new = torch.full((cache.n_rows, heads, 1, dim), 10.0 + step)
        for layer in cache.layers:
            keys, values = layer.update(new, -new)
        cache.advance(1)
    mask = cache.attention_mask(0)
    assert mask.sum(1).tolist() == [3 + 12, 9 + 12]
    assert cache.positions()[:, 0].tolist() == [15, 21]
    for row, value, length in ((0, 2.0, 3), (1, 3.0, 9)):
        real = keys[row, 0][mask[row]]
        assert torch.all(real[:length] == value)
        assert real[length:, 0].tolist() == [10.0 + s for s in range(12)]
        assert torch.equal(values[row, 0][mask[row]], -real)


@pytest.mark.parametrize("model_fixture", ["tiny_model", "tiny_gemma"])
@pytest.mark.parametrize("positions", ["all", "last_prompt"])
def test_a_steered_prefill_that_replays_the_layers_below_the_steering_equals_a_full_steered_pass(
        model_fixture, positions, request):
    model, tokenizer = request.getfixturevalue(model_fixture)
    prompt = PROMPTS[2]
    steering = ResidualAddition(SteeringDirection("test/s", 2, torch.randn(model.config.hidden_size), "random"), 30.0, positions)
    prefiller = Prefiller(model, tokenizer, True, (1, 3), "cache", 8, PrefillStats())
    prefiller.get(prompt, None)
    partial = prefiller.get(prompt, steering)
    assert (prefiller.stats.prefills, prefiller.stats.partial_prefills) == (1, 1)
    assert prefiller.get(prompt, steering) is partial and prefiller.stats.reused_prefills == 2  # + the base

    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    kv = DynamicCache(config=model.config)
    with torch.inference_mode(), residual_added(model, steering), capture_last_prompt_token(model, (1, 3)) as seen:
        logits = model(input_ids=ids, cache=kv, use_cache=True, logits_to_keep=1).logits
    assert torch.equal(partial.last_logits, logits[0, -1].float())
    for (keys, values), layer in zip(partial.keys_values, kv.layers):
        assert torch.equal(keys, layer.keys) and torch.equal(values, layer.values)
    for layer in (1, 3):
        assert torch.equal(partial.activations[layer], seen[layer][0])
    assert all(type(block).__name__ != "_Replay" for block in decoder_layers(model))  # the real layers are back
