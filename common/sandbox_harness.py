"""Runs inside the sandbox: one candidate program, then its tests, then one report.

Started as `python -I sandbox_harness.py`. Reads {nonce, code, tests, report_fd, limits} from stdin,
sets its own resource limits, runs the code and the tests in one namespace and writes a JSON report
carrying the nonce to `report_fd`. The parent counts a pass only from a report with the right nonce
that says every test ran to the end, so an early exit (sys.exit, os._exit, a signal, an atexit
trick) or text printed to stdout can never pass. Standard library only: this file is not a module
of the project, it is a program the sandbox runs.
"""

import json
import os
import resource
import sys

_write = os.write  # bound before the candidate runs, so patching os or json cannot fake the report
_dumps = json.dumps
_exit = os._exit

_MESSAGE_CHARS = 2000


def _set_limits(limits):
    for name, value in limits.items():
        kind = getattr(resource, name)
        resource.setrlimit(kind, (value, value))


def _classify(exc):
    if isinstance(exc, SyntaxError):
        return "syntax"
    if isinstance(exc, NameError):  # includes UnboundLocalError
        return "name"
    if isinstance(exc, TypeError):
        return "type"
    if isinstance(exc, AssertionError):
        return "assertion"
    if isinstance(exc, MemoryError):
        return "memory"
    return "runtime"


def _failing_test_line(exc, tests):
    tb = exc.__traceback__
    line_no = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<tests>":
            line_no = tb.tb_lineno
        tb = tb.tb_next
    lines = tests.splitlines()
    if line_no is None or not 0 < line_no <= len(lines):
        return ""
    return f" at tests line {line_no}: {lines[line_no - 1].strip()}"


def _describe(exc, stage, tests):
    if isinstance(exc, SystemExit):
        return f"the program exited (SystemExit {exc.code!r}) during the {stage}, before the tests finished"
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text + _failing_test_line(exc, tests)


def _run(code, tests):
    namespace = {"__name__": "__solution__", "__builtins__": __builtins__}
    for stage, source, filename in (("solution", code, "<solution>"), ("tests", tests, "<tests>")):
        try:
            compiled = compile(source, filename, "exec")
        except (SyntaxError, ValueError) as exc:
            kind = "syntax" if stage == "solution" else "runtime"
            return {"status": "failed", "error_type": kind, "message": f"{stage} does not compile: {exc}"}
        try:
            exec(compiled, namespace)
        except BaseException as exc:  # noqa: BLE001 - everything the candidate raises is a failure
            kind = "runtime" if isinstance(exc, (SystemExit, KeyboardInterrupt)) else _classify(exc)
            return {"status": "failed", "error_type": kind, "message": _describe(exc, stage, tests)}
    return {"status": "passed", "error_type": "passed", "message": ""}


def main():
    payload = json.loads(sys.stdin.buffer.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    nonce = payload.pop("nonce")
    report_fd = payload.pop("report_fd")
    _set_limits(payload["limits"])
    sys.setrecursionlimit(payload.get("recursion_limit", 3000))
    report = _run(payload["code"], payload["tests"])
    report["message"] = report["message"][:_MESSAGE_CHARS]
    report["nonce"] = nonce
    _write(report_fd, _dumps(report).encode("utf-8", "replace"))
    _exit(0)  # skip atexit handlers and finalisers the candidate may have registered


if __name__ == "__main__":
    main()
