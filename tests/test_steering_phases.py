"""Phases 4.5 and 4.8 end to end on a tiny model whose output a planted direction flips deterministically.

The planted model writes "1" while coordinate K of its residual stream is positive and "x" while it
is negative; every embedding carries +BIAS on K, so unsteered it writes "11111111" (a program that
runs). Steering along -e_K with alpha > BIAS makes it write "xxxxxxxx" (NameError). Tasks whose test
is `assert True` therefore pass at baseline and fail when steered; tasks whose test is `assert 1 == 2`
fail whatever the model writes. The "incorrect" latent of our hand-made phase 2.5 output is -e_K.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

import run
from common.config import Config
from common.directions import SteeringDirection, save_directions
from common.phases import get_phase
from common.utils import write_manifest

K, BIAS, LAYER = 0, 10.0, 1
PASSABLE, IMPOSSIBLE = ["assert True"], ["assert 1 == 2"]


@pytest.fixture(scope="module")
def planted_model_dir(tmp_path_factory, smollm_tokenizer_dir: Path) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm_tokenizer_dir)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    with torch.no_grad():
        model.model.embed_tokens.weight[:, K] = BIAS
        model.model.norm.weight.zero_()
        model.model.norm.weight[K] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[tokenizer.convert_tokens_to_ids("1"), K] = 1.0
        model.lm_head.weight[tokenizer.convert_tokens_to_ids("x"), K] = -1.0
    folder = tmp_path_factory.mktemp("planted_llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _tasks(tmp_path: Path) -> Path:
    """Our own tasks: 10 passable and 6 impossible ones, of varied complexity."""
    records = []
    for i in range(16):
        branches = "".join(f"    if x == {j}:\n        return {j}\n" for j in range(i % 4))
        records.append({"task_id": 700 + i, "text": f"Write function number {i}.",
                        "code": f"def f{i}(x):\n{branches}    return x\n",
                        "test_list": PASSABLE if i % 8 < 5 else IMPOSSIBLE, "test_setup_code": "",
                        "challenge_test_list": []})
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps(records))
    return path


def _args(model_dir: Path, tasks: Path) -> list[str]:
    return ["--set", "dataset=mbpp", "--set", f"data_file={tasks}", "--set", f"model_name={model_dir}",
            "--set", "layers=1,3", "--set", "max_new_tokens=8", "--set", "batch_size=4",
            "--set", "split_fractions=0.2,0.4,0.4", "--set", "samples_per_temperature=0",
            "--set", "steering_coefficients=0.001,40", "--set", "problems_per_coefficient=3",
            "--set", "min_valid_code_rate=0",  # the planted model never writes a function
            "--set", "random_controls=3", "--set", "zero_discrimination_controls=2", "--log-level", "WARNING"]


def _unit(index: int, sign: float = 1.0) -> torch.Tensor:
    vector = torch.zeros(64)
    vector[index] = sign
    return vector


def _hand_made_directions(data_dir: Path) -> None:
    """Phase 2.5 and 2.6 outputs: +e_K prefers correct, -e_K incorrect; controls are orthogonal to e_K;
    the mean difference leans on e_K (cosine 0.71)."""
    config = Config(data_dir=str(data_dir)).validate()
    latents = [SteeringDirection(f"sae_latent/{kind}/layer_{LAYER}/latent_{i}", LAYER, _unit(K, sign), "sae_latent",
                                 {"prefers": kind, "rank": 1, "feature_idx": i, "separation_score": 0.5})
               for i, (kind, sign) in enumerate((("correct", 1.0), ("incorrect", -1.0)))]
    latents += [SteeringDirection(f"zero_discrimination/control/layer_{LAYER}/latent_{j}", LAYER, _unit(j),
                                  "zero_discrimination", {"prefers": "control", "rank": j, "feature_idx": j})
                for j in (5, 6, 7)]
    (data_dir / "phase2_5").mkdir(parents=True)
    save_directions(data_dir / "phase2_5" / "latent_directions.safetensors", latents)
    write_manifest(config, get_phase("2.5"), {}, [data_dir / "phase2_5" / "latent_directions.safetensors"])
    (data_dir / "phase2_6").mkdir(parents=True)
    save_directions(data_dir / "phase2_6" / "directions.safetensors",
                    [SteeringDirection(f"mean_difference/layer_{LAYER}", LAYER, (_unit(K) + _unit(9)) / 2 ** 0.5,
                                       "mean_difference")])
    write_manifest(config, get_phase("2.6"), {}, [data_dir / "phase2_6" / "directions.safetensors"])


@pytest.fixture(scope="module")
def steered_run(tmp_path_factory, planted_model_dir: Path) -> tuple[Path, list[str]]:
    data_dir = tmp_path_factory.mktemp("steered")
    args = _args(planted_model_dir, _tasks(data_dir))
    for phase in ("0", "0.1", "3.5", "3.6"):
        assert run.main(["phase", phase, "--data-dir", str(data_dir), *args]) == 0
    _hand_made_directions(data_dir)
    for phase in ("4.5", "4.8"):
        assert run.main(["phase", phase, "--data-dir", str(data_dir), *args]) == 0
    return data_dir, args


def test_the_planted_model_passes_passable_tasks_unsteered(steered_run):
    data_dir, _ = steered_run
    for table in (data_dir / "phase3_6" / "dataset_hyperparams_temp_0_0.parquet",
                  data_dir / "phase3_5" / "dataset_temp_0_0.parquet"):
        rows = pd.read_parquet(table)
        assert set(rows["generated_code"]) == {"11111111\n"}
        assert rows["test_passed"].any() and not rows["test_passed"].all()


def test_phase_4_5_finds_the_coefficient_that_flips_and_says_why(steered_run):
    data_dir, _ = steered_run
    out = data_dir / "phase4_5"
    chosen = json.loads((out / "selected_coefficients.json").read_text())
    incorrect = chosen["incorrect"]
    small, large = incorrect["grid"]
    assert small["flip_rate"]["successes"] == 0 and small["mean_token_similarity"] == 1.0
    n = incorrect["n_problems_evaluated"]
    assert large["flip_rate"]["successes"] == n == large["flip_directions"]["pass->fail"]
    assert large["syntax_error_rate"]["successes"] == 0  # "xxxxxxxx" parses; it fails on a NameError
    assert large["valid_code_rate"]["successes"] == 0  # but it defines no function
    assert (incorrect["coefficient"], incorrect["chosen_by"], incorrect["layer"]) == (40, "rule", LAYER)
    assert "most flips" in incorrect["rationale"]
    correct = chosen["correct"]  # on tasks nothing can fix: no flips at any coefficient
    assert all(m["flip_rate"]["successes"] == 0 for m in correct["grid"])
    assert correct["coefficient"] == 40 and "no coefficient flipped" in correct["rationale"]
    examples = (out / "coefficient_examples" / "incorrect_coeff_40.md").read_text()
    assert "pass->fail  (FLIPPED)" in examples and "xxxxxxxx" in examples and "-11111111" in examples
    assert (out / "coefficient_analysis_plots.png").read_bytes().startswith(b"\x89PNG")
    summary = json.loads((out / "phase_4_5_summary.json").read_text())
    assert summary["mean_residual_norm"][str(LAYER)] > BIAS - 1


def test_phase_4_8_measures_corruption_against_controls(steered_run):
    data_dir, _ = steered_run
    baseline = pd.read_parquet(data_dir / "phase3_5" / "dataset_temp_0_0.parquet")
    n_passing = int(baseline["test_passed"].sum())
    analysis = json.loads((data_dir / "phase4_8" / "steering_effect_analysis.json").read_text())
    incorrect = analysis["effects"]["incorrect"]
    corruption = incorrect["by_method"]["sae"]["corruption"]
    assert corruption["successes"] == corruption["trials"] == n_passing
    assert corruption["mcnemar_p"] == pytest.approx(2 * 0.5 ** n_passing)
    versus = corruption["vs_controls"]
    assert versus["n_controls"] == 5 and versus["pooled_control"]["trials"] == 5 * n_passing
    assert versus["pooled_control"]["rate"] < 0.5 and versus["difference"] > 0.5
    assert versus["controls_at_or_above_target"] == 0 and versus["rank_p"] == pytest.approx(1 / 6)
    assert incorrect["by_method"]["mean_difference"]["corruption"]["rate"] == 1.0  # alpha * 0.71 > BIAS
    correct = analysis["effects"]["correct"]["by_method"]["sae"]
    assert correct["correction"]["successes"] == 0 and correct["preservation"]["rate"] == 1.0
    assert correct["whole_split"]["mcnemar_p"] == 1.0
    examples = (data_dir / "phase4_8" / "examples" / "sae_corruption.md").read_text()
    assert examples.count("(FLIPPED)") == n_passing


def test_viz_only_redraws_without_generating(steered_run, monkeypatch):
    data_dir, args = steered_run
    figure = data_dir / "phase4_8" / "steering_effect_analysis.png"
    figure.unlink()
    monkeypatch.setattr("common.generation_job.generate_batch", _refuse)
    assert run.main(["phase", "4.8", "--viz-only", "--data-dir", str(data_dir), *args]) == 0
    assert figure.read_bytes().startswith(b"\x89PNG")


def test_a_hand_chosen_coefficient_reuses_the_grid_generations(steered_run, monkeypatch):
    data_dir, args = steered_run
    monkeypatch.setattr("common.generation_job.generate_batch", _refuse)
    assert run.main(["phase", "4.5", "--data-dir", str(data_dir), *args, "--set", "incorrect_coefficient=0.001"]) == 0
    chosen = json.loads((data_dir / "phase4_5" / "selected_coefficients.json").read_text())
    assert chosen["incorrect"]["chosen_by"] == "override" and chosen["incorrect"]["coefficient"] == 0.001
    assert chosen["incorrect"]["proposed_coefficient"] == 40
    assert chosen["incorrect"]["metrics"]["flip_rate"]["successes"] == 0


def test_coefficient_selection_never_reads_the_validation_split(steered_run, tmp_path: Path):
    data_dir, args = steered_run
    assert "3.5" not in get_phase("4.5").upstream
    copy = tmp_path / "data"
    for phase in ("phase0", "phase0_1", "phase2_5", "phase3_6"):
        shutil.copytree(data_dir / phase, copy / phase)
    (copy / "phase4_5").mkdir()
    shutil.copytree(data_dir / "phase4_5" / "checkpoint", copy / "phase4_5" / "checkpoint")
    assert run.main(["phase", "4.5", "--data-dir", str(copy), *args]) == 0  # no phase 3.5 output at all
    original = json.loads((data_dir / "phase4_5" / "selected_coefficients.json").read_text())
    again = json.loads((copy / "phase4_5" / "selected_coefficients.json").read_text())
    assert again["correct"]["coefficient"] == original["correct"]["coefficient"]
    assert again["incorrect"]["grid"] == original["incorrect"]["grid"]


def _refuse(*args, **kwargs):
    raise AssertionError("this step must not generate")


def test_rerunning_the_baseline_phase_without_changing_its_greedy_rows_reuses_every_generation(steered_run,
                                                                                               monkeypatch):
    data_dir, args = steered_run
    assert run.main(["phase", "4.8", "--data-dir", str(data_dir), *args]) == 0  # current with 4.5's latest choice
    before = json.loads((data_dir / "phase4_8" / "steering_effect_analysis.json").read_text())
    more_samples = [*args, "--set", "samples_per_temperature=1", "--set", "temperatures=0.7"]
    assert run.main(["phase", "3.5", "--data-dir", str(data_dir), *more_samples]) == 0
    monkeypatch.setattr("common.generation_job.generate_batch", _refuse)
    assert run.main(["phase", "4.8", "--data-dir", str(data_dir), *more_samples]) == 0
    after = json.loads((data_dir / "phase4_8" / "steering_effect_analysis.json").read_text())
    assert after["effects"] == before["effects"]
