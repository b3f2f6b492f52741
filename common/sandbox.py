"""Run untrusted generated code against its tests, one sandboxed process per program, many in parallel.

The verdict is decided outside the program's reach. Each worker thread owns a trusted judge
process (`sandbox_judge.py`, started once and reused) that, per program, starts the program in its
own sandboxed process (`sandbox_harness.py`), runs the tests itself with the program's functions as
proxies, and compares the plain data they return. The program never sees the tests.

Isolation of the program (when `bwrap` works): read-only view of the host, private size-limited
/tmp, private /dev and /proc, no network, new pid namespace (every process the program forks dies
with it, and the judge is not visible from it), no capabilities, empty environment. Without bwrap:
a plain subprocess in its own session and temp dir, a warning logged once. Either way the harness
sets CPU, address-space, file-size and open-file limits, and the judge stops the program at the
wall-clock limit. The threat model and what stays out of scope are in the README ("Running generated code").
"""

from __future__ import annotations

import functools
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from queue import SimpleQueue
from typing import Sequence

from tqdm import tqdm

from common import sandbox_protocol as protocol
from common.logging import get_logger

logger = get_logger("sandbox")

HARNESS = Path(__file__).with_name("sandbox_harness.py")
JUDGE = Path(__file__).with_name("sandbox_judge.py")
# "unsupported": the tests could not be evaluated this way (a result or argument that is not plain data);
# neither a pass nor a failure of the program, so analyses leave such rows out.
ERROR_TYPES = ("passed", "syntax", "name", "type", "assertion", "runtime", "timeout", "memory", "killed",
               "unsupported")

MEMORY_LIMIT_BYTES = 2 << 30
FILE_SIZE_LIMIT_BYTES = 64 << 20
OPEN_FILES_LIMIT = 256
RECURSION_LIMIT = 3000
JUDGE_GRACE_S = 5.0  # past the program's limit before a judge stuck in the tests is stopped


@dataclass(frozen=True)
class ExecutionResult:
    passed: bool
    error_type: str  # one of ERROR_TYPES
    error_message: str
    duration_s: float


@dataclass(frozen=True)
class Program:
    code: str
    tests: str | Sequence[str]  # test code, or a list of assert statements (MBPP's `test_list`)


@functools.lru_cache(maxsize=1)
def sandbox_mode() -> str:
    """"bwrap" when bubblewrap is installed and can start a sandbox here, else "subprocess"."""
    if shutil.which("bwrap"):
        # The real interpreter and harness, so a sandbox that cannot see them is never chosen.
        check = f"open({str(HARNESS)!r}).close()"
        probe = subprocess.run(_bwrap_prefix() + [sys.executable, "-I", "-c", check], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return "bwrap"
        logger.warning("bwrap is installed but cannot start a sandbox here (%s): falling back to plain "
                       "subprocesses", probe.stderr.decode(errors="replace").strip()[:200])
    else:
        logger.warning("bwrap not found: generated code runs in plain subprocesses with resource limits "
                       "only (install bubblewrap for filesystem, network and process isolation)")
    return "subprocess"


def _bwrap_prefix() -> list[str]:
    return (["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
             "--size", str(FILE_SIZE_LIMIT_BYTES), "--tmpfs", "/tmp"]
            + [arg for path in _needed_under_tmp() for arg in ("--ro-bind", path, path)]
            + ["--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
               "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp", "--chdir", "/tmp"])


def _needed_under_tmp() -> list[str]:
    """The interpreter, its environment and the harness, where they live under /tmp (a virtual
    environment or a checkout there): the private /tmp would hide them, so they are bound back read-only."""
    tmp = Path("/tmp").resolve()
    candidates = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    candidates |= {Path(sys.executable).resolve().parent, HARNESS.resolve().parent}
    inside = sorted(str(p) for p in candidates if tmp in p.parents)
    return [p for p in inside if not any(p.startswith(other + "/") for other in inside)]  # outermost only


def _limits(timeout_s: float) -> dict[str, int]:
    return {"RLIMIT_CPU": math.ceil(timeout_s) + 1, "RLIMIT_AS": MEMORY_LIMIT_BYTES,
            "RLIMIT_FSIZE": FILE_SIZE_LIMIT_BYTES, "RLIMIT_NOFILE": OPEN_FILES_LIMIT, "RLIMIT_CORE": 0}


def tests_as_code(tests: str | Sequence[str]) -> str:
    """The tests as one block of code; a list of assert strings is joined line by line."""
    if isinstance(tests, str):
        return tests
    if isinstance(tests, (list, tuple)) and all(isinstance(line, str) for line in tests):
        return "\n".join(tests) + "\n"
    raise TypeError(f"tests must be a string of test code or a list of assert strings, got {type(tests).__name__}"
                    + (" holding non-strings" if isinstance(tests, (list, tuple)) else ""))


def _checked(program: Program) -> Program:
    if not isinstance(program.code, str):
        raise TypeError(f"code must be a string, got {type(program.code).__name__}")
    return Program(program.code, tests_as_code(program.tests))


def evaluate_code(code: str, tests: str | Sequence[str], timeout: float = 5.0) -> ExecutionResult:
    """Run `code` in a fresh sandboxed process and `tests` against it; pass only if every test ran to the end."""
    return evaluate_many([Program(code, tests)], timeout, workers=1, progress=False)[0]


class _Judge:
    """One trusted judge process; used by one thread at a time, replaced after it fails to answer in time
    or answers out of turn."""

    def __init__(self, program_command: list[str]):
        self._program_command = program_command
        self._process: subprocess.Popen | None = None
        self._tmp_root = ""

    def evaluate(self, program: Program, timeout_s: float) -> ExecutionResult:
        started = time.perf_counter()
        job_id = secrets.token_hex(8)  # a program that writes a report of its own cannot guess it
        job = {"id": job_id, "code": program.code, "tests": program.tests, "timeout_s": timeout_s,
               "limits": _limits(timeout_s), "recursion_limit": RECURSION_LIMIT}
        answered, failure = False, ("killed", "the judge stopped without a report for this program")
        try:
            process = self._started()
            protocol.send(process.stdin.fileno(), job)
            report = protocol.receive(process.stdout.fileno(), time.monotonic() + timeout_s + JUDGE_GRACE_S,
                                      time.monotonic)
            answered = isinstance(report, dict) and report.get("id") == job_id
        except TimeoutError:
            failure = ("timeout", f"the tests did not finish within {timeout_s:g} s (the judge was stopped)")
        except (OSError, protocol.ProtocolError, protocol.Untransferable) as exc:
            failure = ("killed", f"the judge failed ({type(exc).__name__}: {exc})")
        if not answered:
            self.close()  # stuck, gone or out of turn: the next program gets a fresh one
            report = {"error_type": failure[0], "message": failure[1]}
        error_type = report.get("error_type") if report.get("error_type") in ERROR_TYPES else "runtime"
        return ExecutionResult(error_type == "passed", error_type, str(report.get("message", "")),
                               time.perf_counter() - started)

    def _started(self) -> subprocess.Popen:
        if self._process is None:
            self._tmp_root = tempfile.mkdtemp(prefix="pva_judge_")
            self._process = subprocess.Popen([sys.executable, "-I", str(JUDGE)], stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                             cwd=self._tmp_root, start_new_session=True,
                                             env={"PATH": "/usr/bin:/bin", "TMPDIR": self._tmp_root})
            protocol.send(self._process.stdin.fileno(), {"command": self._program_command})
        return self._process

    def close(self) -> None:
        """Stop the judge (its program, if one runs, dies with it) and remove its temporary folders."""
        if self._process is None:
            return
        try:
            os.killpg(self._process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._process.wait()
        self._process.stdin.close()
        self._process.stdout.close()
        self._process = None
        shutil.rmtree(self._tmp_root, ignore_errors=True)


class SandboxPool:
    """Programs run in the background while the caller goes on: a generating phase submits each finished
    program and keeps generating. Each worker thread only waits on its own judge process."""

    def __init__(self, timeout_s: float = 5.0, workers: int | None = None):
        self.timeout_s = timeout_s
        threads = max(1, (workers or os.cpu_count() or 1) * 2)
        python = [sys.executable, "-I", str(HARNESS)]
        program_command = _bwrap_prefix() + python if sandbox_mode() == "bwrap" else python
        self._judges: SimpleQueue[_Judge] = SimpleQueue()
        self._all_judges = [_Judge(program_command) for _ in range(threads)]
        for judge in self._all_judges:
            self._judges.put(judge)
        self._pool = ThreadPoolExecutor(max_workers=threads)

    def submit(self, program: Program) -> Future:
        """A future of the program's ExecutionResult; a malformed program raises TypeError here."""
        return self._pool.submit(self._evaluate, _checked(program))

    def _evaluate(self, program: Program) -> ExecutionResult:
        judge = self._judges.get()
        try:
            return judge.evaluate(program, self.timeout_s)
        finally:
            self._judges.put(judge)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for judge in self._all_judges:
            judge.close()


def evaluate_many(programs: Sequence[Program], timeout: float = 5.0, workers: int | None = None,
                  progress: bool = True, description: str = "executing") -> list[ExecutionResult]:
    """`evaluate_code` over many programs in parallel; results in the programs' order."""
    checked = [_checked(program) for program in programs]
    with SandboxPool(timeout, min(workers or os.cpu_count() or 1, max(1, len(checked)))) as pool:
        futures = [pool.submit(program) for program in checked]
        return [future.result() for future in tqdm(futures, desc=description, disable=not progress, leave=False)]
