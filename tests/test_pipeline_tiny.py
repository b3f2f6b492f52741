"""Phases 0 -> 0.1 -> 1 end to end on a tiny random model and our own task file, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import run
from common.activations import load_activations
from common import generation_job
from common.directions import load_directions
from common.positions import CODE_POSITIONS, POSITIONS
from phase2_7 import runner as phase2_7_runner
from common.contrastive_pairs import load_pairs
from common.kv_vectors import load_vector

TIMING_COLUMNS = ["generation_time", "exec_time"]  # wall-clock measurements differ from run to run


@pytest.fixture
def tiny_args(tiny_model_dir: Path, mbpp_full_file: Path) -> list[str]:
    return ["--set", "dataset=mbpp", "--set", f"data_file={mbpp_full_file}", "--set", f"model_name={tiny_model_dir}",
            "--set", "layers=1,3", "--set", "max_new_tokens=12", "--set", "batch_size=2",
            "--set", "samples_per_task=1", "--set", "temperature=1.0", "--log-level", "WARNING",
            "--set", "contrastive_mutants_per_task=8",  # enough minimal pairs on 5 tasks for phase 2.7's directions
            "--set", "style_max_tokens=4", *TINY_SAE]


TINY_SAE = [arg for pair in (("--set", f"{k}={v}") for k, v in {
    "sae_width": 128, "sae_k": 8, "sae_epochs": 2, "sae_train_tokens": 3000, "sae_eval_tokens": 600,
    "sae_delta_ce_tokens": 300, "sae_context_tokens": 32, "sae_batch_tokens": 256, "bootstrap_samples": 20,
    "temperatures": 1.0, "samples_per_temperature": 1, "adapter_max_steps": 2, "adapter_max_pairs": 12,
    "adapter_held_out_pairs": 4, "adapter_rank": 4}.items())
            for arg in pair]


def _run_upstream(data_dir: Path, args: list[str]) -> None:
    for phase in ("0", "0.1"):
        assert run.main(["phase", phase, "--data-dir", str(data_dir), *args]) == 0


def _outputs(data_dir: Path) -> tuple[pd.DataFrame, dict[tuple[str, int], bytes]]:
    folder = data_dir / "phase1"
    table = pd.read_parquet(folder / "dataset_sae.parquet")
    return table, {(position, layer): (folder / "activations" / position / f"layer_{layer}.safetensors").read_bytes()
                   for position in POSITIONS for layer in (1, 3)}


def _pipeline_until_steering(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    """The random tiny model fails every task, so phase 2.5 finds no latent and the pipeline stops at 4.5
    with one line saying why."""
    assert run.main(["pipeline", *argv]) == 2
    assert "error: phase 4.5 has nothing to steer" in capsys.readouterr().err


def test_phases_0_to_1_write_aligned_outputs(tmp_path: Path, tiny_args: list[str], capsys: pytest.CaptureFixture,
                                             monkeypatch: pytest.MonkeyPatch):
    _pipeline_until_steering(["--data-dir", str(tmp_path), *tiny_args], capsys)
    sae = pd.read_parquet(tmp_path / "phase0_1" / "sae.parquet")
    table, _ = _outputs(tmp_path)
    assert len(table) == 2 * len(sae)  # one greedy and one sampled row per task
    assert list(table["task_id"]) == [t for t in sae["task_id"] for _ in range(2)]
    assert list(table["sample_idx"]) == [0, 1] * len(sae)
    assert set(table["temperature"]) == {0.0, 1.0}
    for column in ["task_id", "sample_idx", "temperature", "prompt", "generated_code", "raw_output", "test_passed",
                   "error_type", "error_message", "n_new_tokens", "generation_time"]:
        assert column in table.columns
    for position in POSITIONS:
        for layer in (1, 3):
            tensor, info = load_activations(tmp_path / "phase1" / "activations" / position / f"layer_{layer}.safetensors")
            assert tuple(tensor.shape) == (len(table), 64)
            assert info["layer"] == layer and info["position"] == position
            without_program = table["program_error"].notna().to_numpy()
            assert tensor[torch.tensor(without_program)].isnan().all() == (position != "last_prompt" and
                                                                           without_program.any())
            assert not tensor[torch.tensor(~without_program)].isnan().any()
    assert (table["program_tokens"] > 0).equals(table["program_error"].isna())
    assert table.loc[table["program_tokens"] > 0, "program_mean_logprob"].lt(0).all()
    summary = json.loads((tmp_path / "phase1" / "phase_1_summary.json").read_text())
    assert summary["n_samples"] == len(table)
    assert summary["n_passed"] + summary["n_failed"] == len(table)
    assert summary["prompt_style"] == "chat"
    assert any("unreliable" in w for w in summary["warnings"])  # a random model passes nothing
    manifest = json.loads((tmp_path / "phase1" / "phase_output.json").read_text())
    assert manifest["phase"] == "1" and "0.1" in manifest["inputs"] and manifest["prompt_style"] == "chat"
    assert "dataset_sae.parquet" in manifest["outputs"]
    assert not (tmp_path / "phase1" / "checkpoint").exists()
    assert (tmp_path / "phase1" / "pass_rate_by_complexity.png").read_bytes().startswith(b"\x89PNG")

    sae_summary = json.loads((tmp_path / "phase2_0" / "phase_2_0_summary.json").read_text())
    for layer in ("1", "3"):
        quality = sae_summary["layers"][layer]
        assert quality["d_sae"] == 128 and quality["mean_l0"] <= 8 and 0 <= quality["dead_fraction"] <= 1
        assert {"fvu", "relative_error", "delta_ce_nats", "phase1_by_position", "training"} <= set(quality)
        assert set(quality["phase1_by_position"]) == set(POSITIONS)
        assert (tmp_path / "phase2_0" / f"sae_layer_{layer}" / "cfg.json").is_file()
    assert not (tmp_path / "phase2_0" / "checkpoint").exists()
    top = json.loads((tmp_path / "phase2_5" / "last_prompt" / "top_20_features.json").read_text())
    assert not top["reliable"] and top["correct"] == []  # the random model passes nothing: loud, not a crash
    validation = pd.read_parquet(tmp_path / "phase3_5" / "dataset_temp_1_0.parquet")
    greedy = pd.read_parquet(tmp_path / "phase3_5" / "dataset_temp_0_0.parquet")
    assert set(validation["temperature"]) == {1.0} and set(greedy["temperature"]) == {0.0}
    assert list(validation["task_id"]) == list(greedy["task_id"])  # one sample per temperature
    tensor, _ = load_activations(tmp_path / "phase3_5" / "activations_temp_1_0" / "code_mean" / "layer_3.safetensors")
    assert tuple(tensor.shape) == (len(validation), 64)
    tuning = pd.read_parquet(tmp_path / "phase3_6" / "dataset_hyperparams_temp_0_0.parquet")
    assert {"task_id", "text", "test_list", "prompt", "generated_code", "test_passed",
            "cyclomatic_complexity"} <= set(tuning.columns)
    pairs = load_pairs(tmp_path / "phase2_7" / "datasets" / "contrastive_pairs.jsonl")
    assert pairs and "own" not in {p.kind for p in pairs}  # the random model passes nothing: no own pairs
    assert {p.task_id for p in pairs} <= set(sae["task_id"].astype(str))
    directions = load_directions(tmp_path / "phase2_7" / "directions.safetensors")
    assert {(d.position, d.layer, d.source) for d in directions} == {
        (position, layer, f"contrastive_mutant_{name}") for position in CODE_POSITIONS for layer in (1, 3)
        for name in ("mean_difference", "pca", "probe")}
    kv_summary = json.loads((tmp_path / "phase2_8" / "phase_2_8_summary.json").read_text())
    assert kv_summary["layers"] == [1, 2] and list(kv_summary["vectors"]) == ["kv_mutant"]  # seed 002's band, scaled
    assert "own" in kv_summary["skipped"]  # no own pairs: said, not hidden
    edit = load_vector(tmp_path / "phase2_8", "kv_mutant")
    assert edit.kind == "kv_cache" and edit.layers == (1, 2) and edit.key_weight == 0.0
    assert tuple(edit.value_deltas.shape) == (2, 2, 16) and edit.value_deltas.norm() > 0  # 2 kv heads of 16 dims
    fitted = (tmp_path / "phase2_8" / "datasets" / "kv_mutant_pairs.jsonl").read_text().splitlines()
    assert len(fitted) == kv_summary["vectors"]["kv_mutant"]["n_pairs"] == sum(p.kind == "mutant" for p in pairs)
    for name in ("kv_mutant.json", "kv_mutant_template.json"):
        assert json.loads((tmp_path / "phase2_8" / "steering_vectors" / name).read_text())["name"] == "kv_mutant"
    monkeypatch.setattr(phase2_7_runner, "MIN_PAIRS", 10 ** 6)  # too few pairs: a warning, no direction, no stop
    assert run.main(["phase", "2.7", "--data-dir", str(tmp_path), *tiny_args]) == 0
    summary = json.loads((tmp_path / "phase2_7" / "phase_2_7_summary.json").read_text())
    assert summary["no_direction_reason"] and summary["fitted_kinds"] == [] and summary["directions"] == []
    assert load_directions(tmp_path / "phase2_7" / "directions.safetensors") == []
    assert not (tmp_path / "phase2_7" / "pair_accuracy.png").exists()  # the earlier run's figure is gone
    manifest = json.loads((tmp_path / "phase2_7" / "phase_output.json").read_text())
    assert "pair_accuracy.png" not in manifest["outputs"]
    assert all((tmp_path / "phase2_7" / name).is_file() for name in manifest["outputs"])
    evaluation = json.loads((tmp_path / "phase3_8" / "evaluation_results.json").read_text())
    assert evaluation["warnings"]  # no class to compare: only the contrastive pairs (reference vs mutant) give
    scored = [(family, r) for families in evaluation["positions"].values() for family, r in families.items()]
    assert scored and all(family.startswith("contrastive_") and np.isnan(r["validation"]["auroc"])
                          for family, r in scored)  # directions, but nothing to score them against
    assert all("skipped" in b for b in evaluation["baselines"].values()) and evaluation["best_baseline"] is None


def test_resume_after_a_crash_and_after_a_slice_gives_identical_outputs(tmp_path: Path, tiny_args: list[str],
                                                                        monkeypatch: pytest.MonkeyPatch):
    straight, crashed, sliced = tmp_path / "straight", tmp_path / "crashed", tmp_path / "sliced"
    for folder in (straight, crashed, sliced):
        _run_upstream(folder, tiny_args)
    assert run.main(["phase", "1", "--data-dir", str(straight), *tiny_args]) == 0

    real_save = generation_job.BatchCheckpoint.save
    calls = {"n": 0}

    def crash_on_third_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C in the middle of the run
        return real_save(*args, **kwargs)

    monkeypatch.setattr(generation_job.BatchCheckpoint, "save", crash_on_third_batch)
    assert run.main(["phase", "1", "--data-dir", str(crashed), *tiny_args]) == 130
    assert not (crashed / "phase1" / "phase_output.json").exists()
    assert len(list((crashed / "phase1" / "checkpoint").glob("batch_*.pt"))) == 2
    monkeypatch.setattr(generation_job.BatchCheckpoint, "save", real_save)
    assert run.main(["phase", "1", "--data-dir", str(crashed), *tiny_args]) == 0

    assert run.main(["phase", "1", "--data-dir", str(sliced), "--end", "2", *tiny_args]) == 0
    assert not (sliced / "phase1" / "phase_output.json").exists()
    assert run.main(["phase", "1", "--data-dir", str(sliced), *tiny_args]) == 0

    reference_table, reference_tensors = _outputs(straight)
    for folder in (crashed, sliced):
        table, tensors = _outputs(folder)
        pd.testing.assert_frame_equal(table.drop(columns=TIMING_COLUMNS), reference_table.drop(columns=TIMING_COLUMNS))
        assert tensors == reference_tensors


def test_ctrl_c_during_generation_keeps_every_program_already_generated(tmp_path: Path, tiny_args: list[str],
                                                                        monkeypatch: pytest.MonkeyPatch):
    """Programs finished before the interrupt are tested and saved on the way out, not generated again."""
    _run_upstream(tmp_path, tiny_args)
    real_generate = generation_job.generate

    def interrupted_after_three(*args, **kwargs):
        for n, output in enumerate(real_generate(*args, **kwargs), start=1):
            yield output
            if n == 3:
                raise KeyboardInterrupt

    monkeypatch.setattr(generation_job, "generate", interrupted_after_three)
    assert run.main(["phase", "1", "--data-dir", str(tmp_path), *tiny_args]) == 130
    saved = [torch.load(path, weights_only=True) for path in (tmp_path / "phase1" / "checkpoint").glob("batch_*.pt")]
    assert sum(len(batch["keys"]) for batch in saved) == 3
    monkeypatch.setattr(generation_job, "generate", real_generate)
    assert run.main(["phase", "1", "--data-dir", str(tmp_path), *tiny_args]) == 0


def test_pipeline_skips_current_phases_and_reruns_stale_ones(tmp_path: Path, tiny_args: list[str],
                                                              capsys: pytest.CaptureFixture):
    data = ["--data-dir", str(tmp_path)]
    _pipeline_until_steering([*data, *tiny_args], capsys)
    manifests = {p: (tmp_path / p / "phase_output.json").read_text()
                 for p in ("phase0", "phase0_1", "phase1", "phase2_0", "phase2_5", "phase2_6", "phase2_7", "phase2_8",
                           "phase2_8s", "phase2_9", "phase3_5", "phase3_6", "phase3_8", "phase3_9")}
    _pipeline_until_steering([*data, *tiny_args], capsys)
    assert {p: (tmp_path / p / "phase_output.json").read_text() for p in manifests} == manifests

    not_run = ["missing"] * 4  # phases 4.5, 4.8, 4.9 and 5
    assert run.main(["list", *data, *tiny_args]) == 0
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines()] == ["done"] * 14 + not_run
    assert run.main(["list", *data, *tiny_args, "--set", "seed=5"]) == 0
    states = [line.split()[1] for line in capsys.readouterr().out.splitlines()]
    assert states == ["done"] + ["stale"] * 13 + not_run
    assert run.main(["list", *data, *tiny_args, "--set", "batch_size=7"]) == 0  # speed-only key
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines()] == ["done"] * 14 + not_run
    assert run.main(["list", *data, *tiny_args, "--set", "general_freq_max=0.5"]) == 0  # 2.5, hence 3.8 and 3.9
    assert ([line.split()[1] for line in capsys.readouterr().out.splitlines()] ==
        ["done"] * 4 + ["stale"] + ["done"] * 7 + ["stale"] * 2 + not_run)
    assert run.main(["list", *data, *tiny_args, "--set", "kv_aggregation=kmeans"]) == 0  # 2.8, 2.8s (3.8 reads 2.7)
    assert ([line.split()[1] for line in capsys.readouterr().out.splitlines()] ==
        ["done"] * 7 + ["stale"] * 2 + ["done"] * 5 + not_run)
    assert run.main(["list", *data, *tiny_args, "--set", "adapter_rank=2"]) == 0  # 2.9 alone (4.9 has not run)
    assert ([line.split()[1] for line in capsys.readouterr().out.splitlines()] ==
        ["done"] * 9 + ["stale"] + ["done"] * 4 + not_run)

    assert run.main(["phase", "0.1", *data, *tiny_args, "--set", "seed=5"]) == 0
    assert run.main(["list", *data, *tiny_args, "--set", "seed=5"]) == 0
    assert ([line.split()[1] for line in capsys.readouterr().out.splitlines()] == ["done", "done"] + ["stale"] * 12
        + not_run)


@pytest.mark.parametrize("argv, message", [
    (["phase", "9.9"], "unknown phase '9.9'"),
    (["phase", "1", "--set", "bogus=1"], "unknown config key 'bogus'"),
    (["phase", "1", "--set", "max_new_tokens=lots"], "wrong type"),
    (["phase", "1", "--set", "batch_size=-3"], "'batch_size' = -3 is invalid"),
    (["phase", "1"], "run `python run.py phase 0.1 --data-dir"),
    (["phase", "0", "--set", "dataset=mbpp", "--set", "data_file=/nope.json"], "not a readable file"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                            argv: list[str], message: str):
    data_dir = tmp_path / "out"
    assert run.main([*argv, "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not data_dir.exists()


def test_unreadable_data_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture):
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    assert run.main(["phase", "0", "--set", "dataset=mbpp", "--set", f"data_file={bad}",
                     "--data-dir", str(tmp_path / "out")]) == 2
    assert "neither a JSON array nor JSONL" in capsys.readouterr().err
    assert not (tmp_path / "out" / "phase0" / "phase_output.json").exists()
