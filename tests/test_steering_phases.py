"""Phases 4.5 and 4.8 end to end on a tiny model whose output a planted direction flips deterministically.

The planted model (tests/planted.py) writes "1" while coordinate K of its residual stream is positive and "x" while it
is negative; every embedding carries +BIAS on K, so unsteered it writes "11111111" (a program that
runs). Steering along -e_K with alpha > BIAS makes it write "xxxxxxxx" (NameError). Tasks whose test
is `assert 2 + 2 == 4` therefore pass at baseline and fail when steered; tasks whose test is `assert 1 == 2`
fail whatever the model writes. The "incorrect" latent of our hand-made phase 2.5 output is -e_K.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

import run
from common.phases import get_phase
from tests.planted import BIAS, LAYER, planted_args, write_hand_made_directions, write_tasks


@pytest.fixture(scope="module")
def steered_run(tmp_path_factory, planted_model_dir: Path) -> tuple[Path, list[str]]:
    data_dir = tmp_path_factory.mktemp("steered")
    args = planted_args(planted_model_dir, write_tasks(data_dir))
    for phase in ("0", "0.1", "3.5", "3.6"):
        assert run.main(["phase", phase, "--data-dir", str(data_dir), *args]) == 0
    write_hand_made_directions(data_dir)
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
    level = corruption["direction_level"]  # the inference: directions, not pooled rows
    assert level["controls_at_or_above_target"] == 0 and level["rank_p"] == pytest.approx(1 / 6)
    assert level["n_controls"] == 5 and level["difference"] == pytest.approx(1.0 - versus["pooled_control"]["rate"])
    assert 0 < level["prediction_p"] < 0.5  # every task broken, no control broke one; but a handful of tasks and
    #                                         five controls are too few for a direction-level claim at 5%
    assert incorrect["by_method"]["mean_difference"]["corruption"]["rate"] == 1.0  # alpha * 0.71 > BIAS
    # the planted model never writes a function, so no steered program counts as valid code
    assert (corruption["steered_valid_code"]["successes"], corruption["steered_valid_code"]["trials"]) == (0, n_passing)
    assert incorrect["controls"]["pooled_steered_valid_code"]["trials"] == 5 * n_passing
    correct = analysis["effects"]["correct"]["by_method"]["sae"]
    assert correct["correction"]["successes"] == 0 and correct["preservation"]["rate"] == 1.0
    assert correct["whole_split"]["mcnemar_p"] == 1.0
    examples = (data_dir / "phase4_8" / "examples" / "sae_corruption.md").read_text()
    assert examples.count("(FLIPPED)") == n_passing


def test_viz_only_redraws_without_generating(steered_run, monkeypatch):
    data_dir, args = steered_run
    figure = data_dir / "phase4_8" / "steering_effect_analysis.png"
    figure.unlink()
    monkeypatch.setattr("common.generation_job.generate", _refuse)
    assert run.main(["phase", "4.8", "--viz-only", "--data-dir", str(data_dir), *args]) == 0
    assert figure.read_bytes().startswith(b"\x89PNG")


def test_a_hand_chosen_coefficient_reuses_the_grid_generations(steered_run, monkeypatch):
    data_dir, args = steered_run
    monkeypatch.setattr("common.generation_job.generate", _refuse)
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
    monkeypatch.setattr("common.generation_job.generate", _refuse)
    assert run.main(["phase", "4.8", "--data-dir", str(data_dir), *more_samples]) == 0
    after = json.loads((data_dir / "phase4_8" / "steering_effect_analysis.json").read_text())
    assert after["effects"] == before["effects"]
