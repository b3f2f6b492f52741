"""Steering hooks on the tiny model: exact shift at the hooked site, padding untouched, batched = one at a time."""

from __future__ import annotations

import contextlib

import pytest
import torch

from common.directions import SteeringDirection
from common.generation import generate_batch
from common.hooks import decoder_layers
from common.interventions import ResidualAddition, residual_added

PROMPTS = ["def add(a, b):", "Write a function that reverses a list of numbers and returns it.", "x ="]


def _direction(d_model: int, layer: int = 1, seed: int = 0) -> SteeringDirection:
    vector = torch.randn(d_model, generator=torch.Generator().manual_seed(seed))
    return SteeringDirection("test/random", layer, vector, "random")


def _next_layer_inputs(model, encoded, steering: ResidualAddition | None) -> torch.Tensor:
    """What decoder layer 2 receives (= the output of layer 1), over a full prompt pass."""
    seen = {}
    handle = decoder_layers(model)[2].register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0].clone()))
    try:
        with torch.no_grad(), (residual_added(model, steering, encoded["attention_mask"]) if steering
                                else contextlib.nullcontext()):
            model(**encoded)
    finally:
        handle.remove()
    return seen["x"]


@pytest.mark.parametrize("positions", ["all", "last_prompt"])
def test_the_hooked_output_moves_by_exactly_alpha_times_the_unit_direction(tiny_model, positions):
    model, tokenizer = tiny_model
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    direction = _direction(model.config.hidden_size)
    clean = _next_layer_inputs(model, encoded, None)
    steered = _next_layer_inputs(model, encoded, ResidualAddition(direction, 3.5, positions))
    shift = steered - clean
    expected = 3.5 * direction.unit().vector
    real = encoded["attention_mask"].bool()
    if positions == "all":
        assert torch.allclose(shift[real], expected.expand(int(real.sum()), -1), atol=1e-5)
        assert torch.all(shift[~real] == 0)  # left padding is never steered
    else:
        assert torch.allclose(shift[:, -1], expected.expand(len(PROMPTS), -1), atol=1e-5)
        assert torch.all(shift[:, :-1] == 0)


def test_alpha_zero_gives_exactly_the_unsteered_tokens(tiny_model):
    model, tokenizer = tiny_model
    plain = generate_batch(model, tokenizer, PROMPTS, max_new_tokens=12)
    zero = generate_batch(model, tokenizer, PROMPTS, max_new_tokens=12,
                          intervention=ResidualAddition(_direction(model.config.hidden_size), 0.0))
    assert [r.text for r in zero] == [r.text for r in plain]


def test_steering_changes_output_and_batched_equals_one_at_a_time(tiny_model):
    model, tokenizer = tiny_model
    steering = ResidualAddition(_direction(model.config.hidden_size, seed=1), 40.0)
    plain = generate_batch(model, tokenizer, PROMPTS, max_new_tokens=12)
    batched = generate_batch(model, tokenizer, PROMPTS, max_new_tokens=12, intervention=steering)
    alone = [generate_batch(model, tokenizer, [p], max_new_tokens=12, intervention=steering)[0] for p in PROMPTS]
    assert [r.text for r in batched] == [r.text for r in alone]
    assert [r.text for r in batched] != [r.text for r in plain]


def test_hooks_come_off_after_an_exception(tiny_model):
    model, tokenizer = tiny_model
    block = decoder_layers(model)[1]
    before = len(block._forward_hooks)
    with pytest.raises(RuntimeError, match="boom"):
        with residual_added(model, ResidualAddition(_direction(model.config.hidden_size), 1.0)):
            assert len(block._forward_hooks) == before + 1
            raise RuntimeError("boom")
    assert len(block._forward_hooks) == before
    with pytest.raises(ValueError, match="position policy"):
        ResidualAddition(_direction(model.config.hidden_size), 1.0, "everywhere")


def test_a_direction_changed_under_the_same_name_is_another_condition():
    vector = torch.arange(8, dtype=torch.float32)
    same = ResidualAddition(SteeringDirection("sae_latent/x", 1, vector, "sae_latent"), 30.0)
    assert ResidualAddition(SteeringDirection("sae_latent/x", 1, vector.clone(), "sae_latent"), 30.0).label == same.label
    assert ResidualAddition(SteeringDirection("sae_latent/x", 1, vector.flip(0), "sae_latent"), 30.0).label != same.label
    assert ResidualAddition(SteeringDirection("sae_latent/x", 1, vector, "sae_latent"), 10.0).label != same.label
