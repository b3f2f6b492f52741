"""Phase 2.5: vectorised scores against a plain loop, and a planted latent that must come out on top."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

import run
from common.activations import save_activations
from common.classification import group_bootstrap_counts
from common.config import Config
from common.directions import load_directions
from common.phases import get_phase
from common.utils import save_json, write_manifest
from common.positions import activation_path
from phase2_5_simplified.sae_analyzer import (T_STATISTIC_CAP, bootstrap_ranks, bootstrap_separation,
    permutation_max_separation, separation_scores, task_label_permutations, within_task_label_permutations)


def _slow_scores(latents: np.ndarray, passed: np.ndarray) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"f_correct": [], "f_incorrect": [], "separation": [], "t": []}
    for j in range(latents.shape[1]):
        good = [latents[i, j] for i in range(len(passed)) if passed[i]]
        bad = [latents[i, j] for i in range(len(passed)) if not passed[i]]
        f_c = sum(1 for v in good if v > 0) / len(good)
        f_i = sum(1 for v in bad if v > 0) / len(bad)
        m_c, m_i = sum(good) / len(good), sum(bad) / len(bad)
        v_c = sum((v - m_c) ** 2 for v in good) / (len(good) - 1)
        v_i = sum((v - m_i) ** 2 for v in bad) / (len(bad) - 1)
        spread = math.sqrt(v_c / len(good) + v_i / len(bad))
        out["f_correct"].append(f_c)
        out["f_incorrect"].append(f_i)
        out["separation"].append(f_c - f_i)
        out["t"].append((m_c - m_i) / spread if spread > 0 else 0.0)
    return out


def test_vectorised_scores_equal_a_plain_loop():
    rng = np.random.default_rng(3)
    latents = np.maximum(rng.normal(size=(37, 23)), 0) * rng.uniform(0, 3, size=23)
    latents[:, 5] = 0.0  # a dead latent: t must be 0, not NaN
    passed = rng.random(37) < 0.4
    latents[:, 7] = np.where(passed, 2.0, 0.0)  # constant in each class, but different: t is "infinite"
    fast = separation_scores(torch.tensor(latents, dtype=torch.float32), passed)
    slow = _slow_scores(latents.astype(np.float32).astype(np.float64), passed)
    np.testing.assert_allclose(fast.f_correct, slow["f_correct"])
    np.testing.assert_allclose(fast.f_incorrect, slow["f_incorrect"])
    np.testing.assert_allclose(fast.separation, slow["separation"])
    finite = np.arange(23) != 7
    np.testing.assert_allclose(fast.t_statistic[finite], np.asarray(slow["t"])[finite], rtol=1e-6, atol=1e-9)
    assert fast.t_statistic[5] == 0.0 and fast.t_statistic[7] == T_STATISTIC_CAP


def test_bootstrap_weights_resample_whole_tasks_and_scores_match_the_direct_formula():
    task_ids = np.array(["a", "a", "b", "c", "c", "c"])
    weights = torch.as_tensor(group_bootstrap_counts(task_ids, 50, seed=1), dtype=torch.float32)
    assert weights.shape == (50, 6)
    assert torch.equal(weights[:, 0], weights[:, 1]) and torch.equal(weights[:, 3], weights[:, 5])
    assert torch.all(weights[:, [0, 2, 3]].sum(1) == 3)  # three tasks drawn per resample
    fires = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 1]], dtype=torch.float32)
    passed = np.array([True, False, True, False, True, False])
    unit = bootstrap_separation(fires, passed, torch.ones(1, 6))
    direct = separation_scores(fires, passed)
    np.testing.assert_allclose(unit[0].numpy(), direct.separation, rtol=1e-6)


def test_without_signal_the_best_separation_is_at_chance_level():
    rng = np.random.default_rng(5)
    fires = torch.tensor(rng.random((120, 400)) < 0.3, dtype=torch.float32)
    passed = rng.random(120) < 0.4
    shuffled = task_label_permutations(passed, np.arange(120), np.zeros(120), 200, seed=0)
    null_correct, null_incorrect = permutation_max_separation(fires, shuffled, torch.ones(400, dtype=torch.bool))
    observed = separation_scores(fires, passed).separation
    assert np.percentile(null_correct, 5) < observed.max() < np.percentile(null_correct, 95)
    assert np.percentile(null_incorrect, 5) < -observed.min() < np.percentile(null_incorrect, 95)
    assert null_correct.min() > 0.1  # 400 noise latents: the best one always "separates" by 0.1 or more


def test_bootstrap_ranks_count_strictly_better_eligible_latents():
    resampled = torch.tensor([[0.5, 0.9, 0.1, 0.7], [0.8, 0.2, 0.1, 0.3]])
    eligible = torch.tensor([True, False, True, True])  # column 1 is excluded from the competition
    ranks = bootstrap_ranks(resampled, eligible, [0, 3])
    assert ranks.tolist() == [[2, 1], [1, 2]]


def _identity_sae(folder: Path, d: int) -> None:
    """A sae-lens StandardSAE whose latents are relu(x): latent j is input dimension j."""
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=d))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d) * 2.0)  # decoder rows are not unit: the directions file must normalise
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.save_model(folder)


def _planted_upstream(data_dir: Path, n_pass: int, n_fail: int, seed: int = 0) -> Config:
    """Phase 1 and phase 2.0 outputs by hand: latent 3 fires on passing rows, latent 6 on failing rows,
    latent 1 separates perfectly but fires on 50% of general code (must be filtered out)."""
    config = Config(data_dir=str(data_dir), layers=[2], bootstrap_samples=100).validate()
    d, n = 10, n_pass + n_fail
    rng = np.random.default_rng(seed)
    passed = np.array([True] * n_pass + [False] * n_fail)
    x = np.abs(rng.normal(0.5, 0.3, size=(n, d))) * (rng.random((n, d)) < 0.5)
    x[:, 3] = np.where(passed, 1.0 + rng.random(n), 0.0) * (rng.random(n) < 0.9)
    x[:, 6] = np.where(~passed, 1.0 + rng.random(n), 0.0)
    x[:, 1] = np.where(passed, 2.0, 0.0)
    x[:, 8] = 1.0  # fires on every row of both classes: a zero-discrimination control
    phase1 = data_dir / "phase1"
    (phase1 / "activations").mkdir(parents=True)
    pd.DataFrame({"task_id": [f"t{i}" for i in range(n)], "test_passed": passed, "temperature": 0.0,
                  "difficulty": 1 + np.arange(n) % 3}).to_parquet(phase1 / "dataset_sae.parquet")
    save_activations(activation_path(phase1 / "activations", "last_prompt", 2), torch.tensor(x, dtype=torch.float32),
                     {"layer": 2})
    write_manifest(config, get_phase("1"), {}, [phase1 / "dataset_sae.parquet"])
    phase2_0 = data_dir / "phase2_0"
    _identity_sae(phase2_0 / "sae_layer_2", d)
    general = torch.full((d,), 0.001)
    general[1] = 0.5
    save_file({"layer_2": general}, str(phase2_0 / "general_frequency.safetensors"))
    save_json({"2": {"kind": "disk", "path": str(phase2_0 / "sae_layer_2"), "layer": 2}},
              phase2_0 / "sae_sources.json")
    write_manifest(config, get_phase("2.0"), {}, [phase2_0 / "sae_sources.json"])
    return config


def test_planted_latents_come_out_on_top_and_stably(tmp_path: Path):
    _planted_upstream(tmp_path, n_pass=40, n_fail=60)
    assert run.main(["phase", "2.5", "--data-dir", str(tmp_path), "--set", "layers=2", "--set",
                     "bootstrap_samples=100", "--log-level", "WARNING"]) == 0
    out = tmp_path / "phase2_5" / "last_prompt"
    top = json.loads((out / "top_20_features.json").read_text())
    assert top["reliable"] and top["n_correct"] == 40 and top["n_incorrect"] == 60
    best_correct, best_incorrect = top["correct"][0], top["incorrect"][0]
    assert (best_correct["layer"], best_correct["feature_idx"]) == (2, 3)
    assert (best_incorrect["layer"], best_incorrect["feature_idx"]) == (2, 6)
    assert best_incorrect["separation_score"] == pytest.approx(1.0) and best_incorrect["f_incorrect"] == 1.0
    assert best_correct["t_statistic"] > 5 and best_correct["bootstrap"]["median_rank"] == 1
    assert best_correct["bootstrap"]["top20_fraction"] == 1.0
    assert top["chance_level"]["between_tasks"]["correct"]["p_value"] < 0.02  # 100 permutations: p = 1/101 at best
    assert "within_tasks" not in top["chance_level"]  # at the last prompt token the programs of a task share one row
    assert top["chance_level"]["between_tasks"]["correct"]["null_95th_percentile"] < 0.5 < best_correct["separation_score"]
    listed = {(r["layer"], r["feature_idx"]) for rows in (top["correct"], top["incorrect"]) for r in rows}
    assert (2, 1) not in listed  # separates perfectly, but fires on half of all code
    scores = pd.read_parquet(out / "layer_2_latent_scores.parquet")
    assert len(scores) == 10 and not bool(scores.loc[1, "eligible"]) and scores.loc[1, "separation_score"] == 1.0
    directions = {d.name: d for d in load_directions(out.parent / "latent_directions.safetensors")}
    planted = directions["last_prompt/sae_latent/correct/layer_2/latent_3"]
    assert planted.position == "last_prompt"
    assert planted.layer == 2 and torch.allclose(planted.vector, torch.eye(10)[3])
    assert planted.provenance["decoder_norm"] == pytest.approx(2.0)
    controls = {d.provenance["rank"]: d for d in directions.values() if d.source == "zero_discrimination"}
    assert controls[1].provenance["separation_score"] == 0.0
    assert 8 in {c.provenance["feature_idx"] for c in controls.values()}  # fires on every row of both classes
    assert not {c.provenance["feature_idx"] for c in controls.values()} & {1, 3, 6}
    for name in ("separation_scores_by_layer.png", "top_latent_activations.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")


def test_thin_classes_still_run_and_say_the_ranking_is_unreliable(tmp_path: Path, caplog):
    _planted_upstream(tmp_path, n_pass=6, n_fail=30)
    assert run.main(["phase", "2.5", "--data-dir", str(tmp_path), "--set", "layers=2"]) == 0
    top = json.loads((tmp_path / "phase2_5" / "last_prompt" / "top_20_features.json").read_text())
    assert not top["reliable"]
    assert any("UNRELIABLE" in w and "6 passing" in w for w in top["warnings"])
    assert any("UNRELIABLE" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def test_an_empty_class_gives_empty_lists_not_a_crash(tmp_path: Path):
    _planted_upstream(tmp_path, n_pass=0, n_fail=12)
    assert run.main(["phase", "2.5", "--data-dir", str(tmp_path), "--set", "layers=2"]) == 0
    top = json.loads((tmp_path / "phase2_5" / "last_prompt" / "top_20_features.json").read_text())
    assert top["correct"] == [] and top["incorrect"] == [] and not top["reliable"]


def test_permuted_labels_move_with_whole_tasks_and_stay_within_their_stratum():
    tasks = np.array(["a", "a", "b", "b", "c", "c", "d", "d", "e"])
    strata = np.array([1, 1, 1, 1, 2, 2, 2, 2, 1])
    passed = np.array([True, False, False, False, True, True, False, True, True])
    shuffled = task_label_permutations(passed, tasks, strata, 300, seed=0).numpy().astype(bool)
    for row in shuffled:
        assert sorted(map(tuple, row[:4].reshape(2, 2))) == [(False, False), (True, False)]  # a and b trade blocks
        assert sorted(map(tuple, row[4:8].reshape(2, 2))) == [(False, True), (True, True)]  # c and d, stratum 2
        assert row[8]  # e: alone with one row in its stratum
    assert len({tuple(row) for row in shuffled}) == 4  # 2 x 2 arrangements, all of them reached


def test_within_task_shuffles_keep_each_tasks_label_counts():
    tasks = np.array(["a", "a", "a", "b", "b", "c"])
    passed = np.array([True, False, False, True, True, False])
    shuffled = within_task_label_permutations(passed, tasks, 200, seed=0).numpy().astype(bool)
    assert (shuffled[:, :3].sum(1) == 1).all() and shuffled[:, 3:5].all() and not shuffled[:, 5].any()
    assert len({tuple(row[:3]) for row in shuffled}) == 3  # the passing row of task a moves
