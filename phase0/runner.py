"""Phase 0: load the configured dataset into one table of problems, with each reference solution's
cyclomatic complexity (radon) as the difficulty axis that phase 0.1 stratifies on."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from common.phase_run import PhaseRun
from common.datasets import load_problems
from common.logging import get_logger
from common.utils import atomic_path, save_json, upstream_inputs, write_manifest

logger = get_logger("phase0")


def run(phase: PhaseRun) -> Path:
    config = phase.config
    spec = phase.spec
    if config.task_start or config.task_end is not None:
        logger.warning("phase 0 always loads the whole dataset: --start/--end apply to generating phases")
    loaded = load_problems(config.dataset, config.data_file, config.mbpp_variant, config.n_tasks,
                           config.synthetic_seed, config.synthetic_level_weights)
    table = pd.DataFrame([p.to_row() for p in loaded.problems])
    duplicates = table["task_id"].duplicated()
    skipped = loaded.skipped + [{"row": None, "task_id": task_id, "error_type": "duplicate_task_id",
                                 "message": "a row with this task_id came earlier"}
                                for task_id in table.loc[duplicates, "task_id"]]
    if duplicates.any():
        logger.warning("dropping %d rows with repeated task_id", int(duplicates.sum()))
        table = table[~duplicates].reset_index(drop=True)
    out_dir = phase.out_dir
    problems_path = out_dir / "problems.parquet"
    with atomic_path(problems_path) as tmp:
        table.to_parquet(tmp, index=False)
    summary_path = out_dir / "phase_0_summary.json"
    histogram = Counter(int(c) for c in table["cyclomatic_complexity"])
    levels = Counter(int(d) for d in table["difficulty"])
    skipped_path = out_dir / "skipped_rows.json"
    save_json(skipped, skipped_path)
    save_json({"dataset": config.dataset, "source": sorted(set(table["source"])), "n_problems": len(table),
               "n_skipped_rows": len(skipped),
               "complexity_histogram": {str(k): histogram[k] for k in sorted(histogram)},
               "difficulty_histogram": {str(k): levels[k] for k in sorted(levels)},
               "mean_complexity_by_difficulty": {str(k): float(g.mean()) for k, g in
                                                 table.groupby("difficulty")["cyclomatic_complexity"]},
               "families": dict(Counter(table["family"]))}, summary_path)
    logger.info("%d problems from %s; complexity %s", len(table), config.dataset, dict(sorted(histogram.items())))
    return write_manifest(config, spec, upstream_inputs(config, spec), [problems_path, skipped_path, summary_path])
