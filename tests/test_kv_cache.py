"""The kv_cache intervention (seed 002): one edit of the cache after the prompt, as predicted, batched or not."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from common.generation import EngineSettings, EngineStats, GenerationRequest, generate
from common.hooks import cache_keyword
from common.interventions import Intervention, KVCacheEdit, load_interventions, save_interventions
from common.prefill import Prefill
from tests.test_interventions import PROMPTS, _addition, _by_key


def _edit(model, seed: int, layers: tuple[int, ...], alpha: float, key_weight: float = 0.0) -> KVCacheEdit:
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    shape = (len(layers), config.num_key_value_heads, head_dim)
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
        first = {r.request.key: r.text for r in generate(model, tokenizer, [
            GenerationRequest(PROMPTS[0], intervention=edit, key="kv"), GenerationRequest(PROMPTS[0], key="plain")],
            EngineSettings(1, 2))}
        assert first["kv"] == first["plain"]  # the first token comes from the unedited prefill


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


def test_the_edit_lands_on_copies_at_the_last_prompt_position_in_the_caches_dtype():
    keys = [torch.randn(1, 2, 5, 16).to(torch.bfloat16) for _ in range(3)]
    values = [torch.randn(1, 2, 5, 16).to(torch.bfloat16) for _ in range(3)]
    originals = [(k.clone(), v.clone()) for k, v in zip(keys, values)]
    prefill = Prefill(list(zip(keys, values)), torch.zeros(8), {}, 0.0)
    deltas = torch.randn(1, 2, 16, generator=torch.Generator().manual_seed(0))
    edit = KVCacheEdit("kv/test", (1,), deltas, 2 * deltas, alpha=3.0, key_weight=0.5, value_weight=1.0)
    returned, edited = edit.after_prefill(prefill)
    assert returned is edit
    for (k, v), (k0, v0) in zip(zip(keys, values), originals):  # the prefill is untouched
        assert torch.equal(k, k0) and torch.equal(v, v0)
    assert edited[0][0] is keys[0] and edited[2][1] is values[2]  # other layers passed through as they are
    new_keys, new_values = edited[1]
    assert new_keys.dtype == torch.bfloat16 and new_values.dtype == torch.bfloat16
    assert torch.equal(new_keys[..., :-1, :], keys[1][..., :-1, :])  # only the last prompt position moves
    assert torch.equal(new_keys[..., -1, :], keys[1][..., -1, :] + (1.5 * deltas[0]).to(torch.bfloat16))
    assert torch.equal(new_values[..., -1, :], values[1][..., -1, :] + (6.0 * deltas[0]).to(torch.bfloat16))
    with pytest.raises(ValueError, match="kv heads"):
        KVCacheEdit("kv/bad", (1,), torch.zeros(1, 4, 16), torch.zeros(1, 4, 16)).after_prefill(prefill)


def test_the_same_prompt_and_edit_twice_write_the_same(tiny_model):
    """The second request reuses the cached prefill: it must start from it unedited, not edited twice."""
    model, tokenizer = tiny_model
    edit = _edit(model, 4, (2,), 30.0)
    twice = _by_key(model, tokenizer, [GenerationRequest(PROMPTS[2], intervention=edit, key=k) for k in "ab"], 1)
    assert twice["a"] == twice["b"]


def test_cache_edits_of_a_prompt_share_its_one_unsteered_prefill(tiny_model):
    """The edit comes after the prefill, so edits of one prompt and its plain request prefill it once between them."""
    model, tokenizer = tiny_model
    edits = [_edit(model, seed, (1, 3), 30.0) for seed in (5, 6, 7)]
    requests = [GenerationRequest(prompt, intervention=edit, key=(prompt, i))
                for prompt in PROMPTS[:2] for i, edit in enumerate([None, *edits])]
    stats = EngineStats()
    together = {r.request.key: r.text for r in generate(model, tokenizer, requests, EngineSettings(4, 8), stats)}
    assert (stats.prefill.prefills, stats.prefill.partial_prefills) == (2, 0)  # one full pass per prompt, nothing else
    alone = {r.key: next(iter(generate(model, tokenizer, [r], EngineSettings(4, 1)))).text for r in requests}
    assert together == alone  # the shared prefill is never edited in place
