"""Phase 3.5: the validation split, greedy and at several temperatures, for robustness of the scores.

Per task: one greedy sample, and `samples_per_temperature` samples at each of `temperatures`.
One table per temperature, `dataset_temp_{T}.parquet` (`dataset_temp_0_0.parquet` is the greedy
one), with `activations_temp_{T}/<position>/layer_{L}.safetensors` aligned to its rows (phase 1). The
last prompt token's activations do not depend on the temperature, which only acts after them; the
code positions do.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from common.phase_run import PhaseRun
from common.generation_job import generate_split, make_temperature_items, write_split_outputs
from common.logging import get_logger
from common.statistics import rate
from common.utils import save_json, write_manifest

logger = get_logger("phase3_5")


def temperature_tag(temperature: float) -> str:
    """0.0 -> '0_0', 0.3 -> '0_3', 1.25 -> '1_25': file-name form of a temperature."""
    whole, _, fraction = f"{temperature:.2f}".rstrip("0").partition(".")
    return f"{whole}_{fraction or '0'}"


def run(phase: PhaseRun) -> Path | None:
    config = phase.config
    spec = phase.spec
    inputs = phase.inputs
    problems = pd.read_parquet(phase.upstream("0.1") / "validation.parquet")
    generated = generate_split(
        config, spec, inputs, problems,
        lambda records: make_temperature_items(records, config.temperatures, config.samples_per_temperature),
        description="phase 3.5 (validation)")
    if generated is None:
        return None
    out_dir = phase.out_dir
    outputs, by_temperature = [], {}
    for temperature in [0.0, *config.temperatures]:
        picked = [i for i, row in enumerate(generated.rows) if row["temperature"] == temperature]
        if not picked:
            continue
        tag = temperature_tag(temperature)
        rows, activations = generated.select(picked)
        outputs += write_split_outputs(config, out_dir, f"dataset_temp_{tag}.parquet", rows, activations,
                                       activations_folder=f"activations_temp_{tag}")
        n_passed = sum(row["test_passed"] for row in rows)
        by_temperature[f"{temperature:g}"] = {"table": f"dataset_temp_{tag}.parquet",
                                              "activations": f"activations_temp_{tag}", "n_samples": len(rows),
                                              "n_passed": n_passed, "pass_rate": rate(n_passed, len(rows)).to_dict()}
        logger.info("temperature %g: %s", temperature, rate(n_passed, len(rows)))
    summary_path = out_dir / "phase_3_5_summary.json"
    save_json({"split": "validation", "prompt_style": generated.prompt_style, "n_tasks": len(problems),
               "samples_per_temperature": config.samples_per_temperature, "by_temperature": by_temperature,
               "tasks_left_out_prompt_too_long": generated.too_long, "generation": generated.report}, summary_path)
    manifest = write_manifest(config, spec, inputs, outputs + [summary_path], {"prompt_style": generated.prompt_style})
    generated.checkpoint.clear()
    return manifest
