"""The kv_cache intervention (seed 002): one edit of the cache after the prompt, as predicted, batched or not."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from common.generation import EngineSettings, GenerationRequest, generate
from common.hooks import cache_keyword
from common.interventions import Intervention, KVCacheEdit, load_interventions, save_interventions
from tests.test_interventions import PROMPTS, _addition, _by_key


def _edit(model, seed: int, layers: tuple[int, ...], alpha: float, key_weight: float = 0.0) -> KVCacheEdit:
    config = model.config
    shape = (len(layers), config.num_key_value_heads, config.hidden_size // config.num_attention_heads)
    generator = torch.Generator().manual_seed(seed)
    return KVCacheEdit(f"kv/{seed}", layers, torch.randn(shape, generator=generator),
                       torch.randn(shape, generator=generator), alpha, key_weight, 1.0, {"source": "test"})


def _greedy_after_edit(model, tokenizer, prompt: str, edit: KVCacheEdit, n_tokens: int) -> str:
    """By hand: prefill, first token from the prefill's logits, the edit added to the cache at the last prompt
    position, then greedy decoding one token at a time."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    cache = DynamicCache(config=model.config)
    keyword = cache_keyword(model)
    with torch.no_grad():
        tokens = [int(model(input_ids=ids, use_cache=True, **{keyword: cache}).logits[0, -1].argmax())]
        for i, layer in enumerate(edit.layers):
            cache.layers[layer].keys[..., -1, :] += edit.alpha * edit.key_weight * edit.key_deltas[i]
            cache.layers[layer].values[..., -1, :] += edit.alpha * edit.value_weight * edit.value_deltas[i]
        while len(tokens) < n_tokens:
            logits = model(input_ids=torch.tensor([[tokens[-1]]]), use_cache=True, **{keyword: cache}).logits
            tokens.append(int(logits[0, -1].argmax()))
    return tokenizer.decode(tokens, skip_special_tokens=True)


def test_the_edit_changes_the_following_tokens_as_computed_by_hand(tiny_model):
    model, tokenizer = tiny_model
    for key_weight in (0.0, 1.0):  # values only, and keys too
        edit = _edit(model, 0, layers=(1, 3), alpha=40.0, key_weight=key_weight)
        steered = {r.request.key: r.text for r in generate(model, tokenizer, [
            GenerationRequest(PROMPTS[0], intervention=edit, key="kv"), GenerationRequest(PROMPTS[0], key="plain")],
            EngineSettings(6, 2))}
        assert steered["kv"] == _greedy_after_edit(model, tokenizer, PROMPTS[0], edit, 6)
        assert steered["kv"] != steered["plain"]  # the edit does something the check can see
        assert steered["kv"][:1] == steered["plain"][:1]  # the first token comes from the unedited prefill


def test_rows_with_cache_edits_in_a_batch_get_their_one_at_a_time_output(tiny_model):
    model, tokenizer = tiny_model
    kinds = [_edit(model, 1, (2,), 30.0), _addition(5, layer=1), None, _edit(model, 2, (0, 3), 20.0, key_weight=0.5)]
    requests = [GenerationRequest(p, intervention=kinds[(i + j) % 4], key=(j, (i + j) % 4))
                for j, p in enumerate(PROMPTS) for i in range(2)]
    together = _by_key(model, tokenizer, requests, batch_size=3)
    for request in requests:
        assert together[request.key] == _by_key(model, tokenizer, [request], batch_size=1)[request.key]


def test_a_cache_edit_saves_and_loads_by_kind_with_its_algebra(tmp_path, tiny_model):
    model, _ = tiny_model
    edit = _edit(model, 3, (1, 2), 5.0, key_weight=0.25)
    assert isinstance(edit, Intervention)
    save_interventions(tmp_path / "kv.safetensors", [edit, edit.negated(), _addition(1)])
    loaded = load_interventions(tmp_path / "kv.safetensors")
    assert [i.label for i in loaded[:2]] == [edit.label, edit.negated().label]
    assert (loaded[0].layers, loaded[0].key_weight, loaded[0].provenance) == ((1, 2), 0.25, {"source": "test"})
    assert torch.equal(loaded[1].value_deltas, -edit.value_deltas) and edit.negated().negated().label == edit.label
    assert edit.at(0.0).label != edit.label and edit.at(5.0).label == edit.label
