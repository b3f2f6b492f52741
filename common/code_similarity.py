"""How far a steered program moved from its baseline: difflib similarity of tokens and of characters.

Token similarity compares Python tokens, so re-indentation or renamed spacing counts little and a
changed operator counts as one token; code that does not tokenize falls back to whitespace words.
"""

from __future__ import annotations

import difflib
import io
import tokenize

_SKIPPED = {tokenize.NEWLINE, tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENDMARKER, tokenize.ENCODING}


def python_tokens(code: str) -> list[str]:
    try:
        return [tok.string for tok in tokenize.generate_tokens(io.StringIO(code).readline) if tok.type not in _SKIPPED]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return code.split()


def token_similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, python_tokens(a), python_tokens(b), autojunk=False).ratio()


def char_similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def length_ratio(steered: str, baseline: str) -> float:
    """len(steered) / len(baseline); 1.0 when both are empty, NaN when only the baseline is."""
    if not baseline:
        return 1.0 if not steered else float("nan")
    return len(steered) / len(baseline)


def divergence(baseline: str, steered: str) -> dict[str, float]:
    return {"token_similarity": token_similarity(baseline, steered), "char_similarity": char_similarity(baseline, steered),
            "length_ratio": length_ratio(steered, baseline)}
