"""Phase 3.8 statistics, and phase 3.8 on planted data: the signal is found, noise is not, validation is never read to choose."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import run
from common.activations import save_activations
from common.classification import auroc, auroc_with_interval, best_f1_threshold, binary_metrics
from common.config import Config
from common.directions import save_directions
from common.phases import get_phase
from common.positions import activation_path
from common.utils import save_json, write_manifest
from tests.test_sae_analysis import _planted_upstream


def _pairwise_auroc(scores, positive) -> float:
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_equals_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=40).astype(float)  # many ties
    positive = rng.random(40) < 0.4
    assert auroc(scores, positive) == pytest.approx(_pairwise_auroc(scores, positive))
    assert np.isnan(auroc(scores, np.zeros(40, bool)))


def test_interval_is_high_for_a_signal_and_covers_half_for_shuffled_labels():
    rng = np.random.default_rng(1)
    positive = rng.random(200) < 0.35
    planted = positive * 1.5 + rng.normal(size=200)
    signal = auroc_with_interval(planted, positive, 500, seed=0)
    assert signal["auroc"] > 0.8 and signal["low"] > 0.7
    shuffled = auroc_with_interval(planted, rng.permutation(positive), 500, seed=0)
    assert shuffled["low"] < 0.5 < shuffled["high"]


def test_samples_of_one_task_are_resampled_together():
    """Three identical copies of each task's row carry no more information than one row: resampling
    tasks gives about the interval of the single rows, resampling rows a falsely narrow one."""
    rng = np.random.default_rng(2)
    positive = rng.random(150) < 0.4
    scores = positive * 0.6 + rng.normal(size=150)
    single = auroc_with_interval(scores, positive, 1000, seed=0)
    tripled = np.repeat(scores, 3), np.repeat(positive, 3)
    by_task = auroc_with_interval(*tripled, 1000, seed=0, groups=np.repeat(np.arange(150), 3))
    by_row = auroc_with_interval(*tripled, 1000, seed=0)
    width = single["high"] - single["low"]
    assert by_task["auroc"] == pytest.approx(single["auroc"])
    assert by_task["resampled"] == "150 groups" and by_row["resampled"] == "rows within each class"
    assert 0.8 * width < by_task["high"] - by_task["low"] < 1.25 * width
    assert by_row["high"] - by_row["low"] < 0.7 * width
    one_per_group = auroc_with_interval(scores, positive, 1000, seed=0, groups=np.arange(150))
    assert (one_per_group["low"], one_per_group["high"]) == (single["low"], single["high"])


def test_best_f1_threshold_and_metrics_with_the_trivial_baselines():
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    positive = np.array([False, False, True, False, True, True])
    assert best_f1_threshold(scores, positive) == 0.3  # predicts 4 positives, 3 right: F1 6/7
    metrics = binary_metrics(scores, positive, 0.3)
    assert (metrics["tp"], metrics["fp"], metrics["fn"], metrics["tn"]) == (3, 1, 0, 2)
    assert metrics["f1"] == pytest.approx(6 / 7)
    assert metrics["trivial"]["always_positive"]["f1"] == pytest.approx(2 * 3 / 9)
    assert metrics["precision"]["successes"] == 3 and metrics["precision"]["trials"] == 4


def _generation_outputs(folder: Path, table: str, activations_dir: str, passed: np.ndarray, seed: int,
                        recorded_passed: np.ndarray | None = None, temperature: float = 0.0) -> None:
    """A phase 3.5 / 3.6 style table with activations in which latent 3 fires on passing rows;
    `recorded_passed` (default: `passed`) is what the table says, to break the link on purpose."""
    rng = np.random.default_rng(seed)
    n = len(passed)
    x = np.abs(rng.normal(0.5, 0.3, size=(n, 10))) * (rng.random((n, 10)) < 0.5)
    x[:, 3] = np.where(passed, 1.0 + rng.random(n), 0.0) * (rng.random(n) < 0.85)
    x[:, 6] = np.where(~passed, 1.0 + rng.random(n), 0.0) * (rng.random(n) < 0.85)
    recorded = passed if recorded_passed is None else recorded_passed
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"task_id": [f"v{i}" for i in range(n)], "test_passed": recorded,
                  "temperature": temperature}).to_parquet(folder / table)
    save_activations(activation_path(folder / activations_dir, "last_prompt", 2), torch.tensor(x, dtype=torch.float32),
                     {"layer": 2})


def _validation_upstream(data_dir: Path, recorded_validation_passed: np.ndarray | None = None) -> None:
    validation_passed = np.arange(60) % 2 == 0
    _planted_upstream(data_dir, n_pass=40, n_fail=60)
    args = ["--data-dir", str(data_dir), "--set", "layers=2", "--set", "bootstrap_samples=20", "--log-level", "ERROR"]
    assert run.main(["phase", "2.5", *args]) == 0 and run.main(["phase", "2.6", *args]) == 0
    config = Config(data_dir=str(data_dir), layers=[2], bootstrap_samples=20).validate()
    save_directions(data_dir / "phase2_7" / "directions.safetensors", [])  # no contrastive directions here
    write_manifest(config, get_phase("2.7"), {}, [data_dir / "phase2_7" / "directions.safetensors"])
    tuning = data_dir / "phase3_6"
    _generation_outputs(tuning, "dataset_hyperparams_temp_0_0.parquet", "activations",
                        np.arange(30) % 3 == 0, seed=7)
    write_manifest(config, get_phase("3.6"), {}, [tuning / "dataset_hyperparams_temp_0_0.parquet"])
    validation = data_dir / "phase3_5"
    for tag, offset in (("0_0", 0), ("0_6", 1)):
        _generation_outputs(validation, f"dataset_temp_{tag}.parquet", f"activations_temp_{tag}", validation_passed,
                            seed=11 + offset, recorded_passed=recorded_validation_passed, temperature=0.6 * offset)
    save_json({"by_temperature": {"0": {"table": "dataset_temp_0_0.parquet", "activations": "activations_temp_0_0"},
                                  "0.6": {"table": "dataset_temp_0_6.parquet", "activations": "activations_temp_0_6"}}},
              validation / "phase_3_5_summary.json")
    write_manifest(config, get_phase("3.5"), {}, [validation / "phase_3_5_summary.json"])


def _run_3_8(data_dir: Path) -> dict:
    assert run.main(["phase", "3.8", "--data-dir", str(data_dir), "--set", "layers=2", "--set",
                     "bootstrap_samples=20", "--log-level", "ERROR"]) == 0
    return json.loads((data_dir / "phase3_8" / "evaluation_results.json").read_text())["positions"]["last_prompt"]


def test_planted_latent_predicts_held_out_rows(tmp_path: Path):
    _validation_upstream(tmp_path)
    results = _run_3_8(tmp_path)
    correct = results["sae_correct_latent"]
    assert correct["chosen"] == "layer_2/latent_3" and correct["predicts"] == "pass"
    assert correct["validation"]["auroc"] > 0.85 and correct["validation"]["low"] > 0.75
    assert results["sae_incorrect_latent"]["chosen"] == "layer_2/latent_6"
    assert set(correct["validation_auroc_by_temperature"]) == {"0", "0.6"}
    assert correct["validation_at_threshold"]["f1"] > correct["validation_at_threshold"]["trivial"]["always_positive"]["f1"]
    assert results["mean_difference"]["chosen"] == "last_prompt/mean_difference/layer_2"
    assert correct["within_task"]["auroc"] is None  # read before any code exists
    for name in ("roc_curves.png", "auroc_forest.png"):
        assert (tmp_path / "phase3_8" / name).read_bytes().startswith(b"\x89PNG")


def test_choices_never_read_validation_labels_and_noise_covers_half(tmp_path: Path):
    _validation_upstream(tmp_path / "a")
    shuffled_labels = np.random.default_rng(3).permutation(np.arange(60) % 2 == 0)
    _validation_upstream(tmp_path / "b", shuffled_labels)
    a, b = _run_3_8(tmp_path / "a"), _run_3_8(tmp_path / "b")
    for family in a:
        assert a[family]["chosen"] == b[family]["chosen"]
        assert a[family]["hyperparams_auroc_by_candidate"] == b[family]["hyperparams_auroc_by_candidate"]
        assert a[family]["validation_at_threshold"]["threshold"] == b[family]["validation_at_threshold"]["threshold"]
    gates = [[{k: v for k, v in gate.items() if k != "validation_greedy_auroc"}  # reported, not chosen
              for gate in json.loads((tmp_path / run / "phase3_8" / "gates.json").read_text())["gates"]]
             for run in ("a", "b")]
    assert gates[0] == gates[1] and gates[0][0]["name"] == "detector"
    # b's validation labels no longer match its activations: the same latent is at chance there
    assert b["sae_correct_latent"]["validation"]["low"] < 0.5 < b["sae_correct_latent"]["validation"]["high"]


def test_temperature_items_are_numbered_uniquely_and_tagged_for_file_names():
    from common.generation_job import make_temperature_items
    from phase3_5.runner import temperature_tag

    problems = [{"task_id": "a"}, {"task_id": "b"}]
    items = make_temperature_items(problems, [0.3, 1.2], 2)
    assert [(i.problem["task_id"], i.sample_idx, i.temperature) for i in items] == [
        ("a", 0, 0.0), ("b", 0, 0.0), ("a", 1, 0.3), ("a", 2, 0.3), ("b", 1, 0.3), ("b", 2, 0.3),
        ("a", 3, 1.2), ("a", 4, 1.2), ("b", 3, 1.2), ("b", 4, 1.2)]
    assert len({i.key for i in items}) == len(items)
    assert [temperature_tag(t) for t in (0.0, 0.3, 1.2, 1.25, 2.0)] == ["0_0", "0_3", "1_2", "1_25", "2_0"]
