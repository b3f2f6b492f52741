import pytest
import torch
from transformers import GenerationConfig

from common.errors import PipelineError
from common.generation import generate_batch
from common.prefill import capture_last_prompt_token
from common.hooks import check_layers, decoder_layers
from common.prompt_utils import PromptBuilder

PROMPTS = ["def add(a, b):", "Write a function that reverses a list of numbers and returns it.",
           "x", "Sort the words of a sentence by length, then alphabetically, and join them."]


def test_batched_greedy_equals_one_at_a_time(tiny_model):
    model, tokenizer = tiny_model
    batched = generate_batch(model, tokenizer, PROMPTS, max_new_tokens=20, capture_layers=[1, 3])
    for prompt, together in zip(PROMPTS, batched):
        alone = generate_batch(model, tokenizer, [prompt], max_new_tokens=20, capture_layers=[1, 3])[0]
        assert together.text == alone.text
        assert together.n_new_tokens == alone.n_new_tokens == 20
        for layer in (1, 3):
            torch.testing.assert_close(together.activations[layer], alone.activations[layer], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model_fixture", ["tiny_model", "tiny_gemma"])
def test_greedy_tokens_equal_hf_generate_when_rows_leave_the_batch_early(model_fixture, request):
    """Rows 0 and 2 stop after a few characters and leave the batch; rows 1 and 3 must go on exactly as
    in HF generate, where every row stays to the end."""
    model, tokenizer = request.getfixturevalue(model_fixture)
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    config = GenerationConfig(max_new_tokens=20, do_sample=False, eos_token_id=[], pad_token_id=tokenizer.pad_token_id)
    with torch.inference_mode():
        reference = model.generate(**encoded, generation_config=config)[:, encoded["input_ids"].shape[1]:]
    expected = [tokenizer.decode(row, skip_special_tokens=True) for row in reference]
    stop_after = {0: 3, 2: 8}
    stoppers = [(lambda text, n=stop_after[row]: len(text) if len(text) >= n else None) if row in stop_after else None
                for row in range(len(PROMPTS))]
    results = generate_batch(model, tokenizer, PROMPTS, max_new_tokens=20, stoppers=stoppers)
    for row, result in enumerate(results):
        if row in stop_after:
            assert result.n_new_tokens < 20 and expected[row].startswith(result.text)
        else:
            assert (result.text, result.n_new_tokens) == (expected[row], 20)


def test_capture_is_the_output_of_layer_l_at_the_last_prompt_token(tiny_model):
    model, tokenizer = tiny_model
    encoded = tokenizer(["def add(a, b):"], return_tensors="pt")
    with torch.inference_mode():
        reference = model(**encoded, output_hidden_states=True).hidden_states
    result = generate_batch(model, tokenizer, ["def add(a, b):"], max_new_tokens=3, capture_layers=[0, 2])[0]
    for layer in (0, 2):  # hidden_states[0] is the embedding output, so layer L's output is index L + 1
        torch.testing.assert_close(result.activations[layer], reference[layer + 1][0, -1], rtol=1e-5, atol=1e-5)


def test_gemma2_layers_are_found_and_captured(tiny_gemma):
    model, tokenizer = tiny_gemma
    assert len(decoder_layers(model)) == 4
    results = generate_batch(model, tokenizer, PROMPTS[:2], max_new_tokens=4, capture_layers=[3])
    assert results[0].activations[3].shape == (64,)


def test_hooks_are_removed_even_after_an_error(tiny_model):
    model, _ = tiny_model
    blocks = decoder_layers(model)
    before = [len(block._forward_hooks) for block in blocks]  # transformers keeps hooks of its own
    with pytest.raises(RuntimeError):
        with capture_last_prompt_token(model, [0, 1]):
            assert len(blocks[0]._forward_hooks) == before[0] + 1
            raise RuntimeError("boom")
    assert [len(block._forward_hooks) for block in blocks] == before


def test_stopper_cuts_each_row_on_its_own(tiny_model):
    model, tokenizer = tiny_model
    free = generate_batch(model, tokenizer, PROMPTS[:2], max_new_tokens=12)
    cut_at = len(free[0].text) // 2
    stopped = generate_batch(model, tokenizer, PROMPTS[:2], max_new_tokens=12,
                             stoppers=[lambda text: cut_at if len(text) > cut_at else None, None])
    assert stopped[0].text == free[0].text[:cut_at]
    assert stopped[0].n_new_tokens < 12
    assert stopped[1].text == free[1].text


def test_sampling_is_reproducible_for_a_seed(tiny_model):
    model, tokenizer = tiny_model
    first = generate_batch(model, tokenizer, PROMPTS[:2], max_new_tokens=8, temperature=1.0, seed=3)
    again = generate_batch(model, tokenizer, PROMPTS[:2], max_new_tokens=8, temperature=1.0, seed=3)
    greedy = generate_batch(model, tokenizer, PROMPTS[:2], max_new_tokens=8)
    assert [r.text for r in first] == [r.text for r in again]
    assert [r.text for r in first] != [r.text for r in greedy]


def test_layers_out_of_range_are_a_clear_error(tiny_model):
    model, _ = tiny_model
    with pytest.raises(PipelineError, match="out of range"):
        check_layers(model, [2, 4])


def test_chat_prompts_through_the_tiny_model(tiny_model):
    model, tokenizer = tiny_model
    builder = PromptBuilder("chat", tokenizer)
    prompt = builder.build({"text": "Add.", "test_list": ["assert f(1) == 1"], "source": "x"})
    result = generate_batch(model, tokenizer, [prompt], max_new_tokens=5, add_special_tokens=False)[0]
    assert result.n_new_tokens <= 5
