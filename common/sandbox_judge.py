"""The trusted side of the sandbox: runs the tests and decides the verdict.

Started once per worker as `python -I sandbox_judge.py`; it reads the command that starts a
sandboxed program, then, for each job from stdin ({id, code, tests, timeout_s, limits,
recursion_limit}), starts the program in its own sandboxed process (`sandbox_harness.py`), runs the
tests here with the program's names replaced by proxies that call into that process, compares the
returned plain data here, and writes one report to stdout. The program never sees the tests and
shares no memory with this process; "passed" is written in one place only, after the tests ran to
their end with no fatal event. What the program reports (an error kind, a message) is sanitised
before it reaches a report. Tests are trusted code (they come with the dataset). Standard library only.
"""

import builtins
import ctypes
import dis
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sandbox_protocol as protocol  # noqa: E402 - importable only once its folder is on the path

del sys.path[0]

_MESSAGE_CHARS = 2000
_EXIT_WAIT_S = 1.0
_MEMORY_LIMIT_BYTES = 8 << 30
_TIMEOUT_MESSAGE = "did not finish within the time limit"
# The failure kinds a program may report about itself; anything else becomes "runtime".
_PROGRAM_KINDS = frozenset({"syntax", "name", "type", "assertion", "memory", "runtime"})
# Standard modules the tests may use under the name the program imported them by (MBPP tests use
# `math` that the solution imported). Imported here, never the program's copy.
_MODULES = frozenset({"array", "bisect", "cmath", "collections", "copy", "datetime", "decimal", "fractions",
                      "functools", "heapq", "itertools", "math", "operator", "random", "re", "statistics",
                      "string", "sys", "typing"})
# Exceptions the tests may catch as the program raised them; StopIteration is not among them (a test's
# `map` or `all` would end early instead of failing), nor anything outside Exception.
_NOT_RAISED_AS_IS = (StopIteration, StopAsyncIteration)


def _program_kind(kind):
    return kind if kind in _PROGRAM_KINDS else "runtime"


def _builtin_exception(name):
    """The builtin Exception class of that name, unless it is one the tests must not receive as is."""
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, _NOT_RAISED_AS_IS):
        return cls
    return None


def _is_exit(name):
    cls = getattr(builtins, name, None)
    return isinstance(cls, type) and issubclass(cls, BaseException) and not issubclass(cls, Exception)


def _text(value):
    return str(value)[:_MESSAGE_CHARS]


class Fatal(BaseException):
    """Ends the tests whatever they catch: the program died, timed out, or gave what cannot be compared.
    A BaseException, and recorded on the session, so a test's `except Exception` (or bare `except`) cannot
    turn it into a pass."""

    def __init__(self, error_type, message):
        super().__init__(message)
        self.error_type = error_type


class Session:
    """One program in its sandboxed process, and the calls the tests make into it."""

    def __init__(self, command, timeout_s, workdir):
        self.command, self.deadline_s = command, time.monotonic() + timeout_s
        self.fatal = None
        self.names = {}  # program name -> its stand-in in the tests' namespace
        self.exception_classes = {}
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir}
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, cwd=workdir, env=env,
                                        start_new_session=True, preexec_fn=_die_with_judge)
        self.requests, self.answers = self.process.stdin.fileno(), self.process.stdout.fileno()

    def end(self, error_type, message):
        """Record the first fatal event and return it, for `raise session.end(...)`."""
        self.fatal = self.fatal or Fatal(error_type, message)
        return self.fatal

    def exchange(self, message):
        """Send a message and return the program's answer; Fatal when it has none."""
        try:
            protocol.send(self.requests, message)
            answer = protocol.receive(self.answers, self.deadline_s, time.monotonic)
        except TimeoutError:
            raise self.end("timeout", _TIMEOUT_MESSAGE) from None
        except protocol.Untransferable as exc:
            raise self.end("unsupported", f"the tests pass an argument too large for the sandbox: {exc}") from None
        except BrokenPipeError:
            answer = None
        except (protocol.ProtocolError, RecursionError) as exc:
            raise self.end("runtime", f"the program broke the answer channel: {exc}") from None
        if answer is None:
            raise self._death()
        if not isinstance(answer, dict):
            raise self.end("runtime", "the program broke the answer channel: an answer is not an object")
        return answer

    def call(self, name, args, kwargs):
        try:
            request = {"call": name, "args": protocol.encode(list(args), self._name_of),
                       "kwargs": protocol.encode({str(k): v for k, v in kwargs.items()}, self._name_of)}
        except (protocol.Untransferable, RecursionError) as exc:
            raise self.end("unsupported", f"the tests pass {name}() an argument that cannot enter the sandbox: "
                                          f"{exc}") from None
        answer = self.exchange(request)
        try:
            self._write_back(args, kwargs, answer)  # also when it raised: what it changed stays changed
            value = protocol.decode(answer["value"], self._resolve) if "value" in answer else None
        except (protocol.ProtocolError, RecursionError, TypeError, ValueError) as exc:
            raise self.end("runtime", f"{name}() answered with malformed data: {exc}") from None
        if "raised" in answer:
            raise self._raised(answer["raised"])
        if "value" in answer:
            return value
        if answer.get("oversized") is True:
            raise self.end("unsupported", f"{name}() answered with more than the sandbox's message limit")
        if isinstance(answer.get("opaque"), dict):
            return Opaque(self, f"the value {name}() returned", answer["opaque"])
        raise self.end("runtime", "the program broke the answer channel: an answer of no known kind")

    def _write_back(self, args, kwargs, answer):
        """A function that changed a list, dict, set or bytearray argument in place changes it here too."""
        after = answer.get("args_after")
        if not isinstance(after, list):
            return
        kwargs_after = answer.get("kwargs_after") if isinstance(answer.get("kwargs_after"), dict) else {}
        pairs = list(zip(args, after)) + [(kwargs[k], v) for k, v in kwargs_after.items() if k in kwargs]
        for original, data in pairs:
            if data is None or not isinstance(original, (list, dict, set, bytearray)):
                continue
            new = protocol.decode(data, self._resolve)
            if not isinstance(new, type(original)) and not isinstance(original, type(new)):
                raise protocol.ProtocolError("an argument came back as another type")
            if isinstance(original, (list, bytearray)):
                original[:] = new
            else:
                original.clear()
                original.update(new)

    def _raised(self, raised):
        """The program's exception as the tests can catch it: the stand-in of the nearest class of the program
        it is an instance of, else the nearest builtin class (a `statistics.StatisticsError` is a ValueError),
        else RuntimeError. StopIteration is raised as RuntimeError (as PEP 479 does in generators); SystemExit,
        KeyboardInterrupt and their subclasses end the tests."""
        raised = raised if isinstance(raised, dict) else {}
        message, builtin_base = _text(raised.get("message")), str(raised.get("builtin_base"))
        if _is_exit(builtin_base):
            return self.end("runtime", f"{message} during the tests")
        names = raised.get("program_classes") if isinstance(raised.get("program_classes"), list) else []
        cls = next((self.exception_classes[n] for n in names if isinstance(n, str) and n in self.exception_classes),
                   None) or _builtin_exception(builtin_base) or RuntimeError
        try:
            exc = cls(*protocol.decode(raised.get("args")))
        except Exception:  # noqa: BLE001 - arguments this class does not take, or malformed ones
            try:
                exc = cls(message)
            except Exception:  # noqa: BLE001 - a class that wants more than a message
                exc = RuntimeError(message)
        exc.program_error_type = _program_kind(raised.get("kind"))
        return exc

    def _death(self):
        """Why the program's process stopped answering."""
        try:
            returncode = self.process.wait(timeout=_EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            return self.end("killed", "the program closed its answer channel")
        if returncode > 128 and os.path.basename(self.command[0]) == "bwrap":
            returncode = 128 - returncode  # bwrap reports its child's signal n as status 128 + n
        if returncode < 0:
            sig = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
            return self.end("timeout" if sig == "SIGXCPU" else "killed", f"killed by {sig} before the tests finished")
        return self.end("killed", f"exited with status {returncode} before the tests finished (os._exit or a crash)")

    def _name_of(self, value):
        return value.name if isinstance(value, RemoteFunction) and value.session is self else None

    def _resolve(self, name):
        if not isinstance(self.names.get(name), RemoteFunction):
            raise protocol.ProtocolError(f"{name!r} is not a function the program defined")
        return self.names[name]

    def run_tests(self, compiled_tests, namespace):
        """Execute the tests, interrupted at the deadline (the select in `exchange` covers waits on the
        program; the timer covers loops in the tests themselves)."""
        def on_alarm(signum, frame):
            raise self.end("timeout", _TIMEOUT_MESSAGE)

        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, max(self.deadline_s - time.monotonic(), 1e-3))
        try:
            exec(compiled_tests, namespace)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def close(self):
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.kill()
        self.process.wait()
        self.process.stdin.close()
        self.process.stdout.close()


class RemoteFunction:
    """Stands in the tests' namespace for a callable the program defined; calling it runs it there."""

    def __init__(self, session, name):
        self.session, self.name, self.__name__ = session, name, name

    def __call__(self, *args, **kwargs):
        return self.session.call(self.name, args, kwargs)

    def __repr__(self):
        return f"<program function {self.name}>"


class RemoteClass(RemoteFunction):
    """A class the program defined: calling it makes an instance there (which stays there); asking
    whether something is an instance of it cannot be answered here."""

    def __instancecheck__(self, instance):
        raise self.session.end("unsupported", f"the tests ask isinstance(..., {self.name}), a class of the program")

    __subclasscheck__ = __instancecheck__


class Opaque:
    """A value that cannot leave the sandbox. Compared like Python compares an object without its own
    `__eq__` (by identity), and true like one without `__bool__` or `__len__`; any other use, or those
    two where the program's class defines its own, ends the tests as unsupported."""

    def __init__(self, session, what, traits):
        self._session = session
        self._what = f"{what} (a {_text(traits.get('type'))})"
        self._identity_eq = traits.get("custom_eq") is False
        self._default_bool = traits.get("custom_bool") is False

    def _refuse(self, *args, **kwargs):
        raise self._session.end("unsupported", f"the tests use {self._what}, which cannot leave the sandbox")

    def __eq__(self, other):
        return other is self if self._identity_eq else self._refuse()

    def __ne__(self, other):
        return other is not self if self._identity_eq else self._refuse()

    def __hash__(self):
        return id(self) if self._identity_eq else self._refuse()

    def __bool__(self):
        return True if self._default_bool else self._refuse()

    def __repr__(self):
        return f"<{self._what}>"

    __getattr__ = __call__ = __iter__ = __next__ = __len__ = __getitem__ = __contains__ = _refuse
    __lt__ = __le__ = __gt__ = __ge__ = __str__ = __format__ = __int__ = __float__ = __index__ = _refuse
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _refuse
    __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = __pow__ = __rpow__ = __neg__ = __abs__ = _refuse
    __and__ = __rand__ = __or__ = __ror__ = __xor__ = __rxor__ = __round__ = __reversed__ = _refuse


def _die_with_judge():
    """In the child before exec: die with the judge, so a judge killed mid-job leaves no program behind."""
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _names_used(code):
    """The global names the tests read (not attribute names: `.copy()` does not use the module `copy`)."""
    names = {i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_NAME", "LOAD_GLOBAL")}
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            names |= _names_used(const)
    return names


def _exception_stand_in(session, name, names):
    """A class in the tests' namespace for the program's exception class `name`: derived from the stand-in of
    its nearest program parent, else from its nearest builtin class (Exception for StopIteration and exits)."""
    if name not in session.exception_classes:
        entry = names[name]
        parents = [p for p in entry.get("parents") or [] if isinstance(p, str) and p != name
                   and isinstance(names.get(p), dict) and names[p].get("kind") == "exception_class"]
        base = (_exception_stand_in(session, parents[0], names) if parents
                else _builtin_exception(str(entry.get("base"))) or Exception)
        session.exception_classes[name] = type(name, (base,), {})
    return session.exception_classes[name]


def _tests_namespace(session, names, used_by_tests):
    """Builtins, then the program's public names as stand-ins. A program name that hides a builtin or a
    standard module the tests use cannot be judged fairly (its own `all` or `math` must not judge it, nor
    may the tests call the builtin in place of its `sorted`): unsupported. Underscored names never enter."""
    namespace = {"__name__": "__tests__", "__builtins__": builtins}
    for name, entry in names.items():
        if not (isinstance(name, str) and name.isidentifier() and not name.startswith("_")):
            continue
        kind = entry.get("kind") if isinstance(entry, dict) else None
        is_module = kind == "module" and entry.get("module") == name and name in _MODULES
        if hasattr(builtins, name) or (name in sys.stdlib_module_names and not is_module):
            if name in used_by_tests:
                raise session.end("unsupported", f"the program defines {name!r}, which hides a builtin or a "
                                                 "standard module the tests use")
            continue
        if kind == "callable":
            namespace[name] = RemoteFunction(session, name)
        elif kind == "class":
            namespace[name] = RemoteClass(session, name)
        elif kind == "exception_class":
            try:
                namespace[name] = _exception_stand_in(session, name, names)
            except RecursionError:
                raise session.end("runtime", "the program's exception classes form a cycle") from None
        elif kind == "builtin_exception" and _builtin_exception(str(entry.get("builtin"))):
            namespace[name] = _builtin_exception(str(entry.get("builtin")))
        elif is_module:
            namespace[name] = __import__(name)
        elif kind == "value":
            namespace[name] = protocol.decode(entry.get("value"))
        else:
            namespace[name] = Opaque(session, f"{name}, defined by the program",
                                     entry if isinstance(entry, dict) else {})
    session.names = namespace
    return namespace


def _failing_line(exc, tests):
    tb, line_no = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<tests>":
            line_no = tb.tb_lineno
        tb = tb.tb_next
    lines = tests.splitlines()
    if line_no is None or not 0 < line_no <= len(lines):
        return ""
    return f" at tests line {line_no}: {lines[line_no - 1].strip()}"


def judge(command, job):
    """The report for one program: {"error_type": ..., "message": ...}."""
    tests = job["tests"]
    try:
        compiled_tests = compile(tests, "<tests>", "exec")
    except (SyntaxError, ValueError) as exc:
        return {"error_type": "runtime", "message": f"tests do not compile: {exc}"}
    workdir = tempfile.mkdtemp(prefix="pva_exec_")
    session = None
    try:
        session = Session(command, job["timeout_s"], workdir)
        loaded = session.exchange({"code": job["code"], "limits": job["limits"],
                                   "recursion_limit": job["recursion_limit"]})
        if not isinstance(loaded.get("ready"), dict):
            failed = loaded.get("failed") if isinstance(loaded.get("failed"), dict) else {}
            return {"error_type": _program_kind(failed.get("kind")), "message": _text(failed.get("message"))}
        namespace = _tests_namespace(session, loaded["ready"], _names_used(compiled_tests))
        try:
            session.run_tests(compiled_tests, namespace)
        except Fatal:
            raise
        except BaseException as exc:  # noqa: BLE001 - a failing test, or the program's exception passing through
            if session.fatal is None:
                kind = getattr(exc, "program_error_type", None) or protocol.classify(exc)
                return {"error_type": kind, "message": protocol.describe(exc) + _failing_line(exc, tests)}
        if session.fatal is not None:
            raise session.fatal
        return {"error_type": "passed", "message": ""}
    except Fatal as fatal:
        return {"error_type": fatal.error_type, "message": str(fatal)}
    except (protocol.ProtocolError, protocol.Untransferable, RecursionError) as exc:
        return {"error_type": "runtime", "message": f"the program broke the answer channel: {exc}"}
    finally:
        if session is not None:
            session.close()
        shutil.rmtree(workdir, ignore_errors=True)


def main():
    jobs, reports = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)  # a test that prints must not write into the report channel
    libc = ctypes.CDLL(None)
    libc.prctl(4, 0)  # PR_SET_DUMPABLE 0: without CAP_SYS_PTRACE no one opens /proc/<judge>/fd
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the judge dies with the pipeline
    resource.setrlimit(resource.RLIMIT_AS, (_MEMORY_LIMIT_BYTES, _MEMORY_LIMIT_BYTES))
    command = protocol.receive(jobs)["command"]
    while (job := protocol.receive(jobs)) is not None:
        protocol.send(reports, {"id": job["id"], **_in_fresh_copy(command, job)})


def _in_fresh_copy(command, job):
    """Judge one job in a forked copy of this process, so no state (and no harm done) carries to the next.
    The copy hands its report back through a pipe: exactly one report per job, even if it dies."""
    read_end, write_end = os.pipe()
    worker = os.fork()
    if worker == 0:
        os.close(read_end)
        try:
            report = judge(command, job)
            protocol.send(write_end, {"error_type": report["error_type"], "message": _text(report["message"])})
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        os.waitpid(worker, 0)
        report = protocol.receive(read_end)
    except (protocol.ProtocolError, OSError):
        report = None
    finally:
        os.close(read_end)
    if not isinstance(report, dict):
        return {"error_type": "killed", "message": "the judge's worker for this program died"}
    return report


if __name__ == "__main__":
    main()
