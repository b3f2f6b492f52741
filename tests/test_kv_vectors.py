"""Phase 2.8's KV-cache vectors: extraction by mean or k-means, the seed's layout, unit edits and their controls."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from common.code_extraction import code_span
from common.controls import random_kv_controls
from common.interventions import KVCacheEdit
from common.hooks import cache_keyword
from common.kv_vectors import default_layers, extract_deltas, load_vector, save_vector
from common.program_pass import ProgramText, record_last_keys_values

SHAPE = (3, 2, 4)  # layers, kv heads, head dim


def _pairs(n_majority: int, n_minority: int) -> tuple[dict, dict, torch.Tensor, torch.Tensor]:
    """Pairs whose value differences are `majority` plus noise for most and `minority` for the rest."""
    generator = torch.Generator().manual_seed(0)
    majority, minority = torch.randn(SHAPE, generator=generator), 10 * torch.randn(SHAPE, generator=generator)
    differences = torch.cat([majority.expand(n_majority, *SHAPE), minority.expand(n_minority, *SHAPE)])
    differences = differences + 0.01 * torch.randn(differences.shape, generator=generator)
    negative = {side: torch.randn(differences.shape, generator=generator) for side in ("keys", "values")}
    positive = {side: negative[side] + differences for side in ("keys", "values")}
    return positive, negative, majority, minority


def test_the_seed_band_of_layers_scales_with_depth():
    assert default_layers(28) == list(range(8, 16))  # seed 002's own model
    assert default_layers(30) == list(range(9, 17))  # SmolLM2-135M
    assert default_layers(4) == [1, 2]


def test_the_mean_is_the_mean_paired_difference_and_kmeans_keeps_the_largest_cluster():
    positive, negative, majority, minority = _pairs(12, 4)
    rows = np.ones(16, dtype=bool)
    keys, values, clusters = extract_deltas(positive, negative, rows, "mean", 2, 0)
    assert clusters is None
    assert torch.allclose(values, (positive["values"] - negative["values"]).mean(0), atol=1e-5)
    assert torch.allclose(values, (12 * majority + 4 * minority) / 16, atol=0.02)
    keys, values, clusters = extract_deltas(positive, negative, rows, "kmeans", 2, 0)
    assert sorted(clusters["sizes"]) == [4, 12]
    assert torch.allclose(values, majority, atol=0.02) and torch.allclose(keys, majority, atol=0.02)
    some = np.arange(16) < 12  # only the rows asked for
    _, values, _ = extract_deltas(positive, negative, some, "mean", 2, 0)
    assert torch.allclose(values, majority, atol=0.02)


def _edit(key_weight: float = 0.0) -> KVCacheEdit:
    generator = torch.Generator().manual_seed(1)
    return KVCacheEdit("kv_mutant", (4, 5, 6), torch.randn(SHAPE, generator=generator),
                       torch.randn(SHAPE, generator=generator), 1.0, key_weight, 1.0, {"source": "kv_cache_mutant"})


@pytest.mark.parametrize("key_weight", [0.0, 0.5])
def test_a_unit_edit_adds_norm_one_and_its_alpha_converts_to_the_raw_coefficient(key_weight):
    edit = _edit(key_weight)
    unit = edit.unit()
    added = torch.cat([(key_weight * unit.key_deltas).flatten(), unit.value_deltas.flatten()])
    assert float(added.norm()) == pytest.approx(1.0, rel=1e-6)
    scale = unit.provenance["unit_scale"]
    assert torch.allclose(unit.at(7.0).value_deltas * 7.0, edit.value_deltas * (7.0 * scale), atol=1e-6)
    assert unit.unit().provenance["unit_scale"] == pytest.approx(scale)  # already a unit: the factor stays
    with pytest.raises(ValueError, match="adds nothing"):
        KVCacheEdit("zero", (1,), torch.ones(1, 2, 4), torch.zeros(1, 2, 4)).unit()  # values only, and they are 0


def test_random_kv_controls_have_the_edits_per_layer_norms_and_nothing_else_in_common():
    edit = _edit(0.5)
    controls = random_kv_controls(edit, 5, seed=3)
    assert [c.index for c in controls] == list(range(5)) and {c.type for c in controls} == {"random_kv_norms"}
    for control in controls:
        unit = control.unit
        assert unit.layers == edit.layers and (unit.key_weight, unit.value_weight) == (0.5, 1.0)
        for mine, theirs in ((unit.key_deltas, edit.key_deltas), (unit.value_deltas, edit.value_deltas)):
            assert torch.allclose(mine.flatten(1).norm(dim=1), theirs.flatten(1).norm(dim=1), rtol=1e-5)
            cosine = torch.nn.functional.cosine_similarity(mine.flatten(), theirs.flatten(), dim=0)
            assert abs(float(cosine)) < 0.7
    again = random_kv_controls(edit, 5, seed=3)
    assert all(torch.equal(a.unit.value_deltas, b.unit.value_deltas) for a, b in zip(controls, again))
    other = random_kv_controls(edit, 5, seed=4)
    assert not torch.equal(other[0].unit.value_deltas, controls[0].unit.value_deltas)


def test_the_seed_layout_round_trips(tmp_path):
    edit = _edit()
    paths = save_vector(tmp_path, edit, [{"task_id": "t", "kind": "mutant"}], {"n_pairs": 1}, {"positive": "p"})
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "datasets/kv_mutant_pairs.jsonl", "steering_vectors/kv_mutant.safetensors", "steering_vectors/kv_mutant.json",
        "steering_vectors/kv_mutant_template.json"]
    loaded = load_vector(tmp_path, "kv_mutant")
    assert loaded.label == edit.label and loaded.provenance == edit.provenance
    metadata = json.loads(paths[2].read_text())
    assert metadata["layers"] == [4, 5, 6] and metadata["n_pairs"] == 1 and metadata["kind"] == "kv_cache"
    assert load_vector(tmp_path, "kv_own") is None


OUTPUTS = [("Write add.", "```python\ndef add(a, b):\n    return a + b\n```\nDone, it adds.", "add"),
           ("Write add.", "```python\ndef add(a, b):\n    return b + a + 0\n```", "add"),
           ("Write sub.", "def sub(a, b):\n    return a - b\n", "sub"),
           ("Write sub.", "", "sub")]  # no program: nothing to read


@pytest.mark.parametrize("whole_output", [False, True])
def test_keys_and_values_are_read_at_the_last_token_as_one_full_pass_caches_them(tiny_model, whole_output):
    """Against one pass per text over prompt + output (up to the program's end, or all of it): the cache's last
    column, after the batched pass that shares each prompt's prefill and right-pads texts of different lengths."""
    model, tokenizer = tiny_model
    layers = [1, 3]
    texts = [ProgramText(prompt, output, (0, len(output)) if whole_output else code_span(output, name))
             for prompt, output, name in OUTPUTS]
    keys, values, read = record_last_keys_values(model, tokenizer, texts, layers, True)
    assert read.tolist() == [True, True, True, False]
    assert keys[3].isnan().all() and values[3].isnan().all()
    for i, text in enumerate(texts[:3]):
        end = text.span[1]
        ids = (tokenizer(text.prompt)["input_ids"]
               + tokenizer(text.raw_output[:end], add_special_tokens=False)["input_ids"])
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(input_ids=torch.tensor([ids]), use_cache=True, **{cache_keyword(model): cache})
        for j, layer in enumerate(layers):
            assert torch.allclose(keys[i, j], cache.layers[layer].keys[0, :, -1], atol=1e-5)
            assert torch.allclose(values[i, j], cache.layers[layer].values[0, :, -1], atol=1e-5)
    assert not torch.allclose(values[0], values[1])  # two programs of one prompt: each its own last token
