"""Turn a model's raw output into the program to test.

Chat models answer with prose around a fenced code block; base models continue the prompt. We take
the fenced block that defines the entry point (else the first one), then keep the module's
definitions (imports, functions, classes, constants) and drop top-level test code the model adds
(asserts, prints, example calls, `if __name__ == "__main__":`), which would otherwise run, and
sometimes fail, before the real tests. The original kept only the first `def`, which lost imports
and helper functions.
"""

from __future__ import annotations

import ast
import re

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_KEPT_NODES = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
# A fence, or a line that can only be Python: what `extract_code` would take as the program.
_CODE_START = re.compile(r"```|^(?:async\s+)?def\s+\w+\s*\(|^class\s+\w+\s*[(:]|^from\s+[\w.]+\s+import\s"
                         r"|^import\s+[\w.]+(?:\s+as\s+\w+)?(?:\s*,\s*[\w.]+(?:\s+as\s+\w+)?)*[ \t]*\n", re.MULTILINE)


def _python_fences(text: str) -> list[re.Match]:
    """``` fenced blocks tagged python/py or untagged (group 2 is the body); an unclosed last block counts."""
    return [m for m in _FENCE.finditer(text) if m.group(1).lower() in ("", "python", "py", "python3")]


def fenced_blocks(text: str) -> list[str]:
    return [m.group(2) for m in _python_fences(text)]


def code_started(text: str) -> bool:
    """Has a chat answer begun its code? Usually with a fence, but the model sometimes writes a bare
    `def` with no fence at all, which `extract_code` takes whole; both count."""
    return _CODE_START.search(text) is not None


def code_span(raw_output: str, entry_point: str | None = None) -> tuple[int, int]:
    """[start, end) of the code the model wrote within its raw output: the fenced block that defines the entry
    point (else the first fenced block), or the whole output when there is no fence."""
    blocks = _python_fences(raw_output)
    if not blocks:
        return 0, len(raw_output)
    defining = [m for m in blocks if entry_point and re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", m.group(2))]
    return (defining or blocks)[0].span(2)


def extract_code(raw_output: str, entry_point: str | None = None, prefix: str = "") -> str:
    """The program to test: `prefix` (a completion's stub, or the imports a chat answer omits) followed by
    the model's code (`code_span`), trimmed. A stub followed by a full definition is harmless: the later def wins."""
    start, end = code_span(raw_output, entry_point)
    return keep_definitions(prefix + raw_output[start:end])


def keep_definitions(code: str) -> str:
    """Top-level imports, defs, classes and constant assignments; the source is returned unchanged if it
    does not parse (the sandbox then reports the syntax error) or has nothing to drop."""
    code = code.replace("\r\n", "\n").expandtabs(4) if "\t" in code else code.replace("\r\n", "\n")
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code.strip("\n") + "\n"
    defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    lines = code.splitlines()
    kept: list[str] = []
    for node in tree.body:
        if isinstance(node, _KEPT_NODES) or _is_constant_assignment(node, defined):
            first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            kept.append("\n".join(lines[first - 1:node.end_lineno]))
    return "\n\n".join(kept) + "\n" if kept else code.strip("\n") + "\n"


def defines_function(code: str, name: str) -> bool:
    """Does the program parse and define `name` at the top level? Steered garbage such as a long run of
    digits parses too, so parsing alone does not say the code is still a solution attempt."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name for node in tree.body)


def _is_constant_assignment(node: ast.stmt, defined: set[str]) -> bool:
    """A module-level assignment that does not call the solution's own functions (those are example runs)."""
    if not isinstance(node, (ast.Assign, ast.AnnAssign)):
        return False
    calls = {n.func.id for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    return not (calls & defined)
