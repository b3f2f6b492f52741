"""Phase 3.6: greedy generations on the hyperparams split, the data on which thresholds are chosen.

`dataset_hyperparams_temp_0_0.parquet` has one row per task (task_id, text, test_list, prompt,
generated_code, test_passed, cyclomatic_complexity and the generation metadata), and row i of
`activations/<position>/layer_{L}.safetensors` is that row's residual stream at each position (phase 1).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from common.phase_run import PhaseRun
from common.generation_job import generate_split, make_items, write_split_outputs
from common.logging import get_logger
from common.statistics import rate
from common.utils import save_json, write_manifest

logger = get_logger("phase3_6")

TABLE = "dataset_hyperparams_temp_0_0.parquet"


def run(phase: PhaseRun) -> Path | None:
    config = phase.config
    spec = phase.spec
    inputs = phase.inputs
    problems = pd.read_parquet(phase.upstream("0.1") / "hyperparams.parquet")
    generated = generate_split(config, spec, inputs, problems, lambda records: make_items(records, 0, 1.0),
                               description="phase 3.6 (hyperparams, greedy)")
    if generated is None:
        return None
    by_task = {row["task_id"]: row for row in problems.to_dict("records")}
    rows = [{**row, "text": by_task[row["task_id"]]["text"], "test_list": list(by_task[row["task_id"]]["test_list"])}
            for row in generated.rows]
    out_dir = phase.out_dir
    outputs = write_split_outputs(config, out_dir, TABLE, rows, generated.activations)
    n_passed = sum(row["test_passed"] for row in rows)
    summary = {"split": "hyperparams", "temperature": 0.0, "prompt_style": generated.prompt_style,
               "n_tasks": len(rows), "n_passed": n_passed, "pass_rate": rate(n_passed, len(rows)).to_dict(),
               "tasks_left_out_prompt_too_long": generated.too_long, "generation": generated.report}
    logger.info("hyperparams split: %s", rate(n_passed, len(rows)))
    summary_path = out_dir / "phase_3_6_summary.json"
    save_json(summary, summary_path)
    manifest = write_manifest(config, spec, inputs, outputs + [summary_path], {"prompt_style": generated.prompt_style})
    generated.checkpoint.clear()
    return manifest
