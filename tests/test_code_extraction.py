from common.code_extraction import extract_code, fenced_blocks
from common.sandbox import evaluate_code

CHAT_ANSWER = '''Sure! Here is the function:

```python
import math

def helper(x):
    return x * 2

def area(r):
    return math.pi * helper(r) / 2 * r

print(area(2))
assert area(1) > 3
example = area(3)
SCALE = 10
```

It uses `math.pi`.'''


def test_keeps_imports_helpers_and_constants_drops_test_code():
    code = extract_code(CHAT_ANSWER, "area")
    assert "import math" in code and "def helper" in code and "SCALE = 10" in code
    assert "print(" not in code and "assert" not in code and "example" not in code
    assert evaluate_code(code, "assert abs(area(1) - 3.14159) < 1e-3\n").passed


def test_picks_the_block_that_defines_the_entry_point():
    text = "First the usage:\n```python\nprint(f(1))\n```\nthen the code:\n```py\ndef f(x):\n    return x\n```\n"
    assert extract_code(text, "f") == "def f(x):\n    return x\n"


def test_unclosed_block_at_max_tokens_is_still_used():
    assert fenced_blocks("```python\ndef f(x):\n    return x") == ["def f(x):\n    return x"]


def test_main_guard_is_dropped():
    text = "```python\ndef f():\n    return 1\n\nif __name__ == '__main__':\n    f()\n```"
    assert extract_code(text, "f") == "def f():\n    return 1\n"


def test_completion_is_appended_to_its_stub():
    stub = 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum."""\n'
    code = extract_code("    return sum(xs)\n\nprint(total([1]))\n", "total", prefix=stub)
    assert evaluate_code(code, "assert total([1, 2]) == 3\n").passed
    assert "print" not in code


def test_chat_answer_gets_the_stub_imports():
    answer = "```python\ndef total(xs: List[int]) -> int:\n    return sum(xs)\n```"
    code = extract_code(answer, "total", prefix="from typing import List\n\n")
    assert code.startswith("from typing import List")
    assert evaluate_code(code, "assert total([1, 2]) == 3\n").passed


def test_unparseable_code_is_returned_for_the_sandbox_to_judge():
    code = extract_code("```python\ndef f(:\n    pass\n```", "f")
    assert code == "def f(:\n    pass\n"
    assert evaluate_code(code, "f()\n").error_type == "syntax"


def test_prose_without_code():
    assert extract_code("I cannot help with that.", "f") == "I cannot help with that.\n"
