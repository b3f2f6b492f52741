"""Phases 4.5 and 4.8 end to end on a tiny model whose output a planted direction flips deterministically.

The planted model (tests/planted.py) writes "1" while coordinate K of its residual stream is positive and "x" while it
is negative; every embedding carries +BIAS on K, so unsteered it writes "11111111" (a program that
runs). Steering along -e_K with alpha > BIAS makes it write "xxxxxxxx" (NameError). Tasks whose test
is `assert 2 + 2 == 4` therefore pass at baseline and fail when steered; tasks whose test is `assert 1 == 2`
fail whatever the model writes. The "incorrect" latent of our hand-made phase 2.5 output is -e_K; controls
are calibrated to the same disruption, and none of them flips K.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

import run
from common.calibrated_arms import load_arms
from common.contrastive_pairs import load_pairs
from common.control_vectors import read_control_vector
from common.phases import get_phase
from tests.planted import (K, KV_ALPHAS, LAYER, PREREGISTERED, planted_args, write_hand_made_directions,
                           write_planted_dictionary, write_planted_kv_vector, write_questions, write_tasks)


@pytest.fixture(scope="module")
def steered_run(tmp_path_factory, planted_model_dir: Path) -> tuple[Path, list[str]]:
    data_dir = tmp_path_factory.mktemp("steered")
    args = planted_args(planted_model_dir, write_tasks(data_dir))
    for phase in ("0", "0.1", "1", "3.5", "3.6"):
        assert run.main(["phase", phase, "--data-dir", str(data_dir), *args]) == 0
    write_hand_made_directions(data_dir)
    for phase in ("3.8", "4.5", "4.8"):
        assert run.main(["phase", phase, "--data-dir", str(data_dir), *args]) == 0
    return data_dir, args


def _selected(data_dir: Path) -> dict:
    return json.loads((data_dir / "phase4_5" / "selected_coefficients.json").read_text())


def test_the_planted_model_passes_passable_tasks_unsteered(steered_run):
    data_dir, _ = steered_run
    for table in (data_dir / "phase3_6" / "dataset_hyperparams_temp_0_0.parquet",
                  data_dir / "phase3_5" / "dataset_temp_0_0.parquet"):
        rows = pd.read_parquet(table)
        assert set(rows["generated_code"]) == {"11111111\n"}
        assert rows["test_passed"].any() and not rows["test_passed"].all()


def test_every_arm_of_a_level_is_calibrated_to_that_disruption(steered_run):
    data_dir, _ = steered_run
    summary = json.loads((data_dir / "phase4_5" / "phase_4_5_summary.json").read_text())
    achieved = summary["calibration"]["achieved"]
    controls = {name: value for name, value in achieved.items() if name.startswith("selection_control/")}
    shared = {"shared": 6}  # 2 of each type the sources allow
    assert summary["n_controls_at_each_level"] == {"0.001": shared, "0.3": shared}
    assert len(controls) == 12
    for name, value in controls.items():
        level = float(name.rsplit("@", 1)[1])
        assert value == pytest.approx(level, rel=0.1)  # smooth curves: interpolation lands on the level
    arms = load_arms(data_dir / "phase4_5")
    for role in ("selection_control", "control"):
        assert {a.group for a, _ in arms if a.role == role} == {"random_isotropic", "random_top_pc_span",
                                                                "shuffled_label_mean_difference"}
    assert {a.level for a, _ in arms if a.role == "control"} == {0.001, 0.1, 0.3}  # the pre-registered one too
    selection = {i.label for a, i in arms if a.role == "selection_control"}
    assert not selection & {i.label for a, i in arms if a.role == "control"}  # 4.8 never reuses 4.5's controls
    assert "random_active_latent" in " ".join(summary["warnings"])  # no SAE in this run: said, not hidden
    assert all(intervention.direction.layer == LAYER for _, intervention in arms)


def test_phase_4_5_chooses_the_level_where_the_planted_direction_beats_its_controls(steered_run):
    data_dir, _ = steered_run
    chosen = _selected(data_dir)["methods"]
    incorrect = chosen["sae_latent/incorrect"]
    assert incorrect["chosen_by"] == "rule" and incorrect["level"] == 0.3
    nudge, push = incorrect["grid"]
    assert nudge["versus_controls"]["target"]["successes"] == 0 and not nudge["qualifies"]
    versus = push["versus_controls"]
    assert versus["target"]["successes"] == versus["target"]["trials"] > 0 and versus["controls_mean_rate"] == 0
    assert versus["difference_lower_bound"] > 0 and push["qualifies"]
    correct = chosen["sae_latent/correct"]  # on tasks nothing can fix: never effective
    assert correct["chosen_by"] == "preregistered" and correct["level"] == PREREGISTERED
    assert "no effective level" in correct["rationale"]
    examples = (data_dir / "phase4_5" / "coefficient_examples" / "sae_latent_incorrect_level_0.3.md").read_text()
    assert "pass->fail  (FLIPPED)" in examples and "xxxxxxxx" in examples and "-11111111" in examples
    assert (data_dir / "phase4_5" / "coefficient_analysis_plots.png").read_bytes().startswith(b"\x89PNG")
    hint, vectors = read_control_vector(data_dir / "phase4_5" / "control_vectors" / "sae_latent_incorrect.gguf")
    assert hint == "llama" and list(vectors) == [LAYER]  # the chosen arm, portable: alpha times -e_K
    assert vectors[LAYER][K] == pytest.approx(-incorrect["alpha"], rel=1e-5)
    assert float((vectors[LAYER] ** 2).sum()) == pytest.approx(incorrect["alpha"] ** 2, rel=1e-4)


def test_phase_4_8_measures_corruption_against_disruption_matched_controls(steered_run):
    data_dir, _ = steered_run
    baseline = pd.read_parquet(data_dir / "phase3_5" / "dataset_temp_0_0.parquet")
    n_passing = int(baseline["test_passed"].sum())
    analysis = json.loads((data_dir / "phase4_8" / "steering_effect_analysis.json").read_text())
    incorrect = analysis["methods"]["sae_latent"]["incorrect"]
    assert incorrect["level"] == 0.3 and incorrect["chosen_by"] == "rule"
    assert incorrect["corruption"]["successes"] == incorrect["corruption"]["trials"] == n_passing
    versus = incorrect["versus_controls"]["corruption"]
    calibrated = [a for a, _ in load_arms(data_dir / "phase4_5") if a.role == "control"]
    for level in ("0.1", "0.3"):  # 3 of each type the sources allow, less any that cannot disturb the model that much
        assert analysis["n_controls"][level] == sum(a.level == float(level) for a in calibrated) >= 6
    assert versus["n_controls"] == analysis["n_controls"]["0.3"]
    assert analysis["methods"]["mean_difference"]["incorrect"]["level"] == PREREGISTERED  # no effective level
    assert versus["controls_at_or_above_target"] == 0 and versus["rank_p"] == pytest.approx(1 / (versus["n_controls"] + 1))
    assert versus["n_tasks"] == analysis["control_tasks"]["n_passing"]  # the passing control tasks
    minus = incorrect["minus_alpha"]  # +e_K: the sign reversed, nothing breaks
    assert minus["corruption"]["successes"] == 0
    assert analysis["alpha_0"]["flip_rate"]["successes"] == 0  # no flips from nothing
    assert analysis["primary_endpoints"] == ["correction", "preservation"]
    # the correct class cannot reach any level here, so no primary endpoint ran: each counts as p = 1, not as absent
    assert analysis["primary"] == {f"{m}/{e}": {"p": 1.0, "holm_p": 1.0, "ran": False}
                                   for m in ("sae_latent", "mean_difference") for e in ("correction", "preservation")}
    examples = (data_dir / "phase4_8" / "examples" / "sae_latent_incorrect.md").read_text()
    assert examples.count("(FLIPPED)") == n_passing


@pytest.fixture(scope="module")
def kv_steered_run(steered_run, tmp_path_factory, planted_model_dir: Path) -> Path:
    """The same upstream outputs, phase 2.8 replaced by the planted value edit (tests/planted.py), and phases 4.5 and
    4.8 run with the KV-cache method alone. Its alpha grid goes further: the planted model's final norm leaves its
    output unchanged until K changes sign, which an edit of one position among the prompt's takes a larger alpha to
    do."""
    source, args = steered_run
    data_dir = tmp_path_factory.mktemp("kv_steered")
    for phase in ("phase0", "phase0_1", "phase1", "phase2_0", "phase2_5", "phase2_6", "phase2_7", "phase3_5",
                  "phase3_6", "phase3_8", "phase3_9"):
        shutil.copytree(source / phase, data_dir / phase, ignore=shutil.ignore_patterns("checkpoint"))
    write_planted_kv_vector(data_dir, planted_model_dir)
    kv_args = [*args, "--set", "methods=kv_cache_mutant", "--set", f"calibration_alphas={KV_ALPHAS}"]
    for phase in ("4.5", "4.8"):
        assert run.main(["phase", phase, "--data-dir", str(data_dir), *kv_args]) == 0
    return data_dir


def test_the_kv_cache_method_meets_only_random_cache_edits_of_its_norms_and_its_planted_edit_beats_them(
        kv_steered_run):
    """The planted value edit pushes K down when negated: phase 4.5 chooses its incorrect class by the rule, against
    random edits with its per-layer norms at the same disruption, and phase 4.8 measures it against others."""
    data_dir = kv_steered_run
    arms = load_arms(data_dir / "phase4_5")
    planted = next(i for a, i in arms if a.role == "target" and a.kind == "correct")
    assert {a.control_set for a, _ in arms} == {"kv_cache_mutant"}  # no shared residual control is made
    own = [(a, i) for a, i in arms if a.role != "target"]
    assert own and all(a.group == "random_kv_norms" and i.kind == "kv_cache" and i.layers == planted.layers
                       for a, i in own)
    for _, control in own:
        for mine, theirs in ((control.value_deltas, planted.value_deltas), (control.key_deltas, planted.key_deltas)):
            assert torch.allclose(mine.flatten(1).norm(dim=1), theirs.flatten(1).norm(dim=1), rtol=1e-4)
        assert not torch.allclose(control.value_deltas, planted.value_deltas)
    assert float(planted.value_deltas.norm()) == pytest.approx(1.0, rel=1e-5)  # steered at unit norm
    chosen = _selected(data_dir)["methods"]["kv_cache_mutant/incorrect"]
    assert (chosen["chosen_by"], chosen["level"]) == ("rule", 0.3)
    push = next(g for g in chosen["grid"] if g["level"] == 0.3)
    assert push["versus_controls"]["n_controls"] == sum(a.role == "selection_control" and a.level == 0.3
                                                         for a, _ in own) > 0
    analysis = json.loads((data_dir / "phase4_8" / "steering_effect_analysis.json").read_text())
    n_passing = analysis["baseline"]["n_passing"]
    incorrect = analysis["methods"]["kv_cache_mutant"]["incorrect"]
    assert incorrect["corruption"]["successes"] == incorrect["corruption"]["trials"] == n_passing
    versus = incorrect["versus_controls"]["corruption"]
    assert versus["n_controls"] == analysis["n_controls"]["kv_cache_mutant@0.3"] == sum(
        a.role == "control" and a.level == 0.3 for a, _ in own) > 0
    assert versus["controls_at_or_above_target"] == 0
    assert incorrect["minus_alpha"]["corruption"]["successes"] == 0  # pushed the other way, nothing breaks


@pytest.fixture(scope="module")
def self_steered_run(steered_run, tmp_path_factory) -> Path:
    """The same upstream outputs, phase 3.9 replaced by the planted dictionary (tests/planted.py), and phases 4.5 and
    4.8 run with self-steering alone. Its alpha grid goes further: a shuffled-routing control leaves about half the
    rows pushed along +e_K, which the planted model does not show, so it takes a larger alpha to disrupt as much."""
    source, args = steered_run
    data_dir = tmp_path_factory.mktemp("self_steered")
    for phase in ("phase0", "phase0_1", "phase1", "phase2_0", "phase2_5", "phase2_6", "phase2_7", "phase2_8",
                  "phase3_5", "phase3_6", "phase3_8", "phase3_9"):
        shutil.copytree(source / phase, data_dir / phase, ignore=shutil.ignore_patterns("checkpoint"))
    write_planted_dictionary(data_dir)
    for phase in ("4.5", "4.8"):
        assert run.main(["phase", phase, "--data-dir", str(data_dir), *args, "--set", "methods=self_steering",
                         "--set", "calibration_alphas=0.5,2,8,32,128,512,2048,8192"]) == 0
    return data_dir


def test_self_steering_meets_only_its_routing_controls_and_its_planted_dictionary_beats_them(self_steered_run):
    """The planted dictionary routes every row to +e_K: its incorrect class pushes K down, chosen by the rule against
    the same dictionary with each row's routing shuffled and random dictionaries behind the same router, at the same
    disruption; phase 4.8 measures it against more of them."""
    data_dir = self_steered_run
    arms = load_arms(data_dir / "phase4_5")
    # the correct class's push along +e_K changes nothing the planted model shows, so no level reaches it
    planted = next(i for a, i in arms if a.role == "target" and a.kind == "incorrect")
    own = [(a, i) for a, i in arms if a.role != "target"]
    assert planted.name == "self_steering/negated" and {a.control_set for a, _ in arms} == {"self_steering"}
    assert {a.group for a, _ in own} == {"shuffled_routing", "random_dictionary"}
    assert all(i.kind == "self_steering" and torch.equal(i.dictionary.weight, planted.dictionary.weight)
               for _, i in own)
    shuffled = [i.dictionary.routing_seed for a, i in own if a.group == "shuffled_routing"]
    assert None not in shuffled and len(set(shuffled)) > 1
    chosen = _selected(data_dir)["methods"]["self_steering/incorrect"]
    assert (chosen["chosen_by"], chosen["level"]) == ("rule", 0.3)
    analysis = json.loads((data_dir / "phase4_8" / "steering_effect_analysis.json").read_text())
    n_passing = analysis["baseline"]["n_passing"]
    incorrect = analysis["methods"]["self_steering"]["incorrect"]
    assert incorrect["corruption"]["successes"] == incorrect["corruption"]["trials"] == n_passing
    versus = incorrect["versus_controls"]["corruption"]
    assert versus["n_controls"] == analysis["n_controls"]["self_steering@0.3"] > 0
    assert versus["controls_at_or_above_target"] == 0


@pytest.fixture(scope="module")
def steered_choice_run(tmp_path_factory, planted_choice_model_dir: Path) -> Path:
    """The same phases on multiple-choice questions (`dataset=mcq`), with the planted model's twin that answers " A"
    or " B": a question answered A passes unsteered, and steering along -e_K makes the model answer B. Phases 2.7
    (the option pairs) and 3.9 (the dictionary and its calibrated confidence) run for real; half the questions are
    in the sae split, so that 3.9 has enough task vectors (reference answer C minus the model's A)."""
    data_dir = tmp_path_factory.mktemp("steered_choice")
    args = [*planted_args(planted_choice_model_dir, write_questions(data_dir, 40), "mcq"),
            "--set", "split_fractions=0.5,0.25,0.25"]
    for phase in ("0", "0.1", "1", "3.5", "3.6"):
        assert run.main(["phase", phase, "--data-dir", str(data_dir), *args]) == 0
    write_hand_made_directions(data_dir)
    for phase in ("2.7", "3.8", "3.9", "4.5", "4.8"):
        assert run.main(["phase", phase, "--data-dir", str(data_dir), *args]) == 0
    return data_dir


def test_multiple_choice_questions_run_through_the_same_steering_phases(steered_choice_run):
    data_dir = steered_choice_run
    baseline = pd.read_parquet(data_dir / "phase3_5" / "dataset_temp_0_0.parquet")
    problems = pd.read_parquet(data_dir / "phase0_1" / "validation.parquet").set_index("task_id")
    assert set(baseline["raw_output"]) == {" A"} and set(baseline["generated_code"]) == {"A"}
    assert (baseline["test_passed"] == (problems.loc[baseline["task_id"], "correct_option"] == "A").to_numpy()).all()
    assert set(baseline["error_type"]) == {"passed", "wrong_option"}
    assert baseline["program_tokens"].eq(1).all()  # the code positions read the letter
    chosen = _selected(data_dir)["methods"]["sae_latent/incorrect"]
    assert (chosen["chosen_by"], chosen["level"]) == ("rule", 0.3)
    analysis = json.loads((data_dir / "phase4_8" / "steering_effect_analysis.json").read_text())
    incorrect = analysis["methods"]["sae_latent"]["incorrect"]
    n_passing = int(baseline["test_passed"].sum())
    assert incorrect["corruption"]["successes"] == incorrect["corruption"]["trials"] == n_passing > 0
    assert incorrect["versus_controls"]["corruption"]["controls_at_or_above_target"] == 0
    steered = pd.read_parquet(data_dir / "phase4_8" / "steered_results.parquet")
    pushed = steered[steered["arm"] == incorrect["arm"]]
    assert set(pushed["steered_code"]) == {"B"} and pushed["steered_valid_code"].all()  # an option, the wrong one
    pairs = load_pairs(data_dir / "phase2_7" / "datasets" / "contrastive_pairs.jsonl")
    assert pairs and all(p.kind == "mutant" and p.positive_output == " " + p.positive_code for p in pairs)
    calibration = json.loads((data_dir / "phase3_9" / "calibration_results.json").read_text())
    assert calibration["counts"]["programs"] == len(baseline)  # every answer has a confidence
    assert calibration["predictors"]["dictionary_confidence"]["auroc"]["value"] is not None


def test_viz_only_redraws_without_generating(steered_run, monkeypatch):
    data_dir, args = steered_run
    figure = data_dir / "phase4_8" / "steering_effect_analysis.png"
    figure.unlink()
    monkeypatch.setattr("common.generation_job.generate", _refuse)
    assert run.main(["phase", "4.8", "--viz-only", "--data-dir", str(data_dir), *args]) == 0
    assert figure.read_bytes().startswith(b"\x89PNG")


def test_a_stricter_limit_or_a_persons_choice_reuses_the_grid_generations(steered_run, monkeypatch):
    data_dir, args = steered_run
    monkeypatch.setattr("common.generation_job.generate", _refuse)
    assert run.main(["phase", "4.5", "--data-dir", str(data_dir), *args, "--set", "max_break_rate=0"]) == 0
    assert _selected(data_dir)["methods"]["sae_latent/incorrect"]["level"] == 0.3  # the incorrect class has no limit
    assert run.main(["phase", "4.5", "--data-dir", str(data_dir), *args, "--set", "chosen_level=0.001"]) == 0
    person = _selected(data_dir)["methods"]["sae_latent/incorrect"]
    assert (person["level"], person["chosen_by"]) == (0.001, "person") and "the rule proposed 0.3" in person["rationale"]
    assert run.main(["phase", "4.5", "--data-dir", str(data_dir), *args]) == 0  # back to the rule for what follows


def test_coefficient_selection_never_reads_the_validation_split(steered_run, tmp_path: Path):
    data_dir, args = steered_run
    assert "3.5" not in get_phase("4.5").upstream
    copy = tmp_path / "data"
    for phase in ("phase0", "phase0_1", "phase1", "phase2_0", "phase2_5", "phase2_6", "phase2_7", "phase2_8",
                  "phase3_6", "phase3_9"):
        shutil.copytree(data_dir / phase, copy / phase)
    (copy / "phase4_5").mkdir()
    shutil.copytree(data_dir / "phase4_5" / "checkpoint", copy / "phase4_5" / "checkpoint")
    assert run.main(["phase", "4.5", "--data-dir", str(copy), *args]) == 0  # no phase 3.5 output at all
    assert _selected(copy)["methods"] == _selected(data_dir)["methods"]


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
    assert after["methods"] == before["methods"]
