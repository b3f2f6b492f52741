"""Seed 000's dictionary and self-steering: routing as written in the seed, the row's own vector in prefill and
decoding, batched rows as alone, saving by kind, and the random-routing controls."""

from __future__ import annotations

import numpy as np
import torch

from common.controls import random_routing_controls
from common.directions import SteeringDirection
from common.disruption import disruption
from common.generation import EngineSettings, GenerationRequest, generate
from common.hooks import cache_keyword
from common.interventions import (Intervention, ResidualAddition, SelfSteering, load_interventions,
                                  save_interventions)
from common.prefill import capture_last_prompt_token
from common.steering_dictionary import SteeringDictionary
from common.disruption import teacher_texts
from tests.test_interventions import PROMPTS, _addition, _by_key


def _dictionary(d_model: int = 64, k: int = 3, layer: int = 1, tau: float = 5.0, seed: int = 0) -> SteeringDictionary:
    generator = torch.Generator().manual_seed(seed)
    means = torch.nn.functional.normalize(torch.randn(k, d_model, generator=generator), dim=-1)
    weight = torch.randn(d_model, d_model, generator=generator) / d_model ** 0.5
    return SteeringDictionary(layer, means, weight, torch.randn(d_model, generator=generator),
                              torch.randn(d_model, generator=generator), torch.rand(d_model, generator=generator) + 0.5,
                              tau)


def test_routing_is_a_softmax_of_cosines_and_the_adjustment_its_mix_of_the_means():
    dictionary = _dictionary(d_model=8, k=3, tau=7.0)
    hidden = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    projected = ((hidden - dictionary.input_mean) / dictionary.input_scale) @ dictionary.weight.T + dictionary.bias
    cosines = np.array([[float(torch.nn.functional.cosine_similarity(p, m, dim=0)) for m in dictionary.means]
                        for p in projected])
    weights = np.exp(7.0 * cosines) / np.exp(7.0 * cosines).sum(1, keepdims=True)
    routed = dictionary.route(hidden)
    assert np.allclose(routed.weights.numpy(), weights, atol=1e-6)
    assert np.allclose(routed.adjustment.numpy(), weights @ dictionary.means.numpy(), atol=1e-6)
    features = dictionary.features(hidden)
    top = np.sort(weights, axis=1)[:, ::-1]
    assert np.allclose(features[:, 0], top[:, 0], atol=1e-6) and np.allclose(features[:, 1], top[:, 0] - top[:, 1],
                                                                              atol=1e-6)
    assert np.allclose(features[:, 3], np.linalg.norm(weights @ dictionary.means.numpy(), axis=1), atol=1e-6)
    mix = weights @ dictionary.means.numpy()
    cosine = (projected.numpy() * mix).sum(1) / np.linalg.norm(projected.numpy(), axis=1) / np.linalg.norm(mix, axis=1)
    assert np.allclose(features[:, 2], cosine, atol=1e-5)
    assert (features[:, 3] <= 1 + 1e-6).all()  # a convex mix of unit means


def test_random_routing_shuffles_each_rows_weights_by_its_own_activation_and_a_random_dictionary_keeps_the_router():
    dictionary = _dictionary(k=4)
    hidden = torch.randn(40, 64, generator=torch.Generator().manual_seed(2))
    learned, shuffled = dictionary.route(hidden).weights, dictionary.randomly_routed(7).route(hidden).weights
    orders = [tuple(int(i) for i in dictionary.randomly_routed(7).random_order(h)) for h in hidden]
    assert all(torch.equal(shuffled[i], learned[i][list(order)]) for i, order in enumerate(orders))
    assert len(set(orders)) > 10  # rows get different permutations
    assert torch.allclose(dictionary.randomly_routed(7).route(hidden[:3]).weights, shuffled[:3])  # a row's is its own
    assert not torch.equal(dictionary.randomly_routed(8).route(hidden).weights, shuffled)
    other = torch.randn(4, 64, generator=torch.Generator().manual_seed(3))
    swapped = dictionary.with_means(other)
    assert torch.allclose(swapped.means.norm(dim=-1), torch.ones(4))
    assert swapped.digest != dictionary.digest and dictionary.randomly_routed(7).digest != dictionary.digest


def _unsteered_last_prompt(model, tokenizer, prompt: str, layer: int) -> torch.Tensor:
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad(), capture_last_prompt_token(model, [layer]) as captured:
        model(input_ids=ids)
    return captured[layer]


def test_each_row_is_steered_by_the_vector_of_its_own_prompt_from_the_first_token_on(tiny_model):
    """Self-steering of a prompt generates what a residual addition of alpha * s(h) at every position does, s from
    that prompt's unsteered activation; and two prompts routed to different means get different vectors."""
    model, tokenizer = tiny_model
    hidden = torch.cat([_unsteered_last_prompt(model, tokenizer, prompt, 1) for prompt in PROMPTS[:2]])
    centre = hidden.mean(0)
    means = torch.nn.functional.normalize(torch.cat([hidden - centre, torch.randn(1, 64)]), dim=-1)
    routed = SteeringDictionary(1, means, torch.eye(64), torch.zeros(64), centre, torch.ones(64), 5.0)
    steering = SelfSteering("test/self", routed, 25.0)
    vectors = steering.vector(hidden)
    assert float(torch.nn.functional.cosine_similarity(vectors[0], vectors[1], dim=0)) < 0.5
    for prompt, vector in zip(PROMPTS[:2], vectors):
        same = ResidualAddition(SteeringDirection("same", 1, vector, "test", {}), 25.0 * float(vector.norm()), "all")
        texts = {r.request.key: r.text for r in generate(model, tokenizer, [
            GenerationRequest(prompt, intervention=steering, key="self"),
            GenerationRequest(prompt, intervention=same, key="same"), GenerationRequest(prompt, key="plain")],
            EngineSettings(6, 3))}
        assert texts["self"] == texts["same"] != texts["plain"]


def test_rows_with_self_steering_in_a_batch_get_their_one_at_a_time_output(tiny_model):
    model, tokenizer = tiny_model
    steering = SelfSteering("test/self", _dictionary(layer=2, tau=2.0), 30.0)
    kinds = [steering, _addition(5, layer=1), None, steering.negated()]
    requests = [GenerationRequest(p, intervention=kinds[(i + j) % 4], key=(j, (i + j) % 4))
                for j, p in enumerate(PROMPTS) for i in range(2)]
    together = _by_key(model, tokenizer, requests, batch_size=3)
    for request in requests:
        assert together[request.key] == _by_key(model, tokenizer, [request], batch_size=1)[request.key]


def test_disruption_of_self_steering_is_that_of_its_own_residual_addition(tiny_model):
    model, tokenizer = tiny_model
    steering = SelfSteering("test/self", _dictionary(layer=1), 8.0)
    vector = steering.vector(_unsteered_last_prompt(model, tokenizer, PROMPTS[1], 1))[0]
    same = ResidualAddition(SteeringDirection("same", 1, vector, "test", {}), 8.0 * float(vector.norm()), "all")
    texts = teacher_texts(tokenizer, [PROMPTS[1]], [" return a[::-1]\n"], True, 32)
    assert cache_keyword(model)
    measured = disruption(model, texts, [steering, same], progress=False)
    assert measured[0] > 1e-4 and np.isclose(measured[0], measured[1], rtol=1e-3, atol=1e-6)


def test_self_steering_saves_and_loads_by_kind_with_its_algebra(tmp_path):
    steering = SelfSteering("test/self", _dictionary(k=4).randomly_routed(5), 3.0, "code_mean")
    assert isinstance(steering, Intervention)
    save_interventions(tmp_path / "self.safetensors", [steering, steering.negated(), _addition(1)])
    loaded = load_interventions(tmp_path / "self.safetensors")
    assert [i.label for i in loaded[:2]] == [steering.label, steering.negated().label]
    assert loaded[0].dictionary.routing_seed == 5 and loaded[0].position == "code_mean"
    assert loaded[1].negated_push and not loaded[0].negated_push
    hidden = torch.randn(2, 64)
    assert torch.allclose(loaded[1].vector(hidden), -steering.vector(hidden))
    assert steering.negated().negated().label == steering.label and steering.at(0.0).label != steering.label


def test_random_routing_controls_at_two_clusters_are_as_many_distinct_controls_as_asked():
    steering = SelfSteering("self_steering", _dictionary(k=2), 1.0)
    controls = random_routing_controls(steering, 20, seed=4)
    shuffled = [c for c in controls if c.type == "shuffled_routing"]
    assert len(controls) == 20 and len(shuffled) == 10
    assert len({c.unit.dictionary.routing_seed for c in shuffled}) == 10
    assert len({c.unit.label for c in controls}) == 20
    assert all(torch.equal(c.unit.dictionary.weight, steering.dictionary.weight) for c in controls)
    hidden = torch.randn(64, 64, generator=torch.Generator().manual_seed(5))
    swapped = [float((c.unit.dictionary.route(hidden).weights != steering.dictionary.route(hidden).weights)
                     .any(dim=1).float().mean()) for c in shuffled]
    assert all(0.25 < share < 0.75 for share in swapped)  # about half the rows routed the other way, per control
    assert [c.unit.label for c in random_routing_controls(steering, 20, seed=4)] == [c.unit.label for c in controls]
