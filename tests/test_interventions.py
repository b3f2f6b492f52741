"""The Intervention protocol: registry and file format, direction algebra, and an engine that knows only the protocol."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch

from common.directions import SteeringDirection
from common.generation import EngineSettings, GenerationRequest, generate
from common.interventions import (REGISTRY, Intervention, ResidualAddition, kind_class, load_interventions, register,
                                  save_interventions)
from common.interventions.kv_cache import NothingWhileDecoding

PROMPTS = ["def add(a, b):", "Write a function that reverses a list.", "y =", "Count the vowels of a word."]


def _addition(seed: int = 0, layer: int = 1, alpha: float = 30.0, positions: str = "all") -> ResidualAddition:
    vector = torch.randn(64, generator=torch.Generator().manual_seed(seed))
    return ResidualAddition(SteeringDirection(f"test/{seed}", layer, vector, "random", {"seed": seed}), alpha, positions)


@register
@dataclass(frozen=True)
class _ValueShift:
    """A kind used only here: after the prefill, add `delta` to the values of one layer at the last prompt
    position, once; nothing during decoding. It exercises the step after the prefill."""
    kind: ClassVar[str] = "test_value_shift"
    layer: int
    delta: float

    @property
    def label(self) -> str:
        return f"value_shift/{self.layer}@{self.delta:g}"

    steers_prefill = True  # a full prefill of its own under prefill_applied (which changes nothing): the slow path

    @property
    def first_layer(self) -> None:
        return None

    def columns(self) -> dict[str, Any]:
        return {"kind": self.kind, "intervention": self.label}

    def at(self, strength: float) -> _ValueShift:
        return _ValueShift(self.layer, strength)

    def negated(self) -> _ValueShift:
        return _ValueShift(self.layer, -self.delta)

    def prefill_applied(self, model):
        return contextlib.nullcontext()

    def after_prefill(self, prefill):
        keys_values = [(k, v) for k, v in prefill.keys_values]
        keys, values = keys_values[self.layer]
        values = values.clone()
        values[..., -1, :] += self.delta
        keys_values[self.layer] = (keys, values)
        return self, keys_values

    @classmethod
    def decoder(cls, model):
        return NothingWhileDecoding()

    def state(self):
        return {}, {"layer": self.layer, "delta": self.delta}

    @classmethod
    def from_state(cls, tensors, metadata):
        return cls(metadata["layer"], metadata["delta"])


def test_every_registered_kind_satisfies_the_protocol():
    assert {"residual_addition", "test_value_shift"} <= set(REGISTRY)
    assert isinstance(_addition(), Intervention) and isinstance(_ValueShift(1, 2.0), Intervention)
    with pytest.raises(ValueError, match="unknown intervention kind 'nope'"):
        kind_class("nope")


def test_a_saved_file_of_mixed_kinds_loads_back_by_kind(tmp_path):
    saved = [_addition(1, positions="last_prompt"), _ValueShift(2, 0.5), _addition(2).negated()]
    save_interventions(tmp_path / "mixed.safetensors", saved)
    loaded = load_interventions(tmp_path / "mixed.safetensors")
    assert [type(i) for i in loaded] == [ResidualAddition, _ValueShift, ResidualAddition]
    assert [i.label for i in loaded] == [i.label for i in saved]
    assert loaded[2].direction.provenance == {"seed": 2, "negated": True}


def test_direction_algebra_negates_and_scales():
    base = _addition(3, alpha=10.0)
    assert torch.allclose(base.negated().added, -base.added)
    assert base.negated().negated().label == base.label
    assert base.negated().direction.name == "test/3/negated" and base.negated().label != base.label
    assert base.scaled(-0.5).alpha == -5.0 and torch.allclose(base.scaled(-0.5).added, -0.5 * base.added)
    assert base.at(0.0).label != base.label and torch.count_nonzero(base.at(0.0).added) == 0


def test_the_label_follows_the_content_not_the_name():
    a = _addition(4)
    same = ResidualAddition(SteeringDirection("test/4", 1, a.direction.vector * 2.0, "random"), 30.0)  # a power of two: the same unit vector, bit for bit
    other = ResidualAddition(SteeringDirection("test/4", 1, -a.direction.vector, "random"), 30.0)
    assert same.label == a.label and other.label != a.label


def _by_key(model, tokenizer, requests, batch_size):
    settings = EngineSettings(10, batch_size)
    return {r.request.key: r.text for r in generate(model, tokenizer, requests, settings)}


def test_rows_of_different_kinds_in_one_batch_get_their_one_at_a_time_output(tiny_model):
    """Residual additions at two layers, a value shift, and no intervention, mixed in a batch of 3 over 8 rows
    that join and leave: each row as if generated alone."""
    model, tokenizer = tiny_model
    kinds = [_addition(5, layer=1), _ValueShift(2, 25.0), None, _addition(6, layer=3, positions="last_prompt")]
    requests = [GenerationRequest(p, intervention=kinds[(i + 2 * j) % 4], key=(j, (i + 2 * j) % 4))
                for j, p in enumerate(PROMPTS) for i in range(2)]
    assert sorted({key[1] for key in (r.key for r in requests)}) == [0, 1, 2, 3]  # every kind and a plain row
    together = _by_key(model, tokenizer, requests, batch_size=3)
    for request in requests:
        assert together[request.key] == _by_key(model, tokenizer, [request], batch_size=1)[request.key]
    plain = {j: _by_key(model, tokenizer, [GenerationRequest(p, key="p")], 1)["p"] for j, p in enumerate(PROMPTS)}
    for (j, kind), text in together.items():
        assert (text == plain[j]) == (kinds[kind] is None)  # every intervention, the edit included, changed it


@dataclass(frozen=True)
class _InPlaceShift(_ValueShift):
    """The mistake the protocol forbids: editing the prefill's own values."""
    kind: ClassVar[str] = "test_in_place_shift"

    def after_prefill(self, prefill):
        prefill.keys_values[self.layer][1][..., -1, :] += self.delta
        return self, prefill.keys_values


def test_an_edit_after_the_prefill_leaves_the_reused_prefill_alone(tiny_model):
    """The same edit twice on one prompt: the second row reuses the cached prefill and must start from it
    unedited, so both rows write the same; the in-place variant shows the check can fail."""
    model, tokenizer = tiny_model

    def twice(shift):
        return _by_key(model, tokenizer, [GenerationRequest(PROMPTS[1], intervention=shift, key=k) for k in "ab"], 1)

    copied = twice(_ValueShift(2, 3.0))
    assert copied["a"] == copied["b"]
    in_place = twice(_InPlaceShift(2, 3.0))
    assert in_place["a"] == copied["a"] and in_place["b"] != in_place["a"]


def test_every_registered_method_reads_only_phases_upstream_of_phase_4_5():
    from common.methods import METHODS
    from common.phases import get_phase

    assert METHODS and all(set(m.upstream) <= set(get_phase("4.5").upstream) for m in METHODS.values())
