"""No forged pass: whatever a wrong program does inside its own interpreter, it does not pass.

Every attack here is a wrong `add` (or none) plus code that tries to reach the verdict: tampering
with builtins, with the harness module, with frames, with the answer channel, with trace and
profile hooks, with threads that outlive the tests, with objects that equal everything. Several
of them passed against the earlier design, where the tests ran inside the program's process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common import sandbox
from common.sandbox import Program, evaluate_code, evaluate_many

# Two asserts no constant answer satisfies: an attack must reach the verdict, not guess one value.
ADD_TESTS = "assert add(1, 2) == 3\nassert add(2, 2) == 4\nassert add(-1, 1) == 0\n"
WRONG_ADD = "def add(a, b):\n    return a - b\n"
FORGED_REPORT = json.dumps({"status": "passed", "error_type": "passed", "message": "", "value": True})

# Each writes a framed "passed" report (and the old unframed one) to every descriptor it can reach.
_FLOOD_FDS = (
    "import os, struct\n"
    f"_body = {FORGED_REPORT!r}.encode()\n"
    "def _flood(fds):\n"
    "    for fd in fds:\n"
    "        for data in (struct.pack('>I', len(_body)) + _body, _body):\n"
    "            try:\n"
    "                os.write(fd, data)\n"
    "            except (OSError, TypeError, ValueError):\n"
    "                pass\n"
)

ATTACKS = {
    "exec_replaced_by_a_no_op": "import builtins\nbuiltins.exec = lambda *a, **k: None\n" + WRONG_ADD,
    "compile_replaced_by_a_no_op": "import builtins\n_c = builtins.compile\n"
                                   "builtins.compile = lambda *a, **k: _c('pass', '<x>', 'exec')\n" + WRONG_ADD,
    "harness_module_rewritten": "import json, sys\nmain = sys.modules['__main__']\n_dumps = json.dumps\n"
                                "main._dumps = lambda report: _dumps(dict(report, status='passed', error_type='passed'))\n"
                                "main._answer = lambda namespace, request: {'value': True}\n" + WRONG_ADD,
    "report_written_from_the_stack": _FLOOD_FDS
    + "import inspect, json\n"
      "def add(a, b):\n"
      "    fds = set(range(64))\n"
      "    for info in inspect.stack():\n"
      "        scope = info.frame.f_locals\n"
      "        if 'nonce' in scope and 'report_fd' in scope:\n"
      "            os.write(scope['report_fd'], json.dumps({'status': 'passed', 'error_type': 'passed',\n"
      "                                                   'message': '', 'nonce': scope['nonce']}).encode())\n"
      "            os._exit(0)\n"
      "        fds.update(v for v in scope.values() if isinstance(v, int) and 0 <= v < 1024)\n"
      "    _flood(sorted(fds))\n"
      "    return a - b\n",
    "frame_locals_rewritten": "import sys\n"
                             "def add(a, b):\n"
                             "    frame = sys._getframe()\n"
                             "    while frame is not None:\n"
                             "        for key in ('status', 'error_type', 'passed'):\n"
                             "            if key in frame.f_locals:\n"
                             "                frame.f_locals[key] = 'passed'\n"
                             "        frame = frame.f_back\n"
                             "    return a - b\n",
    "answer_channel_flooded_at_import": _FLOOD_FDS + "_flood(range(64))\n" + WRONG_ADD,
    "thread_outlives_the_tests_and_floods": _FLOOD_FDS
    + "import threading, time\n"
      "def _forever():\n"
      "    while True:\n"
      "        _flood(range(3, 16))\n"
      "        time.sleep(0.001)\n"
      "threading.Thread(target=_forever, daemon=False).start()\n" + WRONG_ADD,
    "trace_hook_rewrites_returns": "import sys\n"
                                   "def _trace(frame, event, arg):\n"
                                   "    if event == 'return':\n"
                                   "        frame.f_locals.update(status='passed')\n"
                                   "    return _trace\n"
                                   "sys.settrace(_trace)\nsys.setprofile(lambda *a: None)\n" + WRONG_ADD,
    "object_that_equals_everything": "class Yes:\n    def __eq__(self, other):\n        return True\n"
                                     "    __hash__ = object.__hash__\n"
                                     "def add(a, b):\n    return Yes()\n",
    "int_subclass_that_equals_everything": "class Eq(int):\n    def __eq__(self, other):\n        return True\n"
                                           "    __hash__ = int.__hash__\n"
                                           "def add(a, b):\n    return Eq(a - b)\n",
    "builtin_shadowed_for_the_tests": "def all(items):\n    return True\n" + WRONG_ADD,
    "stdlib_module_patched_for_the_tests": "import math\nmath.isclose = lambda *a, **k: True\n" + WRONG_ADD,
    "parent_killed": "import os, signal\ndef add(a, b):\n    os.kill(os.getppid(), signal.SIGKILL)\n"
                     "    return a - b\n",
    "process_group_killed": "import os, signal\ndef add(a, b):\n    os.killpg(0, signal.SIGKILL)\n",
}

# Tests that lean on names an attack may try to replace; every attack runs against all of them.
TEST_SHAPES = [ADD_TESTS,
               "assert all([add(1, 2) == 3, add(2, 2) == 4])\n",
               "import math\nassert math.isclose(add(1, 2), 3) and math.isclose(add(2, 2), 4)\n"]


@pytest.mark.parametrize("tests", TEST_SHAPES, ids=["plain", "uses_all", "uses_math"])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_an_attack_from_inside_the_program_never_passes(name: str, tests: str):
    result = evaluate_code(ATTACKS[name], tests, timeout=3.0)
    assert not result.passed and result.error_type != "passed", result


def test_the_attacks_are_aimed_at_a_verdict_not_broken_programs():
    """Without its tampering each attack's `add` is wrong; a right `add` with the same tampering still passes
    where the tampering leaves the program itself intact (so the tests above measure the verdict, not a crash)."""
    right = "def add(a, b):\n    return a + b\n"
    for name in ("exec_replaced_by_a_no_op", "compile_replaced_by_a_no_op", "trace_hook_rewrites_returns",
                 "builtin_shadowed_for_the_tests", "stdlib_module_patched_for_the_tests"):
        assert evaluate_code(ATTACKS[name].replace(WRONG_ADD, right), ADD_TESTS, timeout=3.0).passed, name


def test_the_program_cannot_see_the_judge():
    """In its pid namespace no process runs the judge, so it cannot read the tests or signal the judge."""
    code = ("import os\n"
            "def visible_judges():\n"
            "    found = 0\n"
            "    for pid in filter(str.isdigit, os.listdir('/proc')):\n"
            "        try:\n"
            "            found += b'sandbox_judge' in open(f'/proc/{pid}/cmdline', 'rb').read()\n"
            "        except OSError:\n"
            "            pass\n"
            "    return found\n")
    assert sandbox.sandbox_mode() == "bwrap"
    assert evaluate_code(code, "assert visible_judges() == 0\n").passed


def test_the_program_never_receives_the_tests():
    """Every string held by any container in the program's process is searched for a word only the tests hold."""
    code = ("import gc\n"
            "def add(a, b):\n"
            "    needle = 'secret_expected_value'.upper()  # built at run time: no constant holds it\n"
            "    for held in gc.get_objects():\n"
            "        values = held.values() if isinstance(held, dict) else held if isinstance(held, (list, tuple)) else ()\n"
            "        if any(isinstance(v, str) and needle in v for v in values):\n"
            "            return 1\n"
            "    return 0\n")
    assert evaluate_code(code, "assert add(1, 2) == 0, 'SECRET_EXPECTED_VALUE'\n").passed


def test_a_test_that_swallows_everything_still_sees_an_unsupported_result():
    code = "def add(a, b):\n    return (x for x in range(3))\n"
    tests = "try:\n    list(add(1, 2))\nexcept:\n    pass\n"
    result = evaluate_code(code, tests, timeout=3.0)
    assert result.error_type == "unsupported" and not result.passed, result


def test_a_loop_in_the_tests_is_stopped_at_the_limit():
    result = evaluate_code("def zero():\n    return 0\n", "while True:\n    pass\n", timeout=1.0)
    assert result.error_type == "timeout" and "time limit" in result.error_message, result


def test_the_program_exception_reaches_the_tests_as_its_builtin_class():
    code = "def parse(s):\n    return int(s)\n"
    tests = "try:\n    parse('x')\n    assert False\nexcept ValueError as exc:\n    assert 'invalid literal' in str(exc)\n"
    assert evaluate_code(code, tests).passed
    result = evaluate_code(code, "assert parse('x') == 1\n")
    assert result.error_type == "runtime" and result.error_message.startswith("ValueError"), result


def test_an_exception_of_the_program_keeps_its_error_type():
    result = evaluate_code("def add(a, b):\n    return a + 'x'\n", ADD_TESTS)
    assert result.error_type == "type" and "at tests line 1" in result.error_message, result


@pytest.mark.parametrize("value", ["(1, 2)", "{1, 2}", "frozenset({3})", "{'a': [1, (2,)], 3: None}", "b'\\x00\\xff'",
                                   "bytearray(b'ab')", "1 + 2j", "float('inf')", "-0.0", "2 ** 200", "-(2 ** 70)",
                                   "[True, None, 'é\\udcff']", "{(1, 2): frozenset()}"])
def test_plain_values_come_back_as_themselves(value: str):
    tests = f"result = make()\nassert result == {value} and type(result) is type({value})\n"
    assert evaluate_code(f"def make():\n    return {value}\n", tests).passed


def test_values_the_program_defines_reach_the_tests():
    code = "import math\nLIMIT = 10\nclass Box:\n    pass\nBOX = Box()\ndef area(r):\n    return math.pi * r * r\n"
    assert evaluate_code(code, "assert LIMIT == 10 and math.isclose(area(1), math.pi)\n").passed
    assert evaluate_code(code, "assert BOX.size == 1\n").error_type == "unsupported"


def test_tests_as_a_list_of_assert_strings():
    asserts = ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]
    assert evaluate_code("def add(a, b):\n    return a + b\n", asserts).passed
    assert evaluate_code(WRONG_ADD, asserts).error_type == "assertion"
    results = evaluate_many([Program("def add(a, b):\n    return a + b\n", asserts), Program(WRONG_ADD, asserts)],
                            progress=False)
    assert [r.passed for r in results] == [True, False]


@pytest.mark.parametrize("tests", [None, 3, [1, 2], {"assert": 1}, b"assert True"])
def test_other_test_shapes_raise_a_type_error_naming_the_parameter(tests):
    with pytest.raises(TypeError, match="^tests must be"):
        evaluate_code(WRONG_ADD, tests)
    with pytest.raises(TypeError, match="^tests must be"):
        evaluate_many([Program(WRONG_ADD, tests)], progress=False)


def test_code_that_is_not_a_string_raises_a_type_error():
    with pytest.raises(TypeError, match="^code must be a string"):
        evaluate_code(None, ADD_TESTS)


def test_the_subprocess_fallback_also_keeps_the_verdict_outside(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sandbox, "sandbox_mode", lambda: "subprocess")
    for name in ("harness_module_rewritten", "report_written_from_the_stack", "object_that_equals_everything"):
        assert not evaluate_code(ATTACKS[name], ADD_TESTS, timeout=3.0).passed, name


def test_mbpp_layout_shapes_pass_or_are_reported_unsupported_never_failed():
    from common.datasets import load_mbpp_file

    problems, skipped = load_mbpp_file(Path(__file__).parent / "fixtures" / "mbpp_sanitized_shapes.json")
    results = evaluate_many([Program(p.reference_code, p.tests) for p in problems], progress=False)
    verdicts = {p.task_id: r.error_type for p, r in zip(problems, results)}
    assert not skipped and len(verdicts) == 16
    assert {k for k, v in verdicts.items() if v == "unsupported"} == {"7012", "7013", "7014"}, verdicts
    assert all(v in ("passed", "unsupported") for v in verdicts.values()), verdicts


def test_unsupported_rows_have_no_label_in_the_analyses():
    import pandas as pd

    from common.positions import usable_rows

    table = pd.DataFrame({"error_type": ["passed", "unsupported", "assertion"], "program_error": [None, None, "empty"]})
    assert usable_rows(table, "last_prompt").tolist() == [True, False, True]
    assert usable_rows(table, "code_last").tolist() == [True, False, False]


# A program that speaks the sandbox's own protocol: it writes a framed message of its choosing on every
# descriptor it holds before the harness does, and answers every call itself with `True`.
_SPEAK = ("import json, os, struct, sys\n"
          "def _speak(message):\n"
          "    body = json.dumps(message).encode()\n"
          "    for fd in range(3, 32):\n"
          "        try:\n"
          "            os.write(fd, struct.pack('>I', len(body)) + body)\n"
          "        except OSError:\n"
          "            pass\n"
          "sys.modules['__main__']._answer = lambda namespace, request: {'value': True}\n")
FORGED_FIRST_MESSAGES = {
    "failure_kind_passed": {"failed": {"error_type": "passed", "kind": "passed", "message": ""}},
    "judge_report_passed": {"id": "0", "error_type": "passed", "message": ""},
    "builtins_replaced": {"ready": {"add": {"kind": "callable"},
                                    "__builtins__": {"kind": "value", "value": {"d": [["all", {"builtin": "bool"}],
                                                                                      ["__import__", {"builtin": "__import__"}]]}}}},
    "builtin_name_as_value": {"ready": {"add": {"kind": "callable"}, "all": {"kind": "value", "value": {"builtin": "bool"}}}},
    "module_under_another_name": {"ready": {"add": {"kind": "callable"}, "math": {"kind": "module", "module": "cmath"}}},
    "module_that_runs_code_on_import": {"ready": {"add": {"kind": "callable"},
                                                  "antigravity": {"kind": "module", "module": "antigravity"}}},
    "unknown_kinds": {"ready": {"add": {"kind": "callable"}, "math": {"kind": "passed"}}},
}


@pytest.mark.parametrize("tests", TEST_SHAPES + ["assert False\n"], ids=["plain", "uses_all", "uses_math", "false"])
@pytest.mark.parametrize("forged", sorted(FORGED_FIRST_MESSAGES))
def test_a_program_speaking_the_protocol_cannot_forge_a_pass(forged: str, tests: str):
    code = _SPEAK + f"_speak({FORGED_FIRST_MESSAGES[forged]!r})\n" + WRONG_ADD
    result = evaluate_code(code, tests, timeout=3.0)
    assert not result.passed and result.error_type != "passed", result


@pytest.mark.parametrize("code, tests", [
    ("def add(a, b):\n    raise StopIteration\n", "assert all(map(lambda c: add(c[0], c[1]) == c[2], [(1, 2, 3)]))\n"),
    ("def add(a, b):\n    raise StopIteration\n", "for r in map(add, [1, 2], [2, 2]):\n    assert r in (3, 4)\n"),
    ("def sorted(xs):\n    return xs\n", "assert sorted([3, 1]) == [1, 3]\n"),
    ("class module:\n    pass\nmath = module()\nmath.__name__ = 'cmath'\n" + WRONG_ADD,
     "assert math.isclose(add(1, 2), 3)\n"),
])
def test_the_program_cannot_steer_what_the_tests_call(code: str, tests: str):
    result = evaluate_code(code, tests, timeout=3.0)
    assert not result.passed, result


def test_an_assertion_after_a_caught_program_exception_is_an_assertion():
    code = "def parse(s):\n    return int(s)\n"
    tests = "for _ in range(50):\n    try:\n        parse('x')\n    except ValueError:\n        pass\nassert parse('1') == 2\n"
    assert evaluate_code(code, tests).error_type == "assertion"


@pytest.mark.parametrize("code, tests", [
    ("import collections\nP = collections.namedtuple('P', 'x y')\ndef origin():\n    return P(0, 1)\n",
     "assert origin().y == 1 and origin() == (0, 1)\n"),
    ("import collections\ndef tally(s):\n    return collections.Counter(s)\n", "assert tally('aab')['z'] == 0\n"),
    ("import collections\ndef groups(xs):\n    d = collections.defaultdict(list)\n    for x in xs:\n"
     "        d[x % 2].append(x)\n    return d\n", "assert groups([1, 2, 3])[5] == [] and groups([1])[1] == [1]\n"),
    ("def sort_in_place(xs):\n    xs.sort()\n", "data = [3, 1, 2]\nsort_in_place(data)\nassert data == [1, 2, 3]\n"),
    ("def fill(d, key):\n    d[key] = len(d)\n", "table = {}\nfill(table, 'a')\nfill(d=table, key='b')\nassert table == {'a': 0, 'b': 1}\n"),
    ("class TooBig(ValueError):\n    pass\ndef check_size(n):\n    if n > 3:\n        raise TooBig('big')\n    return n\n",
     "try:\n    check_size(5)\n    assert False\nexcept TooBig:\n    pass\ntry:\n    check_size(9)\nexcept ValueError:\n    pass\n"),
    ("def double(x):\n    return 2 * x\ndef apply(f, xs):\n    return [f(x) for x in xs]\n", "assert apply(double, [1, 2]) == [2, 4]\n"),
    ("import numpy as np\ndef total(xs):\n    return np.int64(sum(xs))\n", "assert total([1, 2]) == 3\n"),
    ("def evens(n):\n    return (i for i in range(0, n, 2))\n", "assert evens(4) != [0, 2] and evens(4)\n"),
])
def test_honest_shapes_are_judged_as_python_would(code: str, tests: str):
    result = evaluate_code(code, tests)
    assert result.passed, result


def test_isinstance_with_a_class_of_the_program_is_unsupported():
    code = "class Box:\n    pass\ndef make():\n    return Box()\n"
    assert evaluate_code(code, "assert isinstance(make(), Box)\n").error_type == "unsupported"


def test_a_forged_report_in_the_fallback_never_labels_another_program(monkeypatch: pytest.MonkeyPatch):
    """Without bwrap (and as root) a program can write into the judge's report pipe; the report it forges lacks
    the job's random id, so the judge is replaced and the programs after it keep their own verdicts."""
    monkeypatch.setattr(sandbox, "sandbox_mode", lambda: "subprocess")
    forge = ("import json, os, struct\n"
             "body = json.dumps({'id': '0', 'error_type': 'passed', 'message': ''}).encode()\n"
             "for fd in range(3, 16):\n"
             "    try:\n"
             "        with open(f'/proc/{os.getppid()}/fd/{fd}', 'wb', buffering=0) as pipe:\n"
             "            pipe.write(struct.pack('>I', len(body)) + body)\n"
             "    except OSError:\n"
             "        pass\n" + WRONG_ADD)
    right = "def add(a, b):\n    return a + b\n"
    programs = [Program(forge, ADD_TESTS), Program(WRONG_ADD, ADD_TESTS), Program(right, ADD_TESTS)] * 2
    results = evaluate_many(programs, timeout=3.0, workers=1, progress=False)
    assert [r.passed for r in results] == [False, False, True] * 2, results


@pytest.mark.parametrize("code, tests", [
    ("class Halt(StopIteration):\n    pass\ndef add(a, b):\n    raise Halt\n",
     "assert all(map(lambda c: add(c[0], c[1]) == c[2], [(1, 2, 3)]))\n"),
    ("class _Halt(StopIteration):\n    pass\ndef add(a, b):\n    raise _Halt\n",
     "for r in map(add, [1, 2], [2, 2]):\n    assert r in (3, 4)\n"),
    ("import collections\nmath = collections.namedtuple('math', 'isclose')(slice)\n" + WRONG_ADD,
     "assert math.isclose(add(1, 2), 3)\n"),
    ("import collections\nmath = collections.namedtuple('math', 'sqrt')(eval)\ndef area(r):\n    return '2'\n",
     "assert math.sqrt(area(4)) == 2\n"),
    ("import collections\ndef make(n):\n    return collections.defaultdict(eval)\n",
     "assert make(1)['1 + 1'] == 2\n"),
])
def test_no_unsafe_builtin_or_stand_in_module_reaches_the_tests(code: str, tests: str):
    result = evaluate_code(code, tests, timeout=3.0)
    assert not result.passed, result


def test_each_job_runs_in_a_fresh_copy_of_the_judge():
    """One after another on a pool of two judges, the first and third programs share a judge process."""
    right = "def add(a, b):\n    return a + b\n"
    marks, checks = "import sys\nsys.left_behind = True\n", "import sys\nassert not hasattr(sys, 'left_behind')\n"
    with sandbox.SandboxPool(timeout_s=5.0, workers=1) as pool:
        verdicts = [pool.submit(Program(right, tests)).result().passed for tests in (marks, marks, checks, checks)]
    assert verdicts == [True, True, True, True]


@pytest.mark.parametrize("code, tests", [
    ("def check(s):\n    raise ValueError('bad input')\n",
     "try:\n    check('x')\nexcept ValueError as e:\n    assert str(e) == 'bad input' and e.args == ('bad input',)\n"),
    ("def look(d):\n    return d['missing']\n", "try:\n    look({})\nexcept KeyError as e:\n    assert e.args == ('missing',)\n"),
    ("import statistics\ndef centre(xs):\n    return statistics.mean(xs)\n",
     "try:\n    centre([])\n    assert False\nexcept ValueError:\n    pass\n"),
    ("def push_then_fail(xs):\n    xs.append(1)\n    raise ValueError\n",
     "a = []\ntry:\n    push_then_fail(a)\nexcept ValueError:\n    pass\nassert a == [1]\n"),
])
def test_exceptions_and_changed_arguments_reach_the_tests_as_python_gives_them(code: str, tests: str):
    result = evaluate_code(code, tests)
    assert result.passed, result


@pytest.mark.parametrize("code", [
    "import collections\nclass P(collections.namedtuple('P', 'x y')):\n    def norm(self):\n        return 5.0\n"
    "def make():\n    return P(3, 4)\n",
    "import collections\ndef make():\n    return collections.namedtuple('P', ['x', 'def'], rename=True)(3, 4)\n",
])
def test_tuples_with_more_than_fields_are_unsupported_not_failed(code: str):
    assert evaluate_code(code, "assert make().norm() == 5.0\n").error_type == "unsupported"


@pytest.mark.parametrize("code, tests", [
    ("class AppError(Exception):\n    pass\nclass NotFound(AppError):\n    pass\ndef get(d, k):\n    if k not in d:\n"
     "        raise NotFound(k)\n    return d[k]\n", "try:\n    get({}, 'x')\nexcept AppError as e:\n    assert e.args == ('x',)\n"
     "else:\n    assert False\n"),
    ("MyErr = ValueError\ndef parse(s):\n    return int(s)\n", "try:\n    parse('x')\nexcept MyErr:\n    pass\nelse:\n    assert False\n"),
    ("from statistics import StatisticsError\nimport statistics\ndef centre(xs):\n    return statistics.mean(xs)\n",
     "try:\n    centre([])\nexcept StatisticsError:\n    pass\nelse:\n    assert False\n"),
    ("from copy import copy\ndef dup(xs):\n    return copy(xs)\n", "a = [1]\nassert dup(a.copy()) == [1]\n"),
])
def test_program_exception_classes_and_names_behave_as_in_python(code: str, tests: str):
    result = evaluate_code(code, tests)
    assert result.passed, result


@pytest.mark.parametrize("code, tests", [
    ("class E(ValueError):\n    pass\ndef f(x):\n    class E(KeyError):\n        pass\n    raise E(x)\n",
     "try:\n    f(1)\nexcept ValueError:\n    pass\n"),
    ("def f(d, k):\n    class KeyError(Exception):\n        pass\n    raise KeyError(k)\n",
     "try:\n    f({}, 1)\nexcept LookupError:\n    pass\n"),
    ("class Quit(SystemExit):\n    pass\ndef f(x):\n    raise Quit(1)\n",
     "try:\n    f(1)\nexcept Exception:\n    pass\nelse:\n    assert False\n"),
])
def test_a_class_named_like_another_is_not_mistaken_for_it(code: str, tests: str):
    result = evaluate_code(code, tests, timeout=3.0)
    assert not result.passed, result


def test_a_program_that_kills_itself_is_reported_killed_by_its_signal():
    result = evaluate_code("import os, signal\ndef add(a, b):\n    os.kill(os.getpid(), signal.SIGKILL)\n", ADD_TESTS)
    assert result.error_type == "killed" and "SIGKILL" in result.error_message, result


def test_an_answer_over_the_message_limit_is_unsupported():
    tests = "big = 'x' * (9 << 20)\nassert echo(big) == big * 2\n"
    assert evaluate_code("def echo(s):\n    return s * 2\n", tests, timeout=10.0).error_type == "unsupported"
