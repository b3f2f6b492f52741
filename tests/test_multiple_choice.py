"""Multiple-choice questions (`dataset=mcq`, the MedQA-USMLE 4-option layout): loading, the prompt that ends at
"Answer:", reading the chosen letter, its verdict, the margin between the two best options, and the minimal pairs.
The questions in tests/fixtures/mcq_questions.jsonl are our own; only their layout follows MedQA."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

import run
from common import datasets
from common.answer_formats import (CHOICE, CODE, NO_OPTION, WRONG_OPTION, answer_format, option_token_ids,
                                   stop_after_option)
from common.contrastive_pairs import load_pairs
from common.datasets import load_problems
from common.errors import PipelineError
from common.program_pass import answer_text, record_programs
from common.prompt_utils import PromptBuilder
from phase2_7.pairs import mutant_pairs, own_pairs

FIXTURE = Path(__file__).parent / "fixtures" / "mcq_questions.jsonl"


def _question(**changes) -> dict:
    record = {"question": "Which organ pumps blood?", "options": {"A": "Lung", "B": "Heart", "C": "Skin", "D": "Bone"},
              "answer_idx": "B", "meta_info": "step1"}
    return {**record, **changes}


def test_the_fixture_loads_with_lettered_options_and_the_exam_step_as_family():
    loaded = load_problems("mcq", str(FIXTURE))
    assert len(loaded.problems) == 16 and not loaded.skipped
    problem = loaded.problems[1]
    assert problem.task_id == "mcq/00001" and problem.options == ["Liver", "Spleen", "Pancreas", "Gallbladder"]
    assert problem.correct_option == "C" and problem.family == "step1" and problem.source == "file:mcq_questions.jsonl"
    assert answer_format(problem.to_row()) is CHOICE
    assert answer_format(load_problems("synthetic", n_tasks=3).problems[0].to_row()) is CODE


def test_malformed_questions_are_recorded_and_left_out(tmp_path: Path):
    rows = [_question(), _question(answer_idx="E"), _question(options={"A": "x", "C": "y"}), _question(options="AB"),
            {"options": {"A": "x", "B": "y"}, "answer_idx": "A"}, _question(answer_idx=""), _question(answer_idx="AB"),
            _question(options=["Lung", "Heart", "Skin"])]
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    loaded = load_problems("mcq", str(path))
    assert [p.task_id for p in loaded.problems] == ["mcq/00000"]
    assert [(s["row"], s["error_type"]) for s in loaded.skipped] == [
        (1, "invalid_value"), (2, "invalid_value"), (3, "wrong_type"), (4, "missing_field"), (5, "invalid_value"),
        (6, "invalid_value"), (None, "invalid_value")]
    assert "3 options where the dataset's questions have 4" in loaded.skipped[-1]["message"]


def test_medqa_hub_loading_code_with_a_local_substitute(monkeypatch: pytest.MonkeyPatch):
    """The hub path is real code; here `load_dataset` returns a local DatasetDict of our own questions."""
    from datasets import Dataset, DatasetDict
    import datasets as hf_datasets

    records = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    calls = []

    def fake_load_dataset(name, variant):
        calls.append((name, variant))
        return DatasetDict({"train": Dataset.from_list(records[:10]), "test": Dataset.from_list(records[10:])})

    monkeypatch.setattr(hf_datasets, "load_dataset", fake_load_dataset)
    problems = load_problems("mcq").problems
    assert calls == [(datasets.MEDQA_HUB_ID, None)]
    assert len(problems) == 16 and problems[0].source.startswith("hub:") and problems[3].correct_option == "D"

    monkeypatch.setattr(hf_datasets, "load_dataset", lambda *_: (_ for _ in ()).throw(ConnectionError("offline")))
    with pytest.raises(PipelineError, match="data_file=PATH"):
        load_problems("mcq")


@pytest.mark.parametrize("output, letter, stop", [
    (" C", "C", None), (" C\n", "C", 2), ("C.", "C", 1), ("\n(D) Gallbladder", "D", 3), (" **B**", "B", 4),
    (" The answer is B.", "B", 16), (" Option C is right.", "C", 18), (" the answer is b.", "", 16),
    (" Amylase", "", None), (" Aortic stenosis.", "", 16), (" B12 deficiency.", "", 15), ("  ", "", None),
    (" I think so.\nA", "", 11), (" E.", "", 2)])
def test_the_answer_is_the_leading_letter_or_a_stated_one_even_while_it_streams_in(output: str, letter: str,
                                                                                  stop: int | None):
    """`stop` is where generation cuts the whole text (a prose answer at its first sentence end). Streamed one
    character at a time, the first cut is the same, and the text kept names the same option: " A" may still become
    " Aortic", so a letter counts only once what follows it is known. E on a four-option question is no option."""
    problem = {"options": ["w", "x", "y", "z"], "correct_option": "C"}
    assert CHOICE.extract(output, problem) == letter
    assert stop_after_option(output, "ABCD") == stop
    streamed = next(((i, cut) for i in range(1, len(output) + 1)
                     if (cut := stop_after_option(output[:i], "ABCD")) is not None), None)
    kept = output[:streamed[1]] if streamed else output
    assert (streamed[1] if streamed else None) == stop and CHOICE.extract(kept, problem) == letter
    verdict = CHOICE.judge(letter, problem).result()
    assert verdict.passed == (letter == "C")
    assert verdict.error_type == ("passed" if letter == "C" else WRONG_OPTION if letter else NO_OPTION)


def test_an_answer_that_names_no_option_is_read_where_the_letter_should_have_been():
    problem = {"options": ["w", "x", "y", "z"], "correct_option": "C"}
    assert CHOICE.span(" The answer is B.", problem) == (15, 16)
    assert CHOICE.span("  Aortic", problem) == (2, 3) and CHOICE.span("", problem) == (0, 0)


@pytest.mark.parametrize("style", ["chat", "base"])
def test_the_prompt_shows_lettered_options_and_ends_at_answer(smollm_tokenizer_dir: Path, style: str):
    from transformers import AutoTokenizer

    builder = PromptBuilder(style, AutoTokenizer.from_pretrained(smollm_tokenizer_dir))
    problem = load_problems("mcq", str(FIXTURE)).problems[1].to_row()
    prompt = builder.build(problem)
    assert prompt.endswith("Answer:") and "\nA. Liver\nB. Spleen\nC. Pancreas\nD. Gallbladder\n" in prompt
    assert ("<|im_start|>assistant\nAnswer:" in prompt) == (style == "chat")
    assert builder.code_opened(problem) is None and builder.code_prefix(problem) == ""


def test_the_margin_is_between_the_two_best_options_at_the_letter(tiny_model):
    model, tokenizer = tiny_model
    problem = {"options": ["w", "x", "y", "z"], "correct_option": "B"}
    prompt = "Which?\nA. w\nB. x\nC. y\nD. z\nAnswer:"
    options = option_token_ids(tokenizer, 4)
    recorded = record_programs(model, tokenizer, [answer_text(prompt, " B", problem)], [1], 3, True,
                               option_ids=options)
    assert recorded.columns["program_tokens"] == [1]
    ids = tokenizer(prompt)["input_ids"]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), dim=-1)
    best = sorted((max(float(logprobs[i]) for i in variants) for variants in options), reverse=True)
    assert recorded.columns["program_mean_margin"][0] == pytest.approx(best[0] - best[1], abs=1e-4)
    assert recorded.columns["program_mean_logprob"][0] == pytest.approx(float(logprobs[options[1][0]]), abs=1e-4)


def test_the_minimal_pairs_are_the_correct_option_against_each_wrong_one():
    problems = pd.DataFrame([p.to_row() for p in load_problems("mcq", str(FIXTURE)).problems[:3]])
    pairs, skipped = mutant_pairs(problems, PromptBuilder("base"), per_task=2, seed=0, exec_timeout_s=1.0)
    assert skipped == {} and len(pairs) == 6 and {p.kind for p in pairs} == {"mutant"}
    for pair in pairs:
        correct = problems.set_index("task_id").loc[pair.task_id, "correct_option"]
        assert (pair.positive_code, pair.positive_output) == (correct, f" {correct}")
        assert pair.negative_code != correct and pair.negative_output == f" {pair.negative_code}"


def test_own_pairs_are_distinct_though_one_letter_answers_repeat():
    problems = pd.DataFrame([p.to_row() for p in load_problems("mcq", str(FIXTURE)).problems[:1]])
    answers = [(" A", True), (" A", True), (" B", False), (" B", False), (" C", False)]
    table = pd.DataFrame([{"task_id": "mcq/00000", "sample_idx": i, "raw_output": text, "generated_code": text.strip(),
                           "test_passed": passed, "error_type": "passed" if passed else WRONG_OPTION}
                          for i, (text, passed) in enumerate(answers)])
    pairs = own_pairs(table, problems, PromptBuilder("base"), per_task=8, seed=0)
    assert sorted((p.positive_output, p.negative_output) for p in pairs) == [(" A", " B"), (" A", " C")]


def test_every_phase_before_steering_runs_on_multiple_choice_questions(tmp_path: Path, tiny_model_dir: Path, tiny_model,
                                                                        capsys: pytest.CaptureFixture):
    """The random tiny model names no option, so phase 2.5 finds no latent and the pipeline stops at 4.5 with one
    line; every phase before it ran on the questions (3.9 says why it has no dictionary: no passing answer). Each
    answer is still read where its letter should have been, with the margin between the two best options there."""
    from tests.test_pipeline_tiny import TINY_SAE

    args = ["--set", "dataset=mcq", "--set", f"data_file={FIXTURE}", "--set", f"model_name={tiny_model_dir}",
            "--set", "layers=1,3", "--set", "max_new_tokens=6", "--set", "batch_size=4", "--set", "samples_per_task=1",
            "--set", "temperature=1.0", "--set", "style_max_tokens=4", "--log-level", "WARNING", *TINY_SAE]
    assert run.main(["pipeline", "--data-dir", str(tmp_path), *args]) == 2
    assert "error: phase 4.5 has nothing to steer" in capsys.readouterr().err
    table = pd.read_parquet(tmp_path / "phase1" / "dataset_sae.parquet")
    assert set(table["error_type"]) <= {"passed", WRONG_OPTION, NO_OPTION}
    assert (table["program_error"].isna() == table["raw_output"].str.strip().astype(bool)).all()
    row = table[table["raw_output"].str[:1].str.strip().astype(bool)].iloc[0]  # its first token holds the span
    model, tokenizer = tiny_model
    with torch.no_grad():
        ids = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), dim=-1)
    best = sorted((max(float(logprobs[i]) for i in variants) for variants in option_token_ids(tokenizer, 4)))
    assert row["program_mean_margin"] == pytest.approx(best[-1] - best[-2], abs=1e-4)
    pairs = load_pairs(tmp_path / "phase2_7" / "datasets" / "contrastive_pairs.jsonl")
    assert {p.kind for p in pairs} >= {"mutant"} and all(len(p.positive_code) == 1 for p in pairs if p.kind == "mutant")
    for phase in ("phase2_7", "phase2_8", "phase3_5", "phase3_6", "phase3_8", "phase3_9"):
        assert (tmp_path / phase / "phase_output.json").is_file(), phase
