"""Run untrusted generated code against its tests, one process per program, many in parallel.

Isolation (when `bwrap` works): read-only view of the host, private size-limited /tmp, private
/dev and /proc, no network, new pid namespace (every process the program forks dies with it), no
capabilities, empty environment. Without bwrap: a plain subprocess in its own session and temp dir,
a warning logged once. Either way the harness sets CPU, address-space, file-size and open-file
limits, and a wall-clock timeout kills the whole process group.

Known limits: running as root the kernel ignores RLIMIT_NPROC, so a fork bomb is bounded only by
the timeout; a program written to defeat the harness from inside its own interpreter (reading the
nonce from the harness's frame) could forge a report. Generated code does neither by accident.
"""

from __future__ import annotations

import fcntl
import functools
import json
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
from typing import Sequence

from tqdm import tqdm

from common.logging import get_logger

logger = get_logger("sandbox")

HARNESS = Path(__file__).with_name("sandbox_harness.py")
ERROR_TYPES = ("passed", "syntax", "name", "type", "assertion", "runtime", "timeout", "memory", "killed")

MEMORY_LIMIT_BYTES = 2 << 30
FILE_SIZE_LIMIT_BYTES = 64 << 20
OPEN_FILES_LIMIT = 256
RECURSION_LIMIT = 3000
_REPORT_MAX_BYTES = 1 << 16


@dataclass(frozen=True)
class ExecutionResult:
    passed: bool
    error_type: str  # one of ERROR_TYPES
    error_message: str
    duration_s: float


@dataclass(frozen=True)
class Program:
    code: str
    tests: str


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


def evaluate_code(code: str, tests: str, timeout: float = 5.0) -> ExecutionResult:
    """Run `code`, then `tests`, in a fresh sandboxed interpreter; pass only if every test ran to the end."""
    started = time.perf_counter()
    nonce = secrets.token_hex(16)
    read_fd, write_fd = os.pipe()
    workdir = tempfile.mkdtemp(prefix="pva_exec_")
    payload = {"nonce": nonce, "report_fd": write_fd, "code": code, "tests": tests,
               "limits": _limits(timeout), "recursion_limit": RECURSION_LIMIT}
    python = [sys.executable, "-I", str(HARNESS)]
    if sandbox_mode() == "bwrap":
        command, cwd = _bwrap_prefix() + python, None
    else:
        command, cwd = python, workdir
    timed_out = False
    try:
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, pass_fds=(write_fd,), cwd=cwd,
                                env={"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir},
                                start_new_session=True)
        os.close(write_fd)
        write_fd = -1
        try:
            proc.stdin.write(json.dumps(payload).encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(proc)
        report = _read_report(read_fd, nonce)
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
        shutil.rmtree(workdir, ignore_errors=True)
    duration_s = time.perf_counter() - started
    return _result(report, proc.returncode, timed_out, timeout, duration_s)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _read_report(read_fd: int, nonce: str) -> dict | None:
    """The harness's report if it wrote one with the right nonce; anything else counts as no report."""
    fcntl.fcntl(read_fd, fcntl.F_SETFL, fcntl.fcntl(read_fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    chunks, total = [], 0
    while total < _REPORT_MAX_BYTES:
        try:
            chunk = os.read(read_fd, _REPORT_MAX_BYTES)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    try:
        report = json.loads(b"".join(chunks).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(report, dict) or report.get("nonce") != nonce:
        return None
    return report


def _result(report: dict | None, returncode: int | None, timed_out: bool, timeout: float,
            duration_s: float) -> ExecutionResult:
    if report is not None:
        passed = report.get("status") == "passed"
        error_type = report.get("error_type") if report.get("error_type") in ERROR_TYPES else "runtime"
        return ExecutionResult(passed, "passed" if passed else error_type, str(report.get("message", "")), duration_s)
    if timed_out:
        return ExecutionResult(False, "timeout", f"did not finish within {timeout:g} s", duration_s)
    if returncode is not None and returncode < 0:
        sig = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        kind = "timeout" if sig == "SIGXCPU" else "killed"
        return ExecutionResult(False, kind, f"killed by {sig} before the tests finished", duration_s)
    return ExecutionResult(False, "killed", f"exited with status {returncode} without finishing the tests "
                                            "(os._exit or a crash)", duration_s)


class SandboxPool:
    """Programs run in the background while the caller goes on: a generating phase submits each finished
    program and keeps generating. Each worker thread only waits on its own sandboxed process."""

    def __init__(self, timeout_s: float = 5.0, workers: int | None = None):
        self.timeout_s = timeout_s
        sandbox_mode()  # probe once, before the threads start
        self._pool = ThreadPoolExecutor(max_workers=max(1, (workers or os.cpu_count() or 1) * 2))

    def submit(self, program: Program) -> Future:
        """A future of the program's ExecutionResult."""
        return self._pool.submit(evaluate_code, program.code, program.tests, self.timeout_s)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def evaluate_many(programs: Sequence[Program], timeout: float = 5.0, workers: int | None = None,
                  progress: bool = True, description: str = "executing") -> list[ExecutionResult]:
    """`evaluate_code` over many programs in parallel; results in the programs' order."""
    with SandboxPool(timeout, workers) as pool:
        futures = [pool.submit(program) for program in programs]
        return [future.result() for future in tqdm(futures, desc=description, disable=not progress, leave=False)]
