import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import run
from common.errors import PipelineError
from phase0_1.runner import assign_families, assign_splits, problem_families


def test_sizes_follow_the_fractions_overall_and_within_each_complexity_level():
    rng = np.random.default_rng(0)
    complexity = rng.integers(1, 8, size=500)
    assignment = assign_splits(complexity, [0.5, 0.1, 0.4], seed=42)
    counts = Counter(assignment.tolist())
    assert (counts[0], counts[1], counts[2]) == (250, 50, 200)
    for level in np.unique(complexity):
        in_level = assignment[complexity == level]
        shares = np.bincount(in_level, minlength=3) / len(in_level)
        assert np.all(np.abs(shares - [0.5, 0.1, 0.4]) <= 2 / len(in_level) + 0.02)


def test_deterministic_for_a_seed_and_different_across_seeds():
    complexity = np.arange(200) % 6 + 1
    assert np.array_equal(assign_splits(complexity, [0.5, 0.1, 0.4], 42), assign_splits(complexity, [0.5, 0.1, 0.4], 42))
    assert not np.array_equal(assign_splits(complexity, [0.5, 0.1, 0.4], 42),
                              assign_splits(complexity, [0.5, 0.1, 0.4], 43))


def test_high_complexities_share_one_stratum():
    complexity = np.array([11, 12, 13, 14, 15, 16, 17, 18, 19, 20])
    counts = np.bincount(assign_splits(complexity, [0.5, 0.1, 0.4], 1), minlength=3)
    assert counts.tolist() == [5, 1, 4]


def test_family_split_keeps_every_family_in_one_split_near_the_fractions():
    families = np.repeat([f"f{i}" for i in range(26)], np.random.default_rng(0).integers(5, 30, size=26))
    assignment = assign_families(families, [0.5, 0.1, 0.4], seed=42)
    for family in np.unique(families):
        assert len(set(assignment[families == family])) == 1, family
    shares = np.bincount(assignment, minlength=3) / len(families)
    assert np.all(np.abs(shares - [0.5, 0.1, 0.4]) < 0.06)


def test_family_split_refuses_too_few_families_and_blocks_stand_in_for_missing_ones():
    with pytest.raises(PipelineError, match="at least 3 families"):
        assign_families(np.array(["a", "a", "b"]), [0.5, 0.1, 0.4], seed=0)
    blocks = problem_families(pd.DataFrame({"task_id": range(25), "family": [""] * 25}))
    assert list(blocks[:11]) == ["block_0"] * 10 + ["block_1"] and blocks[-1] == "block_2"


def test_pipeline_with_whole_families_held_out_runs_through_phase_3_8(tmp_path: Path, tiny_model_dir: Path,
                                                                      capsys: pytest.CaptureFixture):
    args = ["--data-dir", str(tmp_path), "--set", "dataset=synthetic", "--set", "n_tasks=60", "--set",
            "split_by=family", "--set", f"model_name={tiny_model_dir}", "--set", "layers=1", "--set",
            "max_new_tokens=8", "--set", "samples_per_task=1", "--set", "temperatures=1.0", "--set",
            "samples_per_temperature=1", "--set", "sae_width=64", "--set", "sae_k=4", "--set", "sae_epochs=1",
            "--set", "sae_train_tokens=2000", "--set", "sae_eval_tokens=400", "--set", "sae_delta_ce_tokens=200",
            "--set", "sae_context_tokens=32", "--set", "sae_batch_tokens=256", "--set", "bootstrap_samples=10",
            "--set", "adapter_max_steps=2", "--set", "adapter_max_pairs=12", "--set", "adapter_held_out_pairs=4",
            "--log-level", "ERROR"]
    assert run.main(["pipeline", *args]) == 2  # the random model passes nothing: 4.5 has nothing to steer
    assert "phase 4.5 has nothing to steer" in capsys.readouterr().err
    splits = {name: set(pd.read_parquet(tmp_path / "phase0_1" / f"{name}.parquet")["family"])
              for name in ("sae", "hyperparams", "validation")}
    assert all(splits.values()) and not (splits["sae"] & splits["hyperparams"] or splits["sae"] & splits["validation"]
                                         or splits["hyperparams"] & splits["validation"])
    assert (tmp_path / "phase3_8" / "phase_output.json").is_file()
    metadata = json.loads((tmp_path / "phase0_1" / "split_metadata.json").read_text())
    assert metadata["split_by"] == "family"
