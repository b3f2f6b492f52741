"""SIGKILL a phase at random moments, resume it, and get exactly the outputs of an uninterrupted run.

Each phase runs as a real `python run.py` process, killed with SIGKILL (no cleanup, no Python
handler) after a random number of saved batches and a random fraction of a second, several times in
a row on the same data folder; then it runs to the end. The final outputs must equal the reference
ones, with no duplicated or missing rows, and nothing it left behind may be half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tests.conftest import REPO
from tests.planted import planted_args, write_hand_made_directions, write_tasks

KILLS = 3
TIMING_COLUMNS = ["generation_time", "exec_time"]  # wall-clock measurements differ between runs
STEERED_TIMING_COLUMNS = ["generation_s"]  # the same, in the steered rows


def _start(argv: list[str], stderr: int = subprocess.DEVNULL) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "run.py", *argv], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=stderr, start_new_session=True)


def _run_to_the_end(argv: list[str]) -> None:
    process = _start(argv, stderr=subprocess.PIPE)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err.decode()[-2000:]


def _kill_at_random_moments(argv: list[str], folder: Path, total_batches: int, seed: int) -> int:
    """Start the phase KILLS times, each time SIGKILL it once it has saved a random number of new batches
    (0-3, always short of the last one, so the kill lands before the run can end however fast the
    machine) plus a random few milliseconds; then let it finish. Returns how many runs were killed."""
    rng = np.random.default_rng(seed)
    killed = 0
    for _ in range(KILLS):
        saved_before = len(list((folder / "checkpoint").glob("batch_*.pt")))
        new_batches = int(rng.integers(0, max(1, min(4, total_batches - saved_before))))
        target, extra_s = saved_before + new_batches, float(rng.uniform(0.0, 0.03))
        process = _start(argv)
        while process.poll() is None and len(list((folder / "checkpoint").glob("batch_*.pt"))) < target:
            time.sleep(0.005)
        time.sleep(extra_s)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            killed += 1
        _assert_nothing_half_written(folder)
    _run_to_the_end(argv)
    return killed


def _assert_nothing_half_written(folder: Path) -> None:
    """Every checkpoint batch loads whole; outputs exist only complete (they are renamed into place)."""
    for batch in (folder / "checkpoint").glob("batch_*.pt"):
        torch.load(batch, weights_only=True)
    for table in folder.glob("*.parquet"):
        pd.read_parquet(table)
    for document in folder.glob("*.json"):
        json.loads(document.read_text())


def _copy_upstream(source: Path, target: Path, folders: list[str]) -> None:
    for name in folders:
        shutil.copytree(source / name, target / name)


def test_phase_1_killed_at_random_moments_resumes_to_identical_outputs(tmp_path: Path, tiny_model_dir: Path,
                                                                       mbpp_full_file: Path):
    batch_size = 2
    args = ["--set", "dataset=mbpp", "--set", f"data_file={mbpp_full_file}", "--set", f"model_name={tiny_model_dir}",
            "--set", "layers=1,3", "--set", "max_new_tokens=12", "--set", f"batch_size={batch_size}", "--set",
            "samples_per_task=1", "--set", "temperature=1.0", "--log-level", "WARNING"]
    reference = tmp_path / "reference"
    for phase in ("0", "0.1"):
        _run_to_the_end(["phase", phase, "--data-dir", str(reference), *args])
    _run_to_the_end(["phase", "1", "--data-dir", str(reference), *args])
    expected = pd.read_parquet(reference / "phase1" / "dataset_sae.parquet").drop(columns=TIMING_COLUMNS)
    total_batches = -(-len(expected) // batch_size)  # phase 1 removes its checkpoint once done
    for seed in (11, 12):
        killed = tmp_path / f"killed_{seed}"
        _copy_upstream(reference, killed, ["phase0", "phase0_1"])
        assert _kill_at_random_moments(["phase", "1", "--data-dir", str(killed), *args], killed / "phase1",
                                       total_batches, seed) >= 2
        table = pd.read_parquet(killed / "phase1" / "dataset_sae.parquet").drop(columns=TIMING_COLUMNS)
        assert not table.duplicated(["task_id", "sample_idx"]).any()
        pd.testing.assert_frame_equal(table, expected)
        for name in sorted((reference / "phase1" / "activations").rglob("*.safetensors")):
            assert (killed / name.relative_to(reference)).read_bytes() == name.read_bytes(), name


def test_phase_4_5_killed_at_random_moments_resumes_to_identical_outputs(tmp_path: Path, planted_model_dir: Path):
    reference = tmp_path / "reference"
    reference.mkdir()
    args = [*planted_args(planted_model_dir, write_tasks(tmp_path)), "--set", "batch_size=8"]  # 15 batches
    for phase in ("0", "0.1", "1", "3.6"):
        _run_to_the_end(["phase", phase, "--data-dir", str(reference), *args])
    write_hand_made_directions(reference)
    _run_to_the_end(["phase", "4.5", "--data-dir", str(reference), *args])
    expected_rows = pd.read_parquet(reference / "phase4_5" / "coefficient_grid_results.parquet").drop(
        columns=STEERED_TIMING_COLUMNS)
    expected_choice = json.loads((reference / "phase4_5" / "selected_coefficients.json").read_text())
    total_batches = len(list((reference / "phase4_5" / "checkpoint").glob("batch_*.pt")))
    for seed in (21, 22):
        killed = tmp_path / f"killed_{seed}"
        _copy_upstream(reference, killed, ["phase0", "phase0_1", "phase1", "phase2_0", "phase2_5", "phase2_6",
                                           "phase2_7", "phase2_8", "phase3_6", "phase3_9"])
        assert _kill_at_random_moments(["phase", "4.5", "--data-dir", str(killed), *args], killed / "phase4_5",
                                       total_batches, seed) >= 2
        rows = pd.read_parquet(killed / "phase4_5" / "coefficient_grid_results.parquet").drop(
            columns=STEERED_TIMING_COLUMNS)
        assert not rows.duplicated(["arm", "task_id"]).any()
        pd.testing.assert_frame_equal(rows, expected_rows)
        assert json.loads((killed / "phase4_5" / "selected_coefficients.json").read_text()) == expected_choice
