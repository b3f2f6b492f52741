"""Contrastive pairs and their aggregators: a planted direction is recovered, every mutant is verified to fail,
and the model's own pairs pair a task's passing program with one of its failing ones."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
import torch

from common.aggregators import AGGREGATORS, pair_ordered
from common.datasets import load_mbpp_file
from common.prompt_utils import PromptBuilder
from common.sandbox import Program, evaluate_many
from common.contrastive_pairs import load_pairs, save_pairs
from phase2_7.pairs import as_output, mutant_pairs, own_pairs


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_every_aggregator_recovers_a_planted_direction_and_points_to_passing(name: str):
    rng = np.random.default_rng(0)
    d_model, n_pairs = 32, 200
    planted = torch.from_numpy(rng.normal(size=d_model)).float()
    planted /= planted.norm()
    scales = torch.from_numpy(np.geomspace(1.0, 0.3, d_model)).float()  # anisotropic, shared by both sides of a pair
    context = torch.randn(n_pairs, d_model, generator=torch.Generator().manual_seed(1)) * scales
    def noise(seed: int) -> torch.Tensor:
        return torch.randn(n_pairs, d_model, generator=torch.Generator().manual_seed(seed)) * 0.3

    strength = 0.5 + 3.5 * torch.rand(n_pairs, 1, generator=torch.Generator().manual_seed(2))  # PCA needs it to vary
    positive = context + strength * planted + noise(3)
    negative = context + noise(4)
    direction = AGGREGATORS[name](positive, negative)
    assert float(direction.norm()) == pytest.approx(1.0, abs=1e-5)
    # a probe's weights are a discriminative direction (they discount directions where pairs vary), so they only
    # approximate the planted shift; a random unit vector in 32 dimensions has |cosine| about 0.14
    assert float(direction @ planted) > (0.85 if name == "probe" else 0.95)
    assert pair_ordered(direction, positive, negative).mean() > 0.95
    assert pair_ordered(-direction, positive, negative).mean() < 0.05


def test_aggregators_refuse_pairs_that_do_not_differ():
    same = torch.ones(5, 4)
    with pytest.raises(ValueError, match="no direction"):
        AGGREGATORS["mean_difference"](same, same)


@pytest.fixture
def problems(mbpp_full_file) -> pd.DataFrame:
    return pd.DataFrame([asdict(p) for p in load_mbpp_file(mbpp_full_file)[0]])


def test_every_mutant_pair_is_a_passing_reference_against_a_failing_mutant(problems: pd.DataFrame, tmp_path):
    builder = PromptBuilder("base")
    pairs, skipped = mutant_pairs(problems, builder, per_task=2, seed=0, exec_timeout_s=5.0)
    failing = [p for p in pairs if p.kind == "mutant"]
    assert len(failing) >= len(problems)  # most tasks give two
    assert all(sum(p.task_id == t for p in failing) <= 2 for t in problems["task_id"])
    tests = dict(zip(problems["task_id"].astype(str), problems["tests"]))
    verdicts = evaluate_many([Program(code, tests[p.task_id]) for p in pairs for code in (p.positive_code,
                                                                                          p.negative_code)],
                             progress=False)
    assert all(v.passed for v in verdicts[0::2])  # every reference passes
    assert [not v.passed for v in verdicts[1::2]] == [p.kind == "mutant" for p in pairs]  # mutants fail, controls not
    assert {p.kind for p in pairs} == {"mutant", "equivalent"}
    for pair in pairs:  # one mutation apart: the same number of lines, one of them changed
        positive, negative = pair.positive_code.splitlines(), pair.negative_code.splitlines()
        assert len(positive) == len(negative) and sum(a != b for a, b in zip(positive, negative)) == 1
        assert pair.positive_output == "\n" + pair.positive_code  # a base prompt ends in "# Solution:"
        assert as_output(pair.positive_code, {}, PromptBuilder("chat")) == f"```python\n{pair.positive_code}```"
    save_pairs(tmp_path / "pairs.jsonl", pairs)
    assert load_pairs(tmp_path / "pairs.jsonl") == pairs
    assert skipped["reference_failed"] == 0


def test_own_pairs_pair_a_tasks_passing_program_with_its_failing_ones(problems: pd.DataFrame):
    first, second = problems["task_id"].astype(str).iloc[:2]
    table = pd.DataFrame([
        {"task_id": first, "sample_idx": 0, "test_passed": True, "error_type": None, "generated_code": "good",
         "raw_output": "```python\ngood\n```"},
        {"task_id": first, "sample_idx": 1, "test_passed": False, "error_type": "assertion", "generated_code": "bad1",
         "raw_output": "bad1"},
        {"task_id": first, "sample_idx": 2, "test_passed": False, "error_type": "unsupported", "generated_code": "x",
         "raw_output": "x"},
        {"task_id": second, "sample_idx": 0, "test_passed": False, "error_type": "runtime", "generated_code": "bad2",
         "raw_output": "bad2"}])  # the second task has no passing program: no pair
    pairs = own_pairs(table, problems, PromptBuilder("base"), per_task=3, seed=0)
    assert [(p.task_id, p.positive_code, p.negative_code, p.kind) for p in pairs] == [(first, "good", "bad1", "own")]
    assert pairs[0].provenance == {"positive_sample": 0, "negative_sample": 1, "negative_error_type": "assertion"}


def test_a_base_completion_answer_is_the_body_of_the_stubs_function():
    stub = 'import math\n\ndef add_one(x):\n    """Add one to x."""\n'
    problem = {"task_id": "HumanEval/0", "source": "humaneval", "prompt_stub": stub, "entry_point": "add_one",
               "reference_code": stub + "    y = x + 1\n    return y\n",
               "tests": "def check(candidate):\n    assert candidate(1) == 2\n\ncheck(add_one)\n"}
    builder = PromptBuilder("base")
    pairs, _ = mutant_pairs(pd.DataFrame([problem]), builder, per_task=3, seed=0, exec_timeout_s=5.0)
    assert pairs and all(p.positive_output == "    y = x + 1\n    return y\n" for p in pairs)
    assert all(p.negative_output.startswith("    ") and p.negative_output != p.positive_output for p in pairs)
    assert as_output(pairs[0].positive_code, problem, PromptBuilder("chat")).startswith("```python\nimport math")


def test_each_pair_gets_its_own_sides_activations_after_texts_are_shared_and_a_side_is_dropped(monkeypatch):
    from common.program_pass import ProgramPass
    from phase2_7 import runner
    from common.contrastive_pairs import ContrastivePair

    def fake_pass(model, tokenizer, texts, layers, position_k, add_special_tokens):
        """Row i's activation is i; a text holding 'EMPTY' has no program."""
        empty = [("EMPTY" in t.raw_output) for t in texts]
        values = torch.arange(len(texts), dtype=torch.float32)[:, None].repeat(1, 2)
        values[torch.tensor(empty)] = float("nan")
        columns = {"program_error": ["empty_program" if e else None for e in empty],
                   "program_mean_logprob": [None if e else -float(i) for i, e in enumerate(empty)],
                   "program_tokens": [0 if e else 10 + i for i, e in enumerate(empty)]}
        return ProgramPass({"code_last": {1: values}}, columns), texts

    seen = {}

    def recording(*args):
        result, texts = fake_pass(*args)
        seen["texts"] = [t.raw_output for t in texts]
        return result

    monkeypatch.setattr(runner, "record_programs", recording)
    pair = lambda negative: ContrastivePair("t", "mutant", "ref", negative, "REF", negative)  # noqa: E731
    pairs = [pair("A"), pair("EMPTY"), pair("B"), pair("A")]
    problems = pd.DataFrame([{"task_id": "t", "text": "x", "test_list": ["assert True"], "entry_point": "f"}])
    config = type("C", (), {"layers": [1], "position_k": 6})()
    kept, recorded = runner._recorded_pairs(None, None, PromptBuilder("base"), problems, pairs, config)
    assert seen["texts"] == ["REF", "A", "EMPTY", "B"]  # every distinct text read once
    assert [p.negative_output for p in kept] == ["A", "B", "A"]
    positive, negative = recorded["activations"]["code_last"][1]
    assert positive[:, 0].tolist() == [0, 0, 0] and negative[:, 0].tolist() == [1, 3, 1]
    assert recorded["columns"]["program_tokens"].tolist() == [[10, 11], [10, 13], [10, 11]]


def test_the_held_out_share_never_takes_every_task():
    from common.contrastive_pairs import held_out_tasks

    for n in (2, 3, 10):
        tasks = np.repeat([f"t{i}" for i in range(n)], 2)
        held_out = held_out_tasks(tasks, seed=0)
        assert 0 < len(set(tasks[held_out])) < n
        assert all(held_out[tasks == t].all() or not held_out[tasks == t].any() for t in set(tasks))  # whole tasks


def test_a_tie_counts_half():
    from common.aggregators import ordering

    assert ordering(np.array([2.0, 1.0, 1.0]), np.array([1.0, 2.0, 1.0])).tolist() == [1.0, 0.0, 0.5]
