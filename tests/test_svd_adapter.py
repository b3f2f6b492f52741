"""Seed 004's SVD-rotation adapter: the PiSSA split and Cayley rotations as written, c = 0 as the base model, -c as
the inverse, the hook's correction as the dense weight, batched rows as alone, disruption and saving by kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.disruption import disruption, teacher_texts
from common.generation import GenerationRequest
from common.interventions import Intervention, SVDRotationAdapter, load_interventions, save_interventions
from common.svd_adapter import adapted, cayley, linear_at, skew, split_weight
from tests.test_interventions import PROMPTS, _addition, _by_key

SITES = ((1, "mlp.up_proj"), (2, "self_attn.q_proj"), (2, "self_attn.v_proj"))


def _adapter(model, seed: int = 0, scale: float = 0.5, rotate_u: bool = False) -> SVDRotationAdapter:
    """Generators large enough to change the tiny model's output (a trained adapter's, not a fresh one's)."""
    generator = torch.Generator().manual_seed(seed)
    weights = []
    for layer, path in SITES:
        fresh = split_weight(model, layer, path, rank=4, rotate_u=rotate_u, generator=generator)
        learnable = {"skew_v": fresh.skew_v, "skew_u": fresh.skew_u, "log_scale": fresh.log_scale}
        grown = {name: scale * torch.randn(tensor.shape, generator=generator)
                 for name, tensor in learnable.items() if tensor is not None}
        weights.append(type(fresh)(**{**fresh.__dict__, **grown}))
    return SVDRotationAdapter(f"test/adapter_{seed}", tuple(weights), 1.0)


def _logits(model, tokenizer, prompt: str) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([tokenizer(prompt)["input_ids"]])).logits[0].float()


def test_the_split_keeps_the_top_singular_triplets_and_the_rotations_are_orthogonal_and_invert_with_c(tiny_model):
    model, _ = tiny_model
    adapter = _adapter(model, rotate_u=True)
    for weight in adapter.weights:
        dense = linear_at(model, weight.layer, weight.path).weight.detach().float()
        singular = torch.linalg.svdvals(dense)
        assert torch.allclose(weight.s, singular[:4], atol=1e-5)
        top = weight.u @ torch.diag(weight.s) @ weight.v.T
        assert torch.linalg.svdvals(dense - top)[0] == pytest.approx(float(singular[4]), rel=1e-4)  # the residual
        rotation = cayley(0.7 * skew(weight.skew_v))
        assert torch.allclose(rotation @ rotation.T, torch.eye(4), atol=1e-5)
        assert torch.allclose(cayley(-0.7 * skew(weight.skew_v)), rotation.T, atol=1e-5)
        assert torch.count_nonzero(weight.weight_at(0.0)) == 0
        # -c undoes +c in weight space: the top block at -c is the one whose rotations and scales invert those at +c
        at_plus = weight.u @ (weight.mixing(torch.tensor([0.6]))[0] + torch.diag(weight.s)).T @ weight.v.T
        u_plus = weight.u @ cayley(0.6 * skew(weight.skew_u))
        v_plus = weight.v @ cayley(0.6 * skew(weight.skew_v))
        assert torch.allclose(at_plus, u_plus @ torch.diag(weight.s * torch.exp(0.6 * weight.log_scale)) @ v_plus.T,
                              atol=1e-4)


def test_at_zero_the_adapter_is_the_base_model_and_its_hook_adds_the_dense_weight_change(tiny_model):
    model, tokenizer = tiny_model
    adapter = _adapter(model)
    base = _logits(model, tokenizer, PROMPTS[0])
    with adapter.at(0.0).prefill_applied(model):
        assert torch.equal(_logits(model, tokenizer, PROMPTS[0]), base)
    with adapter.at(0.8).prefill_applied(model):
        steered = _logits(model, tokenizer, PROMPTS[0])
    assert not torch.allclose(steered, base, atol=1e-3)
    originals = {}
    try:
        for weight in adapter.weights:
            linear = linear_at(model, weight.layer, weight.path)
            originals[weight.name] = linear.weight.detach().clone()
            linear.weight.data += weight.weight_at(0.8)
        assert torch.allclose(_logits(model, tokenizer, PROMPTS[0]), steered, atol=1e-4)
    finally:
        for weight in adapter.weights:
            linear_at(model, weight.layer, weight.path).weight.data.copy_(originals[weight.name])


def test_gradients_reach_the_generators_and_never_the_frozen_weights(tiny_model):
    model, tokenizer = tiny_model
    adapter = _adapter(model)
    learnable = [t.requires_grad_() for w in adapter.weights for t in (w.skew_v, w.log_scale)]
    ids = torch.tensor([tokenizer(PROMPTS[1])["input_ids"]])
    with adapted(model, adapter.weights, torch.tensor([1.0])):
        model(input_ids=ids).logits.float().square().mean().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in learnable)
    assert all(p.grad is None for p in model.parameters())
    for t in learnable:
        t.requires_grad_(False)


def test_rows_with_different_adapters_and_coefficients_in_a_batch_get_their_one_at_a_time_output(tiny_model):
    model, tokenizer = tiny_model
    first, second = _adapter(model, 0), _adapter(model, 1)
    kinds = [first, first.at(-0.7), None, second.at(0.4), _addition(5, layer=1), first.at(0.0)]
    requests = [GenerationRequest(p, intervention=kinds[(i + j) % len(kinds)], key=(j, (i + j) % len(kinds)))
                for j, p in enumerate(PROMPTS) for i in range(2)]
    together = _by_key(model, tokenizer, requests, batch_size=4)
    for request in requests:
        assert together[request.key] == _by_key(model, tokenizer, [request], batch_size=1)[request.key]
    alone = {k: _by_key(model, tokenizer, [GenerationRequest(PROMPTS[0], intervention=i, key=k)], batch_size=1)[k]
             for k, i in (("zero", first.at(0.0)), ("plain", None), ("on", first))}
    assert alone["zero"] == alone["plain"] != alone["on"]


def test_disruption_is_zero_at_zero_and_grows_with_the_coefficient(tiny_model):
    model, tokenizer = tiny_model
    adapter = _adapter(model)
    texts = teacher_texts(tokenizer, [PROMPTS[1]], [" return a[::-1]\n"], True, 32)
    measured = disruption(model, texts, [adapter.at(c) for c in (0.0, 0.3, 1.0)], progress=False)
    assert measured[0] == pytest.approx(0.0, abs=1e-6) and 0 < measured[1] < measured[2]


def test_the_adapter_saves_and_loads_by_kind_with_its_coefficient_algebra(tmp_path, tiny_model):
    model, tokenizer = tiny_model
    adapter = SVDRotationAdapter("test/adapter", _adapter(model, rotate_u=True).weights, 0.5, {"source": "test"})
    assert isinstance(adapter, Intervention)
    assert adapter.negated().coefficient == -0.5 and adapter.negated().negated() == adapter
    assert adapter.at(0.2).label != adapter.label and adapter.at(0.5).label == adapter.label
    save_interventions(tmp_path / "adapter.safetensors", [adapter, adapter.negated(), _addition(1)])
    loaded = load_interventions(tmp_path / "adapter.safetensors")
    assert [i.label for i in loaded] == [adapter.label, adapter.negated().label, _addition(1).label]
    assert loaded[0].provenance == {"source": "test"} and loaded[0].first_layer == 0  # layer 1 is adapted
    with adapter.prefill_applied(model):
        expected = _logits(model, tokenizer, PROMPTS[2])
    with loaded[0].prefill_applied(model):
        assert torch.allclose(_logits(model, tokenizer, PROMPTS[2]), expected, atol=1e-6)
    assert np.isfinite(float(loaded[1].weights[0].log_scale.sum()))
