"""Disruption (teacher-forced KL over baseline programs) and strength calibrated to it, on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.controls import CONTROL_TYPES, ControlSources, control_directions
from common.directions import SteeringDirection
from transformers import DynamicCache

from common.disruption import _protocol_kl, disruption, matched_alphas, teacher_texts
from common.hooks import cache_keyword
from common.interventions import KVCacheEdit, ResidualAddition, residual_added

PROMPTS = ["def add(a, b):", "Write a function that reverses a list.", "Count the vowels of a word."]
OUTPUTS = ["    return a + b\n", "def rev(xs):\n    return xs[::-1]\n", "def vowels(w):\n    return 0\n"]


def _texts(tokenizer):
    return teacher_texts(tokenizer, PROMPTS, OUTPUTS, add_special_tokens=True, max_output_tokens=12)


def _unit(layer: int, seed: int, positions: str = "all") -> ResidualAddition:
    vector = torch.randn(64, generator=torch.Generator().manual_seed(seed))
    return ResidualAddition(SteeringDirection(f"t/{seed}", layer, vector, "random"), 1.0, positions)


def _kl_by_full_passes(model, texts, addition: ResidualAddition) -> float:
    """The same measure the slow way: every layer run, one intervention at a time."""
    total, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([text.prompt_ids + text.output_ids])
        n = len(text.output_ids)
        with torch.no_grad():
            base = torch.log_softmax(model(input_ids=ids).logits[0, -n - 1:-1].float(), -1)
            with residual_added(model, addition, torch.ones(1, len(text.prompt_ids), dtype=torch.bool)):
                steered = torch.log_softmax(model(input_ids=ids).logits[0, -n - 1:-1].float(), -1)
        total += float((base.exp() * (base - steered)).sum())
        count += n
    return total / count


@pytest.mark.parametrize("positions", ["all", "last_prompt"])
def test_the_replayed_batched_measure_equals_full_passes_one_at_a_time(tiny_model, positions):
    model, tokenizer = tiny_model
    texts = _texts(tokenizer)
    additions = [_unit(2, seed, positions).at(alpha) for seed, alpha in ((0, 3.0), (0, 10.0), (1, 0.0))]
    batched = disruption(model, texts, additions, progress=False)
    assert batched[2] == pytest.approx(0.0, abs=1e-6)
    for addition, value in zip(additions[:2], batched[:2]):
        assert value == pytest.approx(_kl_by_full_passes(model, texts, addition), rel=1e-4, abs=1e-7)
    assert batched[1] > batched[0] > 0


@pytest.mark.parametrize("positions", ["all", "last_prompt"])
def test_the_protocol_measure_of_any_kind_agrees_with_the_residual_fast_path(tiny_model, positions):
    """The path every other kind takes (prefill, after_prefill, the output read with the decode applier on) gives a
    residual addition the value the fast path gives it."""
    model, tokenizer = tiny_model
    texts = _texts(tokenizer)
    additions = [_unit(2, seed, positions).at(alpha) for seed, alpha in ((0, 3.0), (3, 10.0))]
    fast = disruption(model, texts, additions, progress=False)
    assert _protocol_kl(model, texts, additions, progress=False) == pytest.approx(fast, rel=1e-4)


def test_interventions_of_several_layers_and_kinds_are_each_measured_as_alone(tiny_model):
    model, tokenizer = tiny_model
    texts = _texts(tokenizer)
    mixed = [_unit(1, 0).at(5.0), _kv_edit(model, 0, 30.0), _unit(2, 0, "last_prompt").at(5.0), _kv_edit(model, 1, 0.0)]
    together = disruption(model, texts, mixed, progress=False)
    alone = np.array([disruption(model, texts, [i], progress=False)[0] for i in mixed])
    assert together == pytest.approx(alone, rel=1e-5, abs=1e-6)
    assert together[3] == pytest.approx(0.0, abs=1e-6) and together[1] > 0


def _kv_edit(model, seed: int, alpha: float) -> KVCacheEdit:
    config = model.config
    shape = (2, config.num_key_value_heads, config.hidden_size // config.num_attention_heads)
    generator = torch.Generator().manual_seed(seed)
    return KVCacheEdit(f"kv/{seed}", (1, 3), torch.randn(shape, generator=generator),
                       torch.randn(shape, generator=generator), alpha)


def test_a_cache_edit_disrupts_from_the_second_output_token_as_computed_by_hand(tiny_model):
    """The first output token is predicted by the unedited prefill (KL 0 there); the rest read the edited cache."""
    model, tokenizer = tiny_model
    edit = _kv_edit(model, 2, 25.0)
    texts = _texts(tokenizer)
    by_hand, count = 0.0, 0
    for text in texts:
        ids, n = torch.tensor([text.prompt_ids + text.output_ids]), len(text.output_ids)
        with torch.no_grad():
            base = torch.log_softmax(model(input_ids=ids).logits[0, -n - 1:-1].float(), -1)
            cache = DynamicCache(config=model.config)
            first = model(input_ids=ids[:, :len(text.prompt_ids)], use_cache=True,
                          **{cache_keyword(model): cache}).logits[:, -1:]
            for i, layer in enumerate(edit.layers):
                cache.layers[layer].values[..., -1, :] += edit.alpha * edit.value_deltas[i]
            rest = model(input_ids=ids[:, len(text.prompt_ids):-1], use_cache=True,
                         **{cache_keyword(model): cache}).logits
            steered = torch.log_softmax(torch.cat([first, rest], dim=1)[0].float(), -1)
        kl = (base.exp() * (base - steered)).sum(-1)
        assert float(kl[0]) == pytest.approx(0.0, abs=1e-6)
        by_hand += float(kl.sum())
        count += n
    assert disruption(model, texts, [edit], progress=False)[0] == pytest.approx(by_hand / count, rel=1e-4)


def test_calibrated_strengths_reach_the_level_they_were_calibrated_to(tiny_model):
    model, tokenizer = tiny_model
    texts = _texts(tokenizer)
    units = [_unit(1, seed) for seed in range(3)]
    levels = [0.002, 0.01]  # a random tiny model is nearly uniform: its KL saturates low
    alphas, measured = matched_alphas(model, texts, units, levels, [0.0625 * 2 ** i for i in range(12)], progress=False)
    assert measured.shape == (3, 12) and np.all(np.diff(measured, axis=1) > 0)
    assert not np.isnan(alphas).any()
    reached = disruption(model, texts, [u.at(float(a)) for u, a in zip(units, alphas[:, 1])], progress=False)
    assert reached == pytest.approx([0.01] * 3, rel=0.25)
    unreachable, _ = matched_alphas(model, texts, units[:1], [1e6], [0.5, 1.0], progress=False)
    assert np.isnan(unreachable).all()


def test_controls_of_every_type_are_unit_vectors_at_the_layer():
    rng = np.random.default_rng(0)
    activations = torch.randn(60, 64)
    passed = rng.random(60) < 0.4
    sources = ControlSources(activations, passed, np.repeat(np.arange(20), 3), torch.randn(30, 64))
    controls, missing = control_directions(3, "code_last", 64, sources, per_type=5, seed=1)
    assert missing == [] and len(controls) == 20
    assert sorted({c.source for c in controls}) == sorted(CONTROL_TYPES)
    assert all(c.layer == 3 and c.position == "code_last" for c in controls)
    assert all(abs(float(c.vector.norm()) - 1.0) < 1e-5 for c in controls)
    span = torch.linalg.svd(activations.double() - activations.double().mean(0), full_matrices=False).Vh[:10]
    for control in (c for c in controls if c.source == "random_top_pc_span"):
        inside = span.T @ (span @ control.vector.double())
        assert torch.allclose(inside, control.vector.double(), atol=1e-5)
    again, _ = control_directions(3, "code_last", 64, sources, per_type=5, seed=1)
    assert all(torch.equal(a.vector, b.vector) for a, b in zip(controls, again))


def test_a_missing_source_leaves_its_control_type_out_and_says_so():
    controls, missing = control_directions(0, "last_prompt", 64, ControlSources(), per_type=4, seed=0)
    assert {c.source for c in controls} == {"random_isotropic"} and len(missing) == 3
