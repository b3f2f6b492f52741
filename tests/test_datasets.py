import json
from pathlib import Path

import pandas as pd
import pytest

from common import datasets
from common.datasets import cyclomatic_complexity, load_problems
from common.errors import PipelineError
from common.sandbox import evaluate_many, Program
from tests.conftest import OWN_TASKS, mbpp_full_records


def test_full_layout_json_array(mbpp_full_file: Path):
    problems = load_problems("mbpp", str(mbpp_full_file)).problems
    assert len(problems) == len(OWN_TASKS)
    first = problems[0]
    assert (first.task_id, first.entry_point) == ("900", "add_two")
    assert first.prompt_stub == "def add_two(a, b):\n"
    assert first.test_list == OWN_TASKS[0][2]
    assert first.source == "file:mbpp_full.json"


def test_sanitized_layout_jsonl(mbpp_sanitized_file: Path):
    problems = load_problems("mbpp", str(mbpp_sanitized_file)).problems
    assert [p.text for p in problems] == [t[0] for t in OWN_TASKS]


def test_reference_solutions_pass_and_complexity_is_graded(mbpp_full_file: Path):
    problems = load_problems("mbpp", str(mbpp_full_file)).problems
    results = evaluate_many([Program(p.reference_code, p.tests) for p in problems], progress=False)
    assert all(r.passed for r in results), [r for r in results if not r.passed]
    by_name = {p.entry_point: p.cyclomatic_complexity for p in problems}
    assert by_name["add_two"] == 1 and by_name["sign_word"] == 3 and by_name["bsearch"] >= 4


def test_setup_code_and_test_imports_run_before_the_asserts(tmp_path: Path):
    record = {"task_id": 1, "text": "Return pi.", "code": "import math\ndef get_pi():\n    return math.pi\n",
              "test_list": ["assert isclose(get_pi(), 3.14159, abs_tol=1e-4)"], "test_setup_code": "from math import isclose",
              "challenge_test_list": []}
    path = tmp_path / "m.json"
    path.write_text(json.dumps([record]))
    problem = load_problems("mbpp", str(path)).problems[0]
    assert problem.tests.startswith("from math import isclose")
    assert evaluate_many([Program(problem.reference_code, problem.tests)], progress=False)[0].passed


def test_malformed_rows_are_skipped_not_fatal(tmp_path: Path):
    rows = mbpp_full_records()[:2] + [{"task_id": 5, "text": "no code"}, {"task_id": 6, "text": "", "code": "x=1",
                                                                         "test_list": []}]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    loaded = load_problems("mbpp", str(path))
    assert [p.task_id for p in loaded.problems] == ["900", "901"]
    assert [(s["row"], s["task_id"], s["error_type"]) for s in loaded.skipped] == [(2, "5", "missing_field"),
                                                                                    (3, "6", "invalid_value")]


@pytest.mark.parametrize("content, message", [
    ("{not json", "neither a JSON array nor JSONL"),
    ('{"a": 1}\n[1, 2]', "list of objects"),
    ("[]", "no usable problems"),
])
def test_unreadable_files(tmp_path: Path, content: str, message: str):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(PipelineError, match=message):
        load_problems("mbpp", str(path))


def test_non_utf8_file(tmp_path: Path):
    path = tmp_path / "bad.json"
    path.write_bytes(b"\xff\xfe\x00[")
    with pytest.raises(PipelineError, match="cannot read"):
        load_problems("mbpp", str(path))


def test_humaneval_from_the_wheel():
    problems = load_problems("humaneval").problems
    assert len(problems) == 164
    assert all(p.entry_point and "check(" in p.tests and p.source == "humaneval" for p in problems)
    assert all(p.reference_code.startswith(p.prompt_stub) for p in problems)


def test_hub_loading_code_with_a_local_substitute(monkeypatch: pytest.MonkeyPatch):
    """The hub path is real code; here `load_dataset` is replaced by a local DatasetDict of our own rows."""
    from datasets import Dataset, DatasetDict

    records = mbpp_full_records()
    calls = []

    def fake_load_dataset(name, variant):
        calls.append((name, variant))
        return DatasetDict({"train": Dataset.from_list(records[:8]), "test": Dataset.from_list(records[8:])})

    import datasets as hf_datasets

    monkeypatch.setattr(hf_datasets, "load_dataset", fake_load_dataset)
    problems = load_problems("mbpp", None, "full").problems
    assert calls == [(datasets.MBPP_HUB_ID, "full")]
    assert len(problems) == len(records) and problems[0].source.startswith("hub:")


def test_hub_failure_is_one_clear_error(monkeypatch: pytest.MonkeyPatch):
    import datasets as hf_datasets

    def offline(*_args, **_kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(hf_datasets, "load_dataset", offline)
    with pytest.raises(PipelineError, match="data_file=PATH"):
        load_problems("mbpp", None, "sanitized")


def test_complexity_of_unparseable_code_is_one():
    assert cyclomatic_complexity("def f(:\n") == 1
    assert cyclomatic_complexity("x = 1\n") == 1


def test_phase_0_loads_a_427_task_sanitized_json_array(tmp_path: Path):
    """Same size and layout as sanitized MBPP (a JSON array with `prompt`), built from our own tasks."""
    import run

    base = mbpp_full_records()
    records = [{"source_file": "own.py", "task_id": 2 + i, "prompt": f"{base[i % len(base)]['text']} (variant {i})",
                "code": base[i % len(base)]["code"], "test_imports": [], "test_list": base[i % len(base)]["test_list"]}
               for i in range(427)]
    path = tmp_path / "sanitized-mbpp.json"
    path.write_text(json.dumps(records))
    data = tmp_path / "data"
    assert run.main(["phase", "0", "--set", "dataset=mbpp", "--set", f"data_file={path}", "--data-dir", str(data),
                     "--log-level", "WARNING"]) == 0
    import pandas as pd

    table = pd.read_parquet(data / "phase0" / "problems.parquet")
    assert len(table) == 427 and table["task_id"].is_unique
    assert list(table.columns) == ["task_id", "text", "prompt_stub", "tests", "entry_point", "reference_code",
                                   "source", "test_list", "test_imports", "cyclomatic_complexity", "difficulty",
                                   "family", "options", "correct_option"]


def test_phase_0_goes_on_past_malformed_rows_and_records_each(tmp_path: Path):
    import run

    rows = mbpp_full_records()[:3] + [{"task_id": 7, "text": "a task", "code": 12, "test_list": ["assert f(1)"]},
                                      {"task_id": 8}, dict(mbpp_full_records()[0])]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows))
    assert run.main(["phase", "0", "--data-dir", str(tmp_path / "data"), "--set", "dataset=mbpp",
                     "--set", f"data_file={path}", "--log-level", "WARNING"]) == 0
    out = tmp_path / "data" / "phase0"
    assert pd.read_parquet(out / "problems.parquet")["task_id"].tolist() == ["900", "901", "902"]
    skipped = json.loads((out / "skipped_rows.json").read_text())
    assert [(s["task_id"], s["error_type"]) for s in skipped] == [("7", "invalid_value"), ("8", "missing_field"),
                                                                   ("900", "duplicate_task_id")]
    assert json.loads((out / "phase_0_summary.json").read_text())["n_skipped_rows"] == 3
