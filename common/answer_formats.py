"""What an answer is, for each kind of problem: a program tested in the sandbox, or one option of a multiple-choice
question (seed 000's own task, MedQA-USMLE).

Generation, the teacher-forced pass and the steering phases treat both alike; these few operations differ, and each
format gives them: which part of the raw output is the answer (what the code positions read), the answer itself
(the table's `generated_code`), its verdict, and whether a steered answer is still an attempt at one. A problem is
multiple-choice when it has `options`; its verdict needs no sandbox, so it is ready at once.
"""

from __future__ import annotations

import itertools
import re
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from common.code_extraction import code_span, defines_function, extract_code
from common.errors import PipelineError
from common.sandbox import ExecutionResult, Program, SandboxPool

WRONG_OPTION = "wrong_option"  # the error types of a multiple-choice answer that is not the correct option
NO_OPTION = "no_option"
_LETTERS = "ABCDEFGHIJ"
# The option a choice answer names: the output's leading letter (the prompt ends at "Answer:"), else the first one
# stated after "answer" or "option" ("the answer is B", "Option C"). A letter followed by a letter or digit is a word
# ("Amylase", "B12"), not an option; while the output streams in, a letter counts only once what follows it shows
# that (" A" may still become " Aortic").
_OPENING = r"\s*(?:\*\*?|\(|\[)?"
_LEADING_OPTION = re.compile(rf"\A{_OPENING}([A-Z])(?![A-Za-z0-9])")
_LEADING_OPTION_DONE = re.compile(rf"\A{_OPENING}([A-Z])(?=[^A-Za-z0-9])")
_STATED_OPTION = re.compile(rf"(?i:answer|option)(?: is)?:?{_OPENING}([A-Z])(?![A-Za-z0-9])")
_UNDECIDED = re.compile(rf"{_OPENING}\Z")
_PROSE_END = re.compile(r"[.\n]")


def option_letters(n_options: int) -> str:
    return _LETTERS[:n_options]


@dataclass(frozen=True)
class CodeAnswers:
    """The answer is the program in the output (common/code_extraction.py), judged by running the task's tests."""
    kind: str = "code"

    def span(self, raw_output: str, problem: Mapping[str, Any]) -> tuple[int, int]:
        return code_span(raw_output, problem.get("entry_point"))

    def extract(self, raw_output: str, problem: Mapping[str, Any], prefix: str = "") -> str:
        return extract_code(raw_output, problem.get("entry_point"), prefix)

    def judge(self, answer: str, problem: Mapping[str, Any], sandbox: SandboxPool) -> Future:
        return sandbox.submit(Program(answer, problem["tests"]))

    def is_attempt(self, answer: str, problem: Mapping[str, Any]) -> bool:
        """Steered garbage such as a run of digits parses too: an attempt defines the entry point."""
        return defines_function(answer, str(problem["entry_point"]))


@dataclass(frozen=True)
class ChoiceAnswers:
    """The answer is the letter of the option the output names; it passes when that is the correct option."""
    kind: str = "choice"

    def span(self, raw_output: str, problem: Mapping[str, Any]) -> tuple[int, int]:
        """The named letter's characters; for an output that names no option, its first character, where the letter
        should have been (so every row is read at its answer position); (0, 0) for an empty output."""
        named = self._named(raw_output, problem)
        if named:
            return named
        first = len(raw_output) - len(raw_output.lstrip())
        return (first, first + 1) if first < len(raw_output) else (0, 0)

    def extract(self, raw_output: str, problem: Mapping[str, Any], prefix: str = "") -> str:
        named = self._named(raw_output, problem)
        return raw_output[named[0]:named[1]] if named else ""

    @staticmethod
    def _named(raw_output: str, problem: Mapping[str, Any]) -> tuple[int, int] | None:
        letters = option_letters(len(problem["options"]))
        leading = _LEADING_OPTION.match(raw_output)
        if leading and leading.group(1) in letters:
            return leading.span(1)
        stated = (m for m in _STATED_OPTION.finditer(raw_output) if m.group(1) in letters)
        return next((m.span(1) for m in stated), None)

    def judge(self, answer: str, problem: Mapping[str, Any], sandbox: SandboxPool | None = None) -> Future:
        future: Future = Future()
        future.set_result(choice_verdict(answer, str(problem["correct_option"])))
        return future

    def is_attempt(self, answer: str, problem: Mapping[str, Any]) -> bool:
        return bool(answer)


def choice_verdict(answer: str, correct_option: str) -> ExecutionResult:
    if answer == correct_option:
        return ExecutionResult(True, "passed", "", 0.0)
    if not answer:
        return ExecutionResult(False, NO_OPTION, "the output names no option", 0.0)
    return ExecutionResult(False, WRONG_OPTION, f"chose {answer}, the answer is {correct_option}", 0.0)


def choice_output(letter: str) -> str:
    """What a model answers after a prompt that ends at "Answer:": the letter after a space."""
    return f" {letter}"


def stop_after_option(text: str, letters: str) -> int | None:
    """Where a multiple-choice answer is complete: right after its leading option letter, or at the end of the
    first sentence or line of an answer that starts with words instead (a stated letter is read from it)."""
    leading = _LEADING_OPTION_DONE.match(text)
    if leading and leading.group(1) in letters:
        return leading.end(1)
    pending = _LEADING_OPTION.match(text)
    if _UNDECIDED.fullmatch(text) or (pending and pending.end() == len(text) and pending.group(1) in letters):
        return None  # nothing yet, or a letter that may still begin a word
    end = _PROSE_END.search(text, len(text) - len(text.lstrip()))
    return end.start() if end else None


def option_token_ids(tokenizer, n_options: int) -> tuple[tuple[int, ...], ...]:
    """Per option letter, the token that carries it in each way to write it (" B" and "B", the last token of each):
    an option's log-probability at the answer position is the best of them."""
    ids = []
    for letter in option_letters(n_options):
        variants = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in (choice_output(letter), letter)]
        ids.append(tuple(dict.fromkeys(v[-1] for v in variants if v)))
    for first, second in itertools.combinations(ids, 2):
        if set(first) & set(second):
            raise PipelineError(f"the tokenizer writes two option letters with the same token "
                                f"({sorted(set(first) & set(second))}): no margin between options can be read")
    return tuple(ids)


CODE, CHOICE = CodeAnswers(), ChoiceAnswers()
ANSWER_FORMATS = {CODE.kind: CODE, CHOICE.kind: CHOICE}


def is_multiple_choice(problem: Mapping[str, Any]) -> bool:
    options = problem.get("options")
    return options is not None and len(options) > 0


def answer_format(problem: Mapping[str, Any]) -> CodeAnswers | ChoiceAnswers:
    return CHOICE if is_multiple_choice(problem) else CODE


def split_format(problems: Sequence[Mapping[str, Any]]) -> CodeAnswers | ChoiceAnswers:
    """The one format of a split's problems; a split mixing code and multiple-choice problems is a bug upstream."""
    kinds = {answer_format(problem).kind for problem in problems}
    if len(kinds) > 1:
        raise PipelineError(f"one split holds problems of several answer formats: {sorted(kinds)}")
    return ANSWER_FORMATS[kinds.pop() if kinds else CODE.kind]
