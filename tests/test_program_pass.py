"""The teacher-forced pass over prompt + program: it reads the program's own tokens, batched equals one at a time,
and its confidence columns equal the model's log-probabilities computed the plain way."""

from __future__ import annotations

import pytest
import torch

from common.code_extraction import code_span, extract_code
from common.program_pass import EMPTY_PROGRAM, ProgramText, record_programs

CHAT_OUTPUT = ("Here is the function:\n```python\ndef add(a, b):\n    return a + b\n```\nIt adds.\n"
               "```python\nprint(add(1, 2))\n```")


def test_code_span_is_the_block_extract_code_takes():
    start, end = code_span(CHAT_OUTPUT, "add")
    assert CHAT_OUTPUT[start:end] == "def add(a, b):\n    return a + b\n"
    assert extract_code(CHAT_OUTPUT, "add") == CHAT_OUTPUT[start:end]
    assert code_span("def f():\n    pass", "f") == (0, len("def f():\n    pass"))  # no fence: the whole output


def _texts(tokenizer) -> list[ProgramText]:
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Add two numbers."}],
                                           add_generation_prompt=True, tokenize=False)
    outputs = [(prompt, CHAT_OUTPUT, "add"), (prompt + "x", "```python\ndef g():\n    return 1\n```", "g"),
               (prompt, "   \n", "h"),  # nothing to read: an error type, NaN activations
               (prompt, "def h(x):\n    return [x] * 3", "h")]
    return [ProgramText(p, output, code_span(output, name)) for p, output, name in outputs]


@pytest.fixture(scope="module")
def recorded(tiny_model):
    model, tokenizer = tiny_model
    return record_programs(model, tokenizer, _texts(tokenizer), [1, 3], position_k=3, add_special_tokens=False,
                           max_batch_tokens=10_000)


@pytest.mark.parametrize("architecture", ["tiny_model", "tiny_gemma"])
def test_each_position_reads_the_program_tokens_and_the_confidence_matches_the_plain_computation(architecture, request):
    model, tokenizer = request.getfixturevalue(architecture)
    recorded = record_programs(model, tokenizer, _texts(tokenizer), [1, 3], position_k=3, add_special_tokens=False)
    text = _texts(tokenizer)[0]
    prompt_ids = tokenizer(text.prompt, add_special_tokens=False)["input_ids"]
    start, end = code_span(text.raw_output, "add")
    before = tokenizer(text.raw_output[:start], add_special_tokens=False)["input_ids"]
    program = tokenizer(text.raw_output[start:end], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + before + program])  # the fence ends in a newline: tokens split cleanly there
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    first = len(prompt_ids) + len(before)
    logprobs = torch.log_softmax(out.logits[0, first - 1:-1].float(), dim=-1)
    top2 = logprobs.topk(2, dim=-1).values
    assert recorded.columns["program_tokens"][0] == len(program)
    assert recorded.columns["prompt_tokens"][0] == len(prompt_ids)
    assert recorded.columns["program_mean_logprob"][0] == pytest.approx(
        float(logprobs.gather(1, torch.tensor(program)[:, None]).mean()), abs=1e-4)
    assert recorded.columns["program_mean_margin"][0] == pytest.approx(float((top2[:, 0] - top2[:, 1]).mean()), abs=1e-4)
    hidden = out.hidden_states[2][0]  # output of decoder layer 1
    torch.testing.assert_close(recorded.activations["code_last"][1][0], hidden[-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(recorded.activations["code_mean"][1][0], hidden[first:].mean(0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(recorded.activations["code_last_k"][1][0], hidden[-3:].mean(0), atol=1e-4, rtol=1e-4)


def test_an_empty_output_is_recorded_with_an_error_type_and_no_activation(recorded):
    assert recorded.columns["program_error"] == [None, None, EMPTY_PROGRAM, None]
    assert recorded.columns["program_tokens"][2] == 0 and recorded.columns["program_mean_logprob"][2] is None
    for position, by_layer in recorded.activations.items():
        assert by_layer[3][2].isnan().all() and not by_layer[3][[0, 1, 3]].isnan().any(), position


def test_batched_pass_equals_one_row_at_a_time(tiny_model, recorded):
    model, tokenizer = tiny_model
    alone = record_programs(model, tokenizer, _texts(tokenizer), [1, 3], position_k=3, add_special_tokens=False,
                            max_batch_tokens=1)  # every sequence in a batch of its own
    for position in recorded.activations:
        torch.testing.assert_close(alone.activations[position][3], recorded.activations[position][3], atol=1e-4,
                                   rtol=1e-4, equal_nan=True)
    assert alone.columns["program_mean_logprob"] == pytest.approx(recorded.columns["program_mean_logprob"], abs=1e-4)
