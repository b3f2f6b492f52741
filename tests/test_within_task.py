"""Phase 3.8 on planted data: a code-position signal that varies within tasks beats the baselines; one that only
tracks the prompt's length does not. Also the statistics it rests on, against hand values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import run
from common.activations import save_activations
from common.classification import (auroc, auroc_with_interval, group_bootstrap_counts, incremental_auroc,
    weighted_aurocs, within_task_auroc)
from common.config import Config
from common.directions import save_directions
from common.errors import PipelineError
from common.gates import Gate, load_gates
from common.phases import get_phase
from common.positions import activation_path
from common.utils import save_json, write_manifest

D_MODEL = 8
SAMPLES = 4


def _planted_split(n_tasks: int, prefix: str, temperatures: list[float], rng: np.random.Generator
                   ) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Tasks whose pass chance falls with the prompt's length; within a task each program passes at random, and the
    model's log-probability of it knows a little of that. code_mean dimension 0 carries the program's own fate;
    code_last dimension 0 only the prompt's length; code_last_k dimension 0 only the log-probability."""
    prompt_tokens = rng.integers(50, 300, n_tasks)
    pass_chance = 1 / (1 + np.exp((prompt_tokens - 175) / 40))
    rows = [{"task_id": f"{prefix}{t}", "sample_idx": s, "temperature": temperatures[s % len(temperatures)],
             "test_passed": bool(rng.random() < pass_chance[t]), "prompt": f"Write the function for case {t % 7}.",
             "prompt_tokens": int(prompt_tokens[t]), "difficulty": int(rng.integers(1, 5)),
             "cyclomatic_complexity": int(rng.integers(1, 6)), "family": f"f{rng.integers(0, 6)}",
             "program_tokens": int(rng.integers(20, 120)), "program_mean_margin": float(rng.normal(2.0, 0.3)),
             "program_error": None, "stop_reason": "code_end", "generated_code": "def f():\n    return 1\n"}
            for t in range(n_tasks) for s in range(SAMPLES)]
    table = pd.DataFrame(rows)
    passed = table["test_passed"].to_numpy(dtype=float)
    table["program_mean_logprob"] = -0.5 + 0.1 * passed + rng.normal(0, 0.1, size=len(table))
    length = (table["prompt_tokens"].to_numpy() - 175) / 50
    noise = lambda: rng.normal(size=(len(table), D_MODEL))  # noqa: E731
    activations = {"last_prompt": noise() * 0.1, "code_mean": noise(), "code_last": noise(), "code_last_k": noise()}
    activations["last_prompt"][:, 0] = length
    activations["code_mean"][:, 0] = 2.5 * passed + rng.normal(size=len(table))
    activations["code_last"][:, 0] = length + rng.normal(0, 0.3, size=len(table))
    activations["code_last_k"][:, 0] = 10 * table["program_mean_logprob"].to_numpy() + rng.normal(0, 0.1, len(table))
    return table, activations


def _write(folder: Path, table_name: str, activations_folder: str, table: pd.DataFrame,
           activations: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    table.to_parquet(folder / table_name)
    for position, values in activations.items():
        save_activations(activation_path(folder / activations_folder, position, 2),
                         torch.tensor(values, dtype=torch.float32), {"layer": 2})


def _planted_pipeline(data_dir: Path, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    config = Config(data_dir=str(data_dir), layers=[2]).validate()
    _write(data_dir / "phase1", "dataset_sae.parquet", "activations", *_planted_split(80, "s", [0.0, 0.8], rng))
    write_manifest(config, get_phase("1"), {}, [data_dir / "phase1" / "dataset_sae.parquet"])
    save_directions(data_dir / "phase2_7" / "directions.safetensors", [])  # no contrastive pairs either
    for phase in ("2.0", "2.5", "2.7"):  # no SAE: the score families come from phase 2.6's directions
        write_manifest(config, get_phase(phase), {}, [])
    assert run.main(["phase", "2.6", "--data-dir", str(data_dir), "--set", "layers=2", "--log-level", "ERROR"]) == 0
    _write(data_dir / "phase3_6", "dataset_hyperparams_temp_0_0.parquet", "activations",
           *_planted_split(60, "h", [0.0], rng))
    write_manifest(config, get_phase("3.6"), {}, [])
    validation_table, validation_activations = _planted_split(80, "v", [0.0, 0.6], rng)
    by_temperature = {}
    for temperature, tag in ((0.0, "0_0"), (0.6, "0_6")):
        picked = (validation_table["temperature"] == temperature).to_numpy()
        _write(data_dir / "phase3_5", f"dataset_temp_{tag}.parquet", f"activations_temp_{tag}",
               validation_table[picked].reset_index(drop=True), {p: a[picked] for p, a in validation_activations.items()})
        by_temperature[f"{temperature:g}"] = {"table": f"dataset_temp_{tag}.parquet",
                                             "activations": f"activations_temp_{tag}"}
    save_json({"by_temperature": by_temperature}, data_dir / "phase3_5" / "phase_3_5_summary.json")
    write_manifest(config, get_phase("3.5"), {}, [])
    assert run.main(["phase", "3.8", "--data-dir", str(data_dir), "--set", "layers=2", "--log-level", "ERROR"]) == 0
    return json.loads((data_dir / "phase3_8" / "evaluation_results.json").read_text())


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("planted_3_8")
    _planted_pipeline(data_dir)
    return data_dir


@pytest.fixture(scope="module")
def planted_results(planted_dir: Path) -> dict:
    return json.loads((planted_dir / "phase3_8" / "evaluation_results.json").read_text())


def test_a_signal_in_the_code_that_varies_within_tasks_beats_every_baseline(planted_results: dict):
    assert planted_results["best_baseline"] in ("prompt_tokens", "confidence_and_length", "program_mean_logprob")
    signal = planted_results["positions"]["code_mean"]["mean_difference"]
    assert signal["within_task"]["auroc"] > 0.8 and signal["within_task"]["low"] > 0.7
    assert signal["within_task_over_logprob"]["low"] > 0.05
    assert signal["over_best_baseline"]["low"] > 0.05
    assert signal.get("over_confidence_and_length", signal["over_best_baseline"])["low"] > 0.05
    assert signal["validation"]["auroc"] > max(b["validation"]["auroc"] for b in planted_results["baselines"].values()
                                               if "validation" in b)


def test_scores_that_only_track_prompt_length_or_the_models_confidence_do_not_beat_them(planted_results: dict):
    length_only = planted_results["positions"]["code_last"]["mean_difference"]
    assert length_only["validation"]["auroc"] > 0.65  # it predicts, as the length does
    assert length_only["over_best_baseline"]["low"] < 0 < length_only["over_best_baseline"]["high"] + 0.02
    assert length_only["within_task"]["low"] < 0.5 < length_only["within_task"]["high"]
    confidence_only = planted_results["positions"]["code_last_k"]["mean_difference"]
    assert confidence_only["within_task"]["low"] > 0.55  # the log-probability does tell programs apart a little
    difference = confidence_only["within_task_over_logprob"]
    assert difference["low"] < 0 and difference["difference"] < 0.02  # but the score adds nothing to it
    over = confidence_only.get("over_confidence_and_length", confidence_only["over_best_baseline"])
    assert over["low"] < 0.02
    prompt = planted_results["positions"]["last_prompt"]["mean_difference"]
    assert prompt["within_task"]["auroc"] is None and "shares" in prompt["within_task"]["reason"]
    assert planted_results["baselines"]["prompt_tokens"]["within_task"]["auroc"] is None


def test_the_table_names_every_score_and_baseline_and_the_counts(planted_results: dict, tmp_path_factory):
    counts = planted_results["counts"]
    assert counts["validation"]["rows"] == 80 * SAMPLES and counts["validation"]["tasks"] == 80
    assert 0 < counts["validation"]["tasks_with_both_classes"] < 80
    scores = {(row["position"], row["score"].split(":")[0]) for row in planted_results["table"]}
    assert {("code_mean", "mean_difference"), ("code_mean", "paired_pca"), ("-", "prompt_words")} <= scores
    assert ("last_prompt", "paired_pca") not in scores  # shared by every program of a task: refused in 2.6
    words = planted_results["baselines"]["prompt_words"]["validation"]
    assert words["low"] <= 0.5 <= words["high"]  # the prompts' words carry nothing here


def test_the_selective_steering_gate_is_the_best_score_on_hyperparams_and_flags_failing_programs(
        planted_results: dict, planted_dir: Path):
    with pytest.raises(PipelineError, match="flags some task twice"):  # two greedy programs per task here
        load_gates(planted_dir / "phase3_8")
    gates = [Gate(**g) for g in json.loads((planted_dir / "phase3_8" / "gates.json").read_text())["gates"]]
    flags = pd.read_parquet(planted_dir / "phase3_8" / "gate_flags.parquet").set_index("task_id")
    detector = next(g for g in gates if g.name == "detector")
    best = max(r["hyperparams_auroc"] for families in planted_results["positions"].values() for r in families.values())
    assert detector.hyperparams_auroc == pytest.approx(best) and best > 0.85
    assert detector.position == "code_mean" and detector.needs_program  # the planted signal
    assert detector.validation_greedy_auroc["auroc"] > 0.85
    greedy = pd.read_parquet(planted_dir / "phase3_5" / "dataset_temp_0_0.parquet")
    assert list(flags.index) == list(greedy["task_id"])  # the validation greedy programs 4.8 steers, in order
    failing = ~greedy["test_passed"].to_numpy(dtype=bool)
    flagged = flags["flag:detector"].to_numpy(dtype=bool)
    assert flagged[failing].mean() > 0.8 and flagged[~failing].mean() < 0.3
    assert [g.name for g in gates] == ["detector", "baseline"] and gates[1].score == planted_results["best_baseline"]


def test_within_task_auroc_counts_only_pairs_of_one_task():
    scores = np.array([0.9, 0.1, 0.5, 0.5, 0.8, 0.2, 0.3])
    passed = np.array([True, False, True, False, False, True, True])
    tasks = np.array(["a", "a", "b", "b", "c", "c", "d"])  # d has one class: no pair
    # a: 1 win of 1; b: a tie, 0.5 of 1; c: 0 of 1 -> 1.5 / 3
    result = within_task_auroc(scores, passed, tasks, n_resamples=200, seed=0)
    assert result["auroc"] == pytest.approx(0.5) and result["n_pairs"] == 3 and result["n_tasks_with_both_classes"] == 3
    assert auroc(scores, passed) != result["auroc"]


def test_resamples_that_lose_a_class_are_counted():
    scores, passed = np.array([0.1, 0.9, 0.4, 0.6]), np.array([False, True, False, True])
    result = auroc_with_interval(scores, passed, n_resamples=200, seed=1, groups=np.array(["a", "a", "b", "c"]))
    assert result["resamples_lost_class"] > 0 and result["n_resamples"] == 200


def test_incremental_auroc_is_zero_for_a_copy_of_the_baseline_and_positive_for_new_information():
    rng = np.random.default_rng(0)
    n = 400
    base, extra = rng.normal(size=n), rng.normal(size=n)
    passed = (base + extra + rng.normal(0, 0.5, size=n)) > 0
    groups = np.arange(n)
    half = slice(0, n // 2), slice(n // 2, n)
    same = incremental_auroc(base[half[0]], base[half[0]] * 2, passed[half[0]], base[half[1]], base[half[1]] * 2,
                             passed[half[1]], groups[half[1]], n_resamples=200)
    assert same["difference"] == pytest.approx(0.0, abs=1e-9)
    new = incremental_auroc(base[half[0]], extra[half[0]], passed[half[0]], base[half[1]], extra[half[1]],
                            passed[half[1]], groups[half[1]], n_resamples=200)
    assert new["low"] > 0.05


def test_vectorised_bootstrap_aurocs_equal_the_auroc_of_each_resample_drawn_out():
    rng = np.random.default_rng(2)
    scores = np.round(rng.normal(size=60), 1)  # ties on purpose
    positive = rng.random(60) < 0.4
    groups = np.repeat(np.arange(20), 3)
    counts = group_bootstrap_counts(groups, 25, seed=4)
    fast = weighted_aurocs(scores, positive, counts)
    for row, weights in enumerate(counts):
        drawn = np.repeat(np.arange(60), weights.astype(int))
        assert fast[row] == pytest.approx(auroc(scores[drawn], positive[drawn]))
