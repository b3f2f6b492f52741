"""Runs inside the sandbox: the candidate program, then its functions on the judge's request.

Started by the judge as `python -I sandbox_harness.py`, with stdin and stdout as the request and
answer channels (moved off fds 0 and 1 before the program runs, so its prints go nowhere). It
never sees the tests and never says whether they passed: it executes the program, lists the
names it defined, and answers each call with the returned value as plain data (and the list, dict,
set and bytearray arguments as the call left them), the exception raised, or a description of a value that cannot
leave. Whatever the program does to this process (patching builtins, this module, its frames,
writing to the answer channel) changes only the answers its own functions give.
Standard library only: this file is not a module of the project, it is a program the sandbox runs.
"""

import os
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sandbox_protocol as protocol  # noqa: E402 - importable only once its folder is on the path

del sys.path[0]

_VALUE_MAX_CHARS = 1 << 20
_MUTABLE = (list, dict, set, bytearray)


def _set_limits(limits):
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, name), (value, value))


def _builtin_base(cls):
    return next(c.__name__ for c in cls.__mro__ if c.__module__ == "builtins")


def _class_names(cls, namespace, skip_first=False):
    """The program's top-level names bound to classes in `cls`'s MRO (by identity), nearest first;
    builtin classes are left out (the judge has its own)."""
    mro = cls.__mro__[1:] if skip_first else cls.__mro__
    by_id = {id(v): n for n, v in namespace.items() if isinstance(v, type) and not n.startswith("_")}
    return [by_id[id(c)] for c in mro if id(c) in by_id and c.__module__ != "builtins"]


def _error(exc, namespace):
    """An exception as the judge rebuilds it: the program's classes it is an instance of, the nearest
    builtin class, its arguments as plain data where they are, and its kind and description."""
    kind = "runtime" if isinstance(exc, (SystemExit, KeyboardInterrupt)) else protocol.classify(exc)
    error = {"kind": kind, "message": protocol.describe(exc), "builtin_base": _builtin_base(type(exc)),
             "program_classes": _class_names(type(exc), namespace)}
    try:
        error["args"] = protocol.encode(list(exc.args))
    except Exception:  # noqa: BLE001 - the judge falls back to the text
        error["args"] = [str(exc)]
    return error


def _load(code, namespace):
    """{"ready": names} once the program ran to its end, else {"failed": ...}."""
    try:
        compiled = compile(code, "<solution>", "exec")
    except (SyntaxError, ValueError) as exc:
        return {"failed": {"kind": "syntax", "message": f"solution does not compile: {exc}"}}
    try:
        exec(compiled, namespace)
    except BaseException as exc:  # noqa: BLE001 - everything the program raises is a failure
        error = _error(exc, namespace)
        return {"failed": {"kind": error["kind"], "message": f"{error['message']} (while running the solution)"}}
    return {"ready": {name: _describe_name(value, namespace) for name, value in list(namespace.items())
                      if isinstance(name, str) and not name.startswith("_")}}


def _describe_name(value, namespace):
    if type(value).__name__ == "module":
        return {"kind": "module", "module": getattr(value, "__name__", "")}
    if isinstance(value, type) and issubclass(value, BaseException):
        if value.__module__ == "builtins":  # `MyError = ValueError`
            return {"kind": "builtin_exception", "builtin": value.__name__}
        return {"kind": "exception_class", "base": _builtin_base(value),
                "parents": _class_names(value, namespace, skip_first=True)[:1]}
    if isinstance(value, type):
        return {"kind": "class"}
    if callable(value):
        return {"kind": "callable"}
    try:
        data = protocol.encode(value)
        if len(repr(data)) <= _VALUE_MAX_CHARS:
            return {"kind": "value", "value": data}
    except Exception:  # noqa: BLE001 - anything that cannot be described travels as opaque
        pass
    return {"kind": "opaque", **_opaque(value)}


def _opaque(value):
    """What the judge needs to stand in for a value that cannot leave: whether Python would compare it
    by identity and take it as true (a generator, a map), or whether its own methods decide."""
    cls = type(value)
    return {"type": cls.__name__, "custom_eq": cls.__eq__ is not object.__eq__,
            "custom_bool": hasattr(cls, "__bool__") or hasattr(cls, "__len__")}


def _answer(namespace, request):
    def name_of(obj):
        return next((n for n, v in namespace.items() if v is obj and not n.startswith("_")), None)

    def resolve(name):
        return namespace[name]

    try:
        args = protocol.decode(request["args"], resolve)
        kwargs = protocol.decode(request["kwargs"], resolve)
    except Exception as exc:  # noqa: BLE001 - a request the judge encoded is always decodable
        return {"raised": _error(exc, namespace)}
    answer = {}
    try:
        result = namespace[request["call"]](*args, **kwargs)
        try:
            answer["value"] = protocol.encode(result, name_of)
        except Exception:  # noqa: BLE001 - Untransferable, or too deep, or too large
            answer["opaque"] = _opaque(result)
    except BaseException as exc:  # noqa: BLE001 - the judge raises it again on its side
        answer["raised"] = _error(exc, namespace)
    changed = [isinstance(a, _MUTABLE) for a in args]
    if any(changed) or any(isinstance(v, _MUTABLE) for v in kwargs.values()):
        try:
            answer["args_after"] = [protocol.encode(a, name_of) if m else None for a, m in zip(args, changed)]
            answer["kwargs_after"] = {k: protocol.encode(v, name_of) for k, v in kwargs.items()
                                      if isinstance(v, _MUTABLE)}
        except Exception:  # noqa: BLE001 - the arguments stay as they were on the judge's side
            answer.pop("args_after", None)
    return answer


def main():
    requests, answers = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    job = protocol.receive(requests)
    _set_limits(job["limits"])
    sys.setrecursionlimit(job["recursion_limit"])
    namespace = {"__name__": "__solution__", "__builtins__": __builtins__}
    protocol.send(answers, _load(job["code"], namespace))
    while True:
        request = protocol.receive(requests)
        if request is None:
            os._exit(0)
        answer = _answer(namespace, request)
        try:
            protocol.send(answers, answer)
        except Exception:  # noqa: BLE001 - over the size limit: say so instead
            protocol.send(answers, {"oversized": True})


if __name__ == "__main__":
    main()
