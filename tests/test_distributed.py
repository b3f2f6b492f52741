"""Phase 1 sharded over 2 CPU processes of a torchrun launch gives the outputs of a single process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

import run
from tests.conftest import REPO

TIMING_COLUMNS = ["generation_time", "exec_time"]


def test_two_torchrun_processes_write_what_one_process_writes(tmp_path: Path, tiny_model_dir: Path,
                                                              mbpp_full_file: Path):
    args = ["--set", "dataset=mbpp", "--set", f"data_file={mbpp_full_file}", "--set", f"model_name={tiny_model_dir}",
            "--set", "layers=1,3", "--set", "max_new_tokens=12", "--set", "batch_size=2", "--set",
            "samples_per_task=1", "--set", "temperature=1.0", "--log-level", "WARNING"]
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    for folder in (single, sharded):
        for phase in ("0", "0.1"):
            assert run.main(["phase", phase, "--data-dir", str(folder), *args]) == 0
    assert run.main(["phase", "1", "--data-dir", str(single), *args]) == 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    launch = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "run.py", "phase", "1", "--data-dir", str(sharded), *args, "--log-level", "INFO"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert launch.returncode == 0, launch.stderr[-3000:]
    shares = re.findall(r"process (\d) of 2 takes (\d+) of (\d+) batches", launch.stderr)
    assert sorted(index for index, _, _ in shares) == ["0", "1"] and all(int(n) > 0 for _, n, _ in shares)
    assert sum(int(n) for _, n, _ in shares) == int(shares[0][2])
    expected = pd.read_parquet(single / "phase1" / "dataset_sae.parquet").drop(columns=TIMING_COLUMNS)
    table = pd.read_parquet(sharded / "phase1" / "dataset_sae.parquet").drop(columns=TIMING_COLUMNS)
    pd.testing.assert_frame_equal(table, expected)
    written = sorted((single / "phase1" / "activations").rglob("*.safetensors"))
    assert len(written) == 4 * 2  # every position, both layers
    for name in written:
        assert (sharded / name.relative_to(single)).read_bytes() == name.read_bytes(), name
    assert "pipeline" in subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "run.py",
         "pipeline", "--data-dir", str(sharded), *args], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=600).stderr
