import pytest

from common.errors import PipelineError
from common.prompt_utils import PromptBuilder, resolve_prompt_style

MBPP_LIKE = {"task_id": "1", "text": "Write a function to add two numbers.", "source": "file:x",
             "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"], "prompt_stub": "def add(a, b):\n"}
HUMANEVAL_LIKE = {"task_id": "HumanEval/x", "source": "humaneval", "test_list": [],
                  "prompt_stub": 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum xs."""\n'}


def test_original_mbpp_prompt_format():
    assert (PromptBuilder.build_prompt("Add them.", ["assert f(1)", "assert f(2)"]) ==
        "Add them.\n\nassert f(1)\nassert f(2)\n\n# Solution:")
    assert (PromptBuilder("base").build(MBPP_LIKE) ==
        "Write a function to add two numbers.\n\nassert add(1, 2) == 3\nassert add(0, 0) == 0\n\n# Solution:")


def test_base_humaneval_prompt_is_the_stub_and_the_stub_prefixes_the_code():
    builder = PromptBuilder("base")
    assert builder.build(HUMANEVAL_LIKE) == HUMANEVAL_LIKE["prompt_stub"]
    assert builder.code_prefix(HUMANEVAL_LIKE) == HUMANEVAL_LIKE["prompt_stub"]
    assert builder.code_prefix(MBPP_LIKE) == ""


def test_chat_prompt_uses_the_template(smollm_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm_tokenizer_dir)
    builder = PromptBuilder(resolve_prompt_style("auto", tokenizer), tokenizer)
    assert builder.style == "chat" and not builder.adds_special_tokens
    prompt = builder.build(MBPP_LIKE)
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")
    assert "assert add(1, 2) == 3" in prompt and "```python" in prompt
    assert builder.code_prefix(HUMANEVAL_LIKE) == "from typing import List\n\n"


def test_chat_style_needs_a_template():
    class NoTemplate:
        chat_template = None

    assert resolve_prompt_style("auto", NoTemplate()) == "base"
    with pytest.raises(PipelineError, match="chat template"):
        resolve_prompt_style("chat", NoTemplate())


def test_stoppers():
    chat_stop = PromptBuilder("chat").stopper(MBPP_LIKE)
    assert chat_stop("Here:\n```python\ndef f():\n    pass\n") is None
    text = "Here:\n```python\ndef f():\n    pass\n```\nThis function"
    assert text[:chat_stop(text)].endswith("pass\n```")
    base_stop = PromptBuilder("base").stopper(MBPP_LIKE)
    text = "def add(a, b):\n    return a + b\nassert add(1, 2) == 3"
    assert text[:base_stop(text)] == "def add(a, b):\n    return a + b"
    completion_stop = PromptBuilder("base").stopper(HUMANEVAL_LIKE)
    text = "    return sum(xs)\n\ndef other():"
    assert text[:completion_stop(text)] == "    return sum(xs)\n"
