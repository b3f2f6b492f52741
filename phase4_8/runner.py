"""Phase 4.8: does steering with the chosen coefficients change outcomes on new problems, more than controls?

Validation split, greedy baseline from phase 3.5. Coefficients, layer and position policy come from
phase 4.5 (chosen on hyperparams; nothing here chooses anything). Arms:
- the SAE direction of each class (phase 2.5) and, as the baseline method, phase 2.6's mean-difference
  direction at the same layer with the same alpha (negated for the incorrect class);
- controls at the same layer and alpha: `random_controls` random unit vectors and
  `zero_discrimination_controls` latents that fire equally often in both classes (phase 2.5).
The correct direction runs on every task (correction and preservation), the incorrect one on the
initially passing tasks (corruption); controls run on the tasks of the experiment they control.
`--viz-only` redraws the figure from `steering_effect_analysis.json`. The steered generations stay in
`checkpoint/` (see common/steered_runs.run_arms).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from common.config import Config
from common.directions import SteeringDirection, load_directions, random_directions
from common.errors import PipelineError
from common.logging import get_logger
from common.phases import get_phase
from common.steered_runs import BASELINE_COLUMNS, Arm, save_rows, run_arms, write_examples
from common.interventions import ResidualAddition
from common.utils import (discover_latest_phase_output, load_json, phase_dir, save_json,
    upstream_inputs, write_manifest)
from phase4_8.analysis import EXPERIMENTS, METHODS, arm_name, control_arm_name, steering_effects
from phase4_8.plots import plot_steering_effects

logger = get_logger("phase4_8")

CONTROL_BOOTSTRAP = 2000
EXAMPLES_PER_FILE = 25  # flipped tasks first, then unchanged ones


def run(config: Config) -> Path | None:
    spec = get_phase("4.8")
    inputs = upstream_inputs(config, spec)
    folder = {phase: discover_latest_phase_output(phase, config.data_dir).parent for phase in spec.upstream}
    chosen = load_json(folder["4.5"] / "selected_coefficients.json")
    baseline = pd.read_parquet(folder["3.5"] / "dataset_temp_0_0.parquet", columns=BASELINE_COLUMNS)
    problems = pd.read_parquet(folder["0.1"] / "validation.parquet")
    position = config.steering_direction_position
    latents = [d for d in load_directions(folder["2.5"] / "latent_directions.safetensors") if d.position == position]
    mean_difference = {d.layer: d for d in load_directions(folder["2.6"] / "directions.safetensors")
                       if d.source == "mean_difference" and d.position == position}
    arms, warnings = _arms(config, chosen, baseline, latents, mean_difference)
    for warning in warnings:
        logger.warning(warning)
    if not arms:
        raise PipelineError("phase 4.8 has nothing to steer: phase 4.5 chose no coefficient")
    steered = run_arms(config, spec, inputs, problems, baseline, arms, "phase 4.8 (steering effects)")
    if steered is None:
        return None
    rows, generation = steered

    out_dir = phase_dir(config, spec.id)
    rows_path = out_dir / "steered_results.parquet"
    save_rows(rows, rows_path)
    passed = baseline["test_passed"].to_numpy(dtype=bool)
    effects = steering_effects(rows, CONTROL_BOOTSTRAP, config.seed)
    analysis = {"split": "validation", "baseline": {"n_tasks": len(baseline), "n_passing": int(passed.sum()),
                                                    "n_failing": int((~passed).sum())},
                "coefficients": {kind: {k: chosen[kind][k] for k in ("coefficient", "alpha", "coefficient_scale",
                                                                     "chosen_by", "direction", "layer")}
                                 for kind in EXPERIMENTS if kind in chosen},
                "positions": chosen["positions"], "effects": effects, "warnings": warnings,
                "n_generations": int(len(rows)),
                "tasks_left_out": sorted({str(t) for arm in arms for t in arm.task_ids}
                                         - {str(t) for t in rows["task_id"]})}
    analysis_path = out_dir / "steering_effect_analysis.json"
    save_json(analysis, analysis_path)
    plot_path = out_dir / "steering_effect_analysis.png"
    plot_steering_effects(analysis, plot_path)
    example_paths = _write_examples(out_dir / "examples", rows)
    summary_path = out_dir / "phase_4_8_summary.json"
    save_json({"headline": _headline(effects), "coefficients": analysis["coefficients"],
               "n_generations": analysis["n_generations"], "generation": generation, "warnings": warnings},
              summary_path)
    for line in _headline(effects):
        logger.info(line)
    return write_manifest(config, spec, inputs, [rows_path, analysis_path, plot_path, summary_path, *example_paths])


def replot(config: Config) -> None:
    """--viz-only: the figure again from the saved analysis, without generating anything."""
    out_dir = phase_dir(config, "4.8")
    path = out_dir / "steering_effect_analysis.json"
    if not path.is_file():
        raise PipelineError(f"no {path}: run `python run.py phase 4.8` first")
    plot_steering_effects(load_json(path), out_dir / "steering_effect_analysis.png")
    logger.info("redrew %s", out_dir / "steering_effect_analysis.png")


def _arms(config: Config, chosen: dict[str, Any], baseline: pd.DataFrame, latents: list[SteeringDirection],
          mean_difference: dict[int, SteeringDirection]) -> tuple[list[Arm], list[str]]:
    by_name = {d.name: d for d in latents}
    passing = tuple(baseline.loc[baseline["test_passed"], "task_id"])
    failing = tuple(baseline.loc[~baseline["test_passed"], "task_id"])
    everything = tuple(baseline["task_id"])
    arms, warnings = [], []
    for kind in EXPERIMENTS:
        if kind not in chosen:
            warnings.append(f"phase 4.5 chose no {kind} coefficient: {kind} steering is skipped")
            continue
        choice = chosen[kind]
        direction = by_name[choice["direction"]]
        alpha, positions = float(choice["alpha"]), chosen["positions"]
        tasks, control_tasks = (everything, failing) if kind == "correct" else (passing, passing)
        if not control_tasks:
            warnings.append(f"no initially {'failing' if kind == 'correct' else 'passing'} validation tasks: "
                            f"the {kind} experiment has nothing to measure")
            continue
        arms.append(Arm(arm_name("sae", kind), ResidualAddition(direction, alpha, positions), tasks))
        if direction.layer in mean_difference:
            md = ResidualAddition(mean_difference[direction.layer], alpha, positions)
            arms.append(Arm(arm_name("mean_difference", kind), md.negated() if kind == "incorrect" else md, tasks))
        else:
            warnings.append(f"phase 2.6 has no mean-difference direction at layer {direction.layer}")
        zero_discrimination = [d for d in latents if d.source == "zero_discrimination" and d.layer == direction.layer]
        if len(zero_discrimination) < config.zero_discrimination_controls:
            warnings.append(f"only {len(zero_discrimination)} zero-discrimination latents at layer {direction.layer} "
                            f"(wanted {config.zero_discrimination_controls})")
        controls = (random_directions(direction.layer, direction.vector.shape[0], config.random_controls, config.seed)
                    + zero_discrimination[:config.zero_discrimination_controls])
        arms += [Arm(control_arm_name(kind, c.name), ResidualAddition(c, alpha, positions), control_tasks) for c in controls]
    return arms, warnings


def _write_examples(folder: Path, rows: pd.DataFrame) -> list[Path]:
    paths = []
    for kind, experiments in EXPERIMENTS.items():
        for method in METHODS:
            for experiment in experiments:
                arm_rows = rows[rows["arm"] == arm_name(method, kind)]
                arm_rows = arm_rows[arm_rows["baseline_passed"] == (experiment != "correction")]
                if arm_rows.empty:
                    continue
                shown = arm_rows.sort_values("flipped", ascending=False, kind="stable").head(EXAMPLES_PER_FILE)
                path = folder / f"{method}_{experiment}.md"
                write_examples(path, f"{experiment}: {method} {kind} direction ({arm_rows['direction'].iloc[0]}, "
                                     f"alpha {arm_rows['alpha'].iloc[0]:g}), {int(arm_rows['flipped'].sum())} of "
                                     f"{len(arm_rows)} flipped; first {len(shown)} shown", shown)
                paths.append(path)
    return paths


def _headline(effects: dict[str, Any]) -> list[str]:
    lines = []
    for kind, result in effects.items():
        control_valid = result["controls"]["pooled_steered_valid_code"]
        for method, effect in result["by_method"].items():
            for experiment in result["experiments"]:
                r = effect[experiment]
                line = (f"{experiment} ({method}, {effect['direction']}): {r['successes']}/{r['trials']} = "
                        f"{100 * r['rate']:.1f}% [{100 * r['low']:.1f}-{100 * r['high']:.1f}%]")
                if "mcnemar_p" in r:
                    line += f", McNemar p = {r['mcnemar_p']:.3g}"
                versus, level = r.get("vs_controls"), r.get("direction_level")
                if versus and level and level["rank_p"] is not None:
                    pooled = versus["pooled_control"]
                    line += (f"; controls {pooled['successes']}/{pooled['trials']} = {100 * pooled['rate']:.1f}%, "
                             f"difference {100 * level['difference']:+.1f} pts (one-sided 95% lower bound "
                             f"{100 * level['difference_lower_bound']:+.1f}); direction level (exploratory: controls matched on alpha "
                             "only): "
                             f"{level['controls_at_or_above_target']} of {level['n_controls']} controls at or above, "
                             f"rank p = {level['rank_p']:.3g}, prediction p = {level['prediction_p']:.3g}")
                line += f"; valid code {100 * r['steered_valid_code']['rate']:.0f}%"
                if versus and control_valid:
                    line += f" (controls {100 * control_valid['rate']:.0f}%)"
                given_valid = r.get("given_valid_code")
                if given_valid and given_valid["fisher_p"] is not None:
                    t, c = given_valid["target"], given_valid["pooled_control"]
                    line += (f"; among valid code {t['successes']}/{t['trials']} = {100 * t['rate']:.1f}% vs controls "
                             f"{c['successes']}/{c['trials']} = {100 * c['rate']:.1f}%, "
                             f"Fisher p = {given_valid['fisher_p']:.3g}")
                lines.append(line)
    return lines
