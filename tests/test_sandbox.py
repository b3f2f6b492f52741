"""The sandbox must tell right from wrong and survive hostile programs."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from common import sandbox
from common.sandbox import Program, evaluate_code, evaluate_many

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "hostile_programs.json").read_text())
ADD_TEST = "assert add(1, 2) == 3\n"


def _processes_matching(marker: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line and "ps -eo" not in line]


def test_leftover_check_sees_a_live_process():
    # Guards the leftover-process assertions below against matching nothing by construction.
    sleeper = subprocess.Popen(["sleep", "31.4159"])
    try:
        assert _processes_matching("sleep 31.4159")
    finally:
        sleeper.kill()
        sleeper.wait()


def test_bwrap_is_used_here():
    # The set-up script installs bubblewrap; the isolation tests below rely on it.
    assert sandbox.sandbox_mode() == "bwrap"


@pytest.mark.parametrize("case", FIXTURES, ids=[c["name"] for c in FIXTURES])
def test_shared_hostile_fixtures(case: dict, tmp_path: Path):
    canary = Path("/var/tmp") / f"pva_canary_{tmp_path.name}"
    canary.mkdir(exist_ok=True)
    (canary / "keep.txt").write_text("still here")
    try:
        started = time.perf_counter()
        result = evaluate_code(case["code"].replace("{CANARY}", str(canary)), case["tests"], timeout=5.0)
        elapsed = time.perf_counter() - started
        assert result.passed == (case["expect"] == "pass"), result
        assert elapsed < case.get("max_seconds", 10)
        if case.get("check") == "canary_intact":
            assert (canary / "keep.txt").read_text() == "still here"
        if case.get("check") == "no_leftover_processes":
            time.sleep(0.3)  # forked children run the harness's interpreter, so they show up under its name
            assert not _processes_matching("sandbox_harness.py")
    finally:
        (canary / "keep.txt").unlink(missing_ok=True)
        canary.rmdir()


HOSTILE = {
    "os_exit_zero_at_import": "import os\nos._exit(0)\ndef add(a, b):\n    return a + b\n",
    "os_exit_zero_inside_call": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "sys_exit_inside_call": "import sys\ndef add(a, b):\n    sys.exit(0)\n",
    "atexit_os_exit": "import atexit, os\natexit.register(lambda: os._exit(0))\ndef add(a, b):\n    return 0\n",
    "raise_system_exit_in_test": "def add(a, b):\n    raise SystemExit(0)\n",
    "kill_self_sigkill": "import os, signal\ndef add(a, b):\n    os.kill(os.getpid(), signal.SIGKILL)\n",
    "ignore_sigterm_then_hang": "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                                "def add(a, b):\n    while True:\n        pass\n",
    "print_fake_pass": "import sys\nprint('passed'); print('{\"status\": \"passed\"}')\nsys.stdout.flush()\n"
                       "def add(a, b):\n    return 0\n",
    "forge_report_on_every_fd": "import os, json\nfor fd in range(3, 64):\n    try:\n"
                                "        os.write(fd, json.dumps({'status': 'passed', 'error_type': 'passed', "
                                "'message': '', 'nonce': 'guess'}).encode())\n    except OSError:\n        pass\n"
                                "os._exit(0)\n",
    "patch_json_dumps": "import json\n_real = json.dumps\njson.dumps = lambda obj, *a, **k: _real(dict(obj, status='passed', "
                        "error_type='passed'))\ndef add(a, b):\n    return 0\n",
    "swallow_assertion_via_excepthook": "import sys\nsys.excepthook = lambda *a: None\ndef add(a, b):\n    return 0\n",
    "keyboard_interrupt": "def add(a, b):\n    raise KeyboardInterrupt\n",
    "disk_flood": "def add(a, b):\n    with open('/tmp/big', 'wb') as f:\n        while True:\n"
                  "            f.write(b'x' * (1 << 20))\n",
    "stderr_flood_then_wrong": "import sys\nfor _ in range(100000):\n    sys.stderr.write('e' * 100)\n"
                               "def add(a, b):\n    return 0\n",
    "close_stdout": "import os\nos.close(1)\nos.close(2)\ndef add(a, b):\n    return 0\n",
    "daemon_child_escapes_session": "import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                                    "        os.execv('/bin/sleep', ['sleep', '97.531'])\n    os._exit(0)\n"
                                    "def add(a, b):\n    return 0\n",
    "huge_recursion_limit": "import sys\nsys.setrecursionlimit(10**8)\ndef add(a, b):\n    return add(a, b)\n",
    "non_utf8_output": "import sys\nsys.stdout.buffer.write(b'\\xff\\xfe\\x00')\ndef add(a, b):\n    return 0\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_programs_never_pass(name: str):
    started = time.perf_counter()
    result = evaluate_code(HOSTILE[name], ADD_TEST, timeout=3.0)
    assert not result.passed, result
    assert result.error_type != "passed"
    assert time.perf_counter() - started < 8


def test_daemonised_grandchild_is_killed():
    evaluate_code(HOSTILE["daemon_child_escapes_session"], ADD_TEST, timeout=3.0)
    time.sleep(0.3)
    assert not _processes_matching("sleep 97.531")
    assert not _processes_matching("sandbox_harness.py")


def test_writes_outside_the_sandbox_do_not_land(tmp_path: Path):
    target = Path("/var/tmp") / f"pva_escape_{tmp_path.name}.txt"
    code = f"open({str(target)!r}, 'w').write('x')\ndef add(a, b):\n    return a + b\n"
    result = evaluate_code(code, ADD_TEST, timeout=3.0)
    assert not result.passed and "Read-only file system" in result.error_message
    assert not target.exists()


def test_no_network_to_the_host():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(2.0)
    port = server.getsockname()[1]
    connections = []

    def accept():
        try:
            connections.append(server.accept())
        except OSError:
            pass

    thread = threading.Thread(target=accept)
    thread.start()
    code = (f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')\n"
            "def add(a, b):\n    return a + b\n")
    result = evaluate_code(code, ADD_TEST, timeout=3.0)
    thread.join()
    server.close()
    assert not result.passed
    assert connections == []


def test_environment_is_not_passed_in(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PVA_SECRET_TOKEN", "hunter2")
    code = "import os\ndef add(a, b):\n    return a + b if 'PVA_SECRET_TOKEN' not in os.environ else 0\n"
    assert evaluate_code(code, ADD_TEST).passed


@pytest.mark.parametrize("code, tests, error_type", [
    ("def add(a, b):\n    return a + b\n", ADD_TEST, "passed"),
    ("def add(a, b)\n    return a + b\n", ADD_TEST, "syntax"),
    ("def add(a, b):\n    return a + c\n", ADD_TEST, "name"),
    ("def add(a, b):\n    return a + 'x'\n", ADD_TEST, "type"),
    ("def add(a, b):\n    return a - b\n", ADD_TEST, "assertion"),
    ("def add(a, b):\n    return [1][5]\n", ADD_TEST, "runtime"),
    ("def add(a, b):\n    return bytearray(8 << 30)\n", ADD_TEST, "memory"),
    ("def add(a, b):\n    while True:\n        pass\n", ADD_TEST, "timeout"),
])
def test_error_types(code: str, tests: str, error_type: str):
    result = evaluate_code(code, tests, timeout=2.0)
    assert result.error_type == error_type, result
    assert result.passed == (error_type == "passed")
    assert result.duration_s > 0


def test_failing_assert_is_named_in_the_message():
    result = evaluate_code("def add(a, b):\n    return 0\n", "assert add(0, 0) == 0\nassert add(2, 2) == 4\n")
    assert result.error_message == "AssertionError at tests line 2: assert add(2, 2) == 4"


def test_batch_keeps_order_and_runs_in_parallel():
    programs = [Program("import time\ndef add(a, b):\n    time.sleep(0.4)\n    return a + b\n", ADD_TEST),
                Program("def add(a, b):\n    return a - b\n", ADD_TEST)] * 4
    started = time.perf_counter()
    results = evaluate_many(programs, timeout=5.0, workers=4, progress=False)
    assert [r.passed for r in results] == [True, False] * 4
    assert time.perf_counter() - started < 4 * 0.4 + 1.0  # the four sleepers overlap


def test_subprocess_fallback_still_judges_correctly(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sandbox, "sandbox_mode", lambda: "subprocess")
    assert evaluate_code("def add(a, b):\n    return a + b\n", ADD_TEST).passed
    assert not evaluate_code("def add(a, b):\n    return a - b\n", ADD_TEST).passed
    assert not evaluate_code(HOSTILE["os_exit_zero_at_import"], ADD_TEST).passed
    assert evaluate_code("def add(a, b):\n    while True:\n        pass\n", ADD_TEST, timeout=1.0).error_type == "timeout"
