"""What crosses between the judge and the sandboxed program: framed messages of plain data.

Both sides of the sandbox import this file by path (they run as `python -I script.py`), so it uses
the standard library only. A value leaves the program only as JSON built from None, bools, numbers,
strings, bytes, the builtin containers (and the standard library's plain namedtuple, defaultdict,
Counter and OrderedDict) and a short list of side-effect-free builtins by name; the judge rebuilds it from exactly those types, so no
object the program made (with its own `__eq__`, say) ever reaches the code that compares results.
"""

import builtins
import collections
import functools
import json
import os
import select
import struct

MESSAGE_MAX_BYTES = 16 << 20
MAX_DEPTH = 200
_HEADER = struct.Struct(">I")
_BIG_INT = 1 << 63


class Untransferable(Exception):
    """A value that cannot leave the sandbox as plain data (a generator, an instance of the program's
    own class, a structure nested deeper than MAX_DEPTH)."""


class ProtocolError(Exception):
    """A message that is not a well-formed frame of well-formed plain data."""


def encode(value, name_of=None, depth=0):
    """`value` as JSON-ready data, containers tagged so they come back as themselves. `name_of` maps an
    object to the program name it travels by (a program function passed as an argument), or None."""
    if depth > MAX_DEPTH:
        raise Untransferable(f"nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return value
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        value = value.item()  # a numpy scalar travels as the Python number it holds
    if isinstance(value, int):
        value = int(value)
        return {"i": hex(value)} if abs(value) >= _BIG_INT else value
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, complex):
        return {"c": [value.real, value.imag]}
    if isinstance(value, (bytes, bytearray)):
        return {"ba" if isinstance(value, bytearray) else "b": bytes(value).hex()}

    def items(iterable):
        return [encode(item, name_of, depth + 1) for item in iterable]

    cls = type(value)
    if cls is list:
        return items(value)
    if cls is tuple:
        return {"t": items(value)}
    if cls.__bases__ == (tuple,) and _plain_fields(getattr(cls, "_fields", None)):  # a plain namedtuple
        return {"nt": [cls.__name__, list(cls._fields), items(value)]}
    if cls in (set, frozenset):
        return {"f" if cls is frozenset else "s": items(value)}
    if cls in (dict, collections.OrderedDict, collections.Counter, collections.defaultdict):
        pairs = [items(pair) for pair in value.items()]
        if cls is collections.defaultdict:
            factory = value.default_factory
            if factory is not None and not _is_builtin(factory):
                raise Untransferable("a defaultdict whose default is not a plain builtin cannot leave the sandbox")
            return {"dd": [factory.__name__ if factory else None, pairs]}
        return {{dict: "d", collections.OrderedDict: "od", collections.Counter: "ctr"}[cls]: pairs}
    if _is_builtin(value):  # `abs` or `str` passed as an argument or a key: travels by name
        return {"builtin": value.__name__}
    name = name_of(value) if name_of else None
    if name is not None:
        return {"program": name}
    raise Untransferable(f"a {type(value).__name__} object cannot leave the sandbox as plain data")


def decode(data, resolve=None):
    """The value `encode` made; anything else raises ProtocolError. `resolve` turns a program name
    back into the object it stands for on this side."""
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list):
        return [decode(item, resolve) for item in data]
    if not isinstance(data, dict) or len(data) != 1:
        raise ProtocolError("a value is neither plain data nor a tagged container")
    (tag, body), = data.items()

    def items(values):
        if not isinstance(values, list):
            raise ProtocolError(f"the body of tag {tag!r} is not a list")
        return [decode(item, resolve) for item in values]

    def pairs(values):
        decoded = items(values)
        if not all(isinstance(pair, list) and len(pair) == 2 for pair in decoded):
            raise ProtocolError("a mapping entry is not a [key, value] pair")
        return decoded

    try:
        if tag in ("t", "s", "f"):
            return {"t": tuple, "s": set, "f": frozenset}[tag](items(body))
        if tag in ("d", "od", "ctr"):
            mapping = {"d": dict, "od": collections.OrderedDict, "ctr": collections.Counter}[tag]
            return mapping(collections.OrderedDict(pairs(body)))
        if tag == "dd" and isinstance(body, list) and len(body) == 2:
            factory = None if body[0] is None else _builtin(body[0])
            return collections.defaultdict(factory, pairs(body[1]))
        if tag == "nt" and isinstance(body, list) and len(body) == 3:
            return _namedtuple(str(body[0]), tuple(str(f) for f in items(body[1])))(*items(body[2]))
        if tag == "i" and isinstance(body, str):
            return int(body, 16)
        if tag in ("b", "ba") and isinstance(body, str):
            return (bytes if tag == "b" else bytearray).fromhex(body)
        if tag == "c" and isinstance(body, list) and len(body) == 2:
            return complex(float(body[0]), float(body[1]))
        if tag == "builtin":
            return _builtin(body)
        if tag == "program" and isinstance(body, str) and resolve is not None:
            return resolve(body)
    except (TypeError, ValueError, KeyError) as exc:  # unhashable members or keys, bad hex, bad field names
        raise ProtocolError(f"malformed tagged value: {exc}") from exc
    raise ProtocolError(f"unknown tag {tag!r}")


# Builtins that may travel by name (as an argument, a key function, a defaultdict's default): types and
# functions without side effects. Never eval, exec, open, __import__, getattr and the like.
SAFE_BUILTINS = frozenset({
    "abs", "all", "any", "bin", "bool", "bytearray", "bytes", "callable", "chr", "complex", "dict", "divmod",
    "enumerate", "filter", "float", "frozenset", "hash", "hex", "int", "isinstance", "iter", "len", "list", "map",
    "max", "min", "next", "oct", "ord", "pow", "range", "repr", "reversed", "round", "set", "sorted", "str",
    "sum", "tuple", "zip"})


def _is_builtin(value):
    name = getattr(value, "__name__", None)
    return name in SAFE_BUILTINS and getattr(builtins, name) is value


def _builtin(name):
    if name not in SAFE_BUILTINS:
        raise ProtocolError(f"{name!r} is not a builtin that may cross")
    return getattr(builtins, name)


def _plain_fields(fields):
    return isinstance(fields, tuple) and all(isinstance(f, str) and not f.startswith("_") for f in fields)


@functools.lru_cache(maxsize=256)
def _namedtuple(typename, fields):
    return collections.namedtuple(typename, fields)  # validates the names: identifiers, no underscores


def send(fd, message):
    """Write one frame: a 4-byte length, then the message as UTF-8 JSON."""
    body = json.dumps(message).encode("utf-8", "surrogatepass")
    if len(body) > MESSAGE_MAX_BYTES:
        raise Untransferable(f"a message of {len(body)} bytes is over the {MESSAGE_MAX_BYTES}-byte limit")
    data = _HEADER.pack(len(body)) + body
    while data:
        data = data[os.write(fd, data):]


def receive(fd, deadline_s=None, clock=None):
    """Read one frame; None at end of file. With a deadline (on `clock`), raise TimeoutError past it."""
    header = _read_exactly(fd, _HEADER.size, deadline_s, clock)
    if header is None:
        return None
    (length,) = _HEADER.unpack(header)
    if length > MESSAGE_MAX_BYTES:
        raise ProtocolError(f"a frame of {length} bytes is over the {MESSAGE_MAX_BYTES}-byte limit")
    body = _read_exactly(fd, length, deadline_s, clock)
    if body is None:
        return None
    try:
        return json.loads(body.decode("utf-8", "surrogatepass"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"a frame is not JSON: {type(exc).__name__}") from exc


def _read_exactly(fd, count, deadline_s, clock):
    chunks, missing = [], count
    while missing:
        if deadline_s is not None:
            remaining_s = deadline_s - clock()
            if remaining_s <= 0 or not select.select([fd], [], [], remaining_s)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(missing, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def classify(exc):
    """The error type of an exception the program or its tests raised."""
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


def describe(exc):
    if isinstance(exc, SystemExit):
        return f"the program exited (SystemExit {exc.code!r})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
