"""Phase 1: generate solutions for the sae split, test them, and record the residual stream.

For each task: one greedy sample plus `samples_per_task` samples at `temperature`. Each row of
`dataset_sae.parquet` is one sample; row i of `activations/<position>/layer_{L}.safetensors` is the
output of decoder layer L at that position of that row (common/positions.py): the last prompt token,
captured in the generation's own prefill, and the code positions of one teacher-forced pass over
prompt + program, which also gives the model's own confidence in its program (table columns
`program_mean_logprob`, `program_mean_margin`, `program_tokens`, `prompt_tokens`). `--start/--end` process a slice of the tasks into the checkpoint; the outputs are written
once every task is done.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from common.config import Config
from common.phase_run import PhaseRun
from common.hooks import HOOK_SITE
from common.generation_job import generate_split, make_items, write_split_outputs
from common.logging import get_logger
from common.plotting import rate_bars
from common.statistics import rate
from common.utils import save_json, write_manifest

logger = get_logger("phase1")

THIN_CLASS_SAMPLES = 20


def run(phase: PhaseRun) -> Path | None:
    config = phase.config
    spec = phase.spec
    inputs = phase.inputs
    problems = pd.read_parquet(phase.upstream("0.1") / "sae.parquet")
    out_dir = phase.out_dir
    generated = generate_split(config, spec, inputs, problems,
                               lambda records: make_items(records, config.samples_per_task, config.temperature),
                               description="phase 1")
    if generated is None:
        return None
    rows = generated.rows
    outputs = write_split_outputs(config, out_dir, "dataset_sae.parquet", rows, generated.activations)
    summary_path = out_dir / "phase_1_summary.json"
    summary = {**_summary(config, generated.prompt_style, rows, generated.too_long), "generation": generated.report}
    save_json(summary, summary_path)
    title = f"Phase 1: {config.model_name} on the {config.dataset} sae split ({generated.prompt_style} prompt)"
    plots = {"complexity": ("pass_rate_by_complexity.png", "cyclomatic complexity of the reference (10 = 10 or more)"),
             "difficulty": ("pass_rate_by_difficulty.png", "difficulty level (primitives composed)")}
    for key, (file_name, xlabel) in plots.items():
        by_level = summary.get(f"pass_rate_by_{key}")
        if by_level:
            rate_bars({k: rate(r["successes"], r["trials"]) for k, r in by_level.items()}, out_dir / file_name, title,
                      xlabel)
            outputs.append(out_dir / file_name)
    manifest = write_manifest(config, spec, inputs, outputs + [summary_path], {"prompt_style": generated.prompt_style})
    generated.checkpoint.clear()
    return manifest


def _summary(config: Config, prompt_style: str, rows: list[dict[str, Any]], too_long: list[str]) -> dict[str, Any]:
    table = pd.DataFrame(rows)
    error_types = dict(Counter(table["error_type"]))
    table = table[table["error_type"] != "unsupported"]  # no label: the sandbox could not evaluate the tests
    n_passed = int(table["test_passed"].sum())
    n_failed = len(table) - n_passed
    warnings = [f"only {n} {name} samples (< {THIN_CLASS_SAMPLES}): rankings and classifiers built on them are "
                "unreliable" for name, n in (("passing", n_passed), ("failing", n_failed)) if n < THIN_CLASS_SAMPLES]
    for warning in warnings:
        logger.warning(warning)
    overall = rate(n_passed, len(table))
    flags = table.groupby("task_id")["test_passed"].agg(["any", "all"])
    both = int((flags["any"] & ~flags["all"]).sum())
    logger.info("pass rate %s over %d tasks; %d tasks have both a passing and a failing program", overall,
                len(flags), both)
    by_complexity = {str(level): rate(int(group["test_passed"].sum()), len(group)).to_dict()
                     for level, group in table.groupby(table["cyclomatic_complexity"].clip(upper=10))}
    by_temperature = {f"{t:g}": rate(int(group["test_passed"].sum()), len(group)).to_dict()
                      for t, group in table.groupby("temperature")}
    by_difficulty = {str(level): rate(int(group["test_passed"].sum()), len(group)).to_dict()
                     for level, group in table.groupby("difficulty") if level > 0}
    return {
        "model_name": config.model_name, "prompt_style": prompt_style, "dataset": config.dataset,
        "layers": config.layers, "hook_site": HOOK_SITE, "n_tasks": int(table["task_id"].nunique()),
        "n_samples": len(table), "n_passed": n_passed, "n_failed": n_failed, "pass_rate": overall.to_dict(),
        "tasks_with_both_classes": both, "positions": config.activation_positions,
        "pass_rate_by_temperature": by_temperature, "pass_rate_by_complexity": by_complexity,
        "pass_rate_by_difficulty": by_difficulty,
        "error_types": error_types, "n_unsupported": error_types.get("unsupported", 0),
        "tasks_left_out_prompt_too_long": too_long,
        "mean_new_tokens": float(table["n_new_tokens"].mean()),
        "generation_time_total_s": float(table["generation_time"].sum()), "warnings": warnings,
    }
