"""Prompts for code generation, and where a generation should stop.

Two styles:
- `base`: the original MBPP prompt (statement, blank line, asserts, blank line, `# Solution:`) for
  MBPP-like problems, and the HumanEval signature + docstring for the model to continue.
- `chat`: the same content as a user message rendered with the tokenizer's chat template; the model
  answers with a fenced code block. Instruct models write far better code this way.
`auto` picks chat when the tokenizer has a chat template.
A multiple-choice question (common/answer_formats.py) is shown with its lettered options and, in both styles, the
prompt ends at "Answer:" (in chat style, at the start of the assistant's turn), so the answer is the next token.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from common.answer_formats import is_multiple_choice, option_letters, stop_after_option
from common.code_extraction import code_started
from common.errors import PipelineError

Stopper = Callable[[str], int | None]  # generated text -> index to cut at once it should stop, else None

_CHAT_ANSWER_FORMAT = "Answer with the complete Python function in a single ```python code block."
_CHAT_CHOICE_FORMAT = "Answer with the letter of the correct option."
_ANSWER_CUE = "Answer:"
_BASE_MBPP_STOPS = ("\nassert ", "\nprint(", "\nif __name__", "\n# Test", "\n```", "\n\n\n\n")
_BASE_HUMANEVAL_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\nassert ", "\n#", "\n```")


def resolve_prompt_style(style: str, tokenizer: Any) -> str:
    if style == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "base"
    if style == "chat" and not getattr(tokenizer, "chat_template", None):
        raise PipelineError("prompt_style 'chat' needs a tokenizer with a chat template; use 'base' for this model")
    return style


@dataclass
class PromptBuilder:
    style: str = "base"  # "base" | "chat" (resolve "auto" first with resolve_prompt_style)
    tokenizer: Any = None
    system_prompt: str = ""  # chat: the system message (replacing the template's default); base: a comment line

    @staticmethod
    def build_prompt(problem_description: str, test_cases: Sequence[str] | str) -> str:
        """The original MBPP prompt: statement, blank line, test asserts, blank line, `# Solution:`."""
        tests = test_cases if isinstance(test_cases, str) else "\n".join(test_cases)
        return f"{problem_description.strip()}\n\n{tests.strip()}\n\n# Solution:"

    def build(self, problem: Mapping[str, Any]) -> str:
        if self.style == "chat":
            system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
            prompt = self.tokenizer.apply_chat_template(
                [*system, {"role": "user", "content": self.user_message(problem)}], add_generation_prompt=True,
                tokenize=False)
            return prompt + _ANSWER_CUE if is_multiple_choice(problem) else prompt
        return f"# {self.system_prompt}\n{self._base(problem)}" if self.system_prompt else self._base(problem)

    def _base(self, problem: Mapping[str, Any]) -> str:
        if is_multiple_choice(problem):
            return f"{_question(problem)}\n{_ANSWER_CUE}"
        if _is_completion_problem(problem):
            return str(problem["prompt_stub"])
        return self.build_prompt(problem["text"], list(problem["test_list"]))

    @staticmethod
    def user_message(problem: Mapping[str, Any]) -> str:
        if is_multiple_choice(problem):
            return f"{_question(problem)}\n{_CHAT_CHOICE_FORMAT}"
        if _is_completion_problem(problem):
            return ("Complete the following Python function.\n```python\n"
                    f"{str(problem['prompt_stub']).rstrip()}\n```\n{_CHAT_ANSWER_FORMAT}")
        tests = "\n".join(problem["test_list"])
        return f"{str(problem['text']).strip()}\nYour code should pass these tests:\n{tests}\n{_CHAT_ANSWER_FORMAT}"

    @property
    def adds_special_tokens(self) -> bool:
        """A rendered chat template already holds its special tokens; a base prompt gets the tokenizer's."""
        return self.style != "chat"

    def code_prefix(self, problem: Mapping[str, Any]) -> str:
        """What goes before the model's code to make a whole program: the stub a base completion continues,
        or the stub's imports for a chat answer (which usually drops `from typing import List`)."""
        if not _is_completion_problem(problem):
            return ""
        stub = str(problem["prompt_stub"])
        if self.style == "base":
            return stub
        imports = [line for line in stub.splitlines() if line.startswith(("import ", "from "))]
        return "\n".join(imports) + "\n\n" if imports else ""

    def stopper(self, problem: Mapping[str, Any]) -> Stopper:
        if is_multiple_choice(problem):
            return functools.partial(stop_after_option, letters=option_letters(len(problem["options"])))
        if self.style == "chat":
            return _after_closed_fence
        return _at_first(_BASE_HUMANEVAL_STOPS if _is_completion_problem(problem) else _BASE_MBPP_STOPS)

    def code_opened(self, problem: Mapping[str, Any]) -> Callable[[str], bool] | None:
        """Has the answer's code started? A chat answer's code starts at its first fence or bare definition;
        a base prompt is continued with code from the first token (None), and so is every multiple-choice answer."""
        return code_started if self.style == "chat" and not is_multiple_choice(problem) else None


def _question(problem: Mapping[str, Any]) -> str:
    """The question and its options, one lettered line each."""
    options = "\n".join(f"{letter}. {str(text).strip()}"
                        for letter, text in zip(option_letters(len(problem["options"])), problem["options"]))
    return f"{str(problem['text']).strip()}\n{options}"


def _is_completion_problem(problem: Mapping[str, Any]) -> bool:
    return problem.get("source") == "humaneval"


def _after_closed_fence(text: str) -> int | None:
    """Stop once the first fenced code block is closed; the explanation that follows is wasted tokens."""
    opening = text.find("```")
    if opening < 0:
        return None
    body = text.find("\n", opening)
    closing = text.find("```", body) if body >= 0 else -1
    return closing + 3 if closing >= 0 else None


def _at_first(markers: Sequence[str]) -> Stopper:
    def stop(text: str) -> int | None:
        hits = [i for i in (text.find(m) for m in markers) if i >= 0]
        return min(hits) if hits else None

    return stop
