"""Phase 4.8: does each method's steering change outcomes on new problems, more than disruption-matched controls?

Validation split, greedy baseline from phase 3.5 (programs the sandbox could not judge left out).
Everything steered here was calibrated in phase 4.5 on hyperparams (`interventions.safetensors`,
`arms.json`); nothing here chooses anything. Per method and class, at the level 4.5 chose (by its rule,
by a person, or the pre-registered level when neither), on every task: the method's arm and its minus-alpha arm;
once: an alpha-0 arm. Selective steering (exploratory) comes from the correct-class arm's rows and phase 3.8's
gates, without generating anything. The controls calibrated to each level in use (`controls_per_type` of each type)
run on `control_tasks` tasks, half of them initially passing where possible, and every arm is compared
with them on exactly those tasks (phase4_8/analysis.py). `--viz-only` redraws the figure.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.calibrated_arms import load_arms
from common.config import Config
from common.controls import SHARED_CONTROLS
from common.errors import PipelineError
from common.gates import load_gates
from common.logging import get_logger
from common.methods import get_method
from common.phase_run import PhaseRun
from common.steered_runs import BASELINE_COLUMNS, Arm, run_arms, save_rows, with_outcomes, write_examples
from common.utils import load_json, phase_dir, save_json
from phase4_8.analysis import arm_effects, primary_tests, selective_effects, versus_level_controls
from phase4_8.plots import plot_steering_effects

logger = get_logger("phase4_8")

EXAMPLES_PER_FILE = 25  # flipped tasks first, then unchanged ones


def run(phase: PhaseRun) -> Path | None:
    config = phase.config
    folder_4_5 = phase.upstream("4.5")
    chosen = load_json(folder_4_5 / "selected_coefficients.json")
    calibrated = load_arms(folder_4_5)
    baseline = pd.read_parquet(phase.upstream("3.5") / "dataset_temp_0_0.parquet", columns=BASELINE_COLUMNS)
    left_out = int((baseline["error_type"] == "unsupported").sum())
    baseline = baseline[baseline["error_type"] != "unsupported"].reset_index(drop=True)
    problems = pd.read_parquet(phase.upstream("0.1") / "validation.parquet")
    everything = tuple(baseline["task_id"])
    control_tasks = _control_tasks(baseline, config.control_tasks, config.seed)
    arms, plan = [], {}
    for key, choice in chosen["methods"].items():
        level = choice["level"]
        found = [(a, i) for a, i in calibrated if a.role == "target" and a.group == choice["method"]
                 and a.kind == choice["class"] and a.level == level]
        if not found:
            logger.warning("%s: its direction cannot reach disruption %g with calibration_alphas: skipped", key, level)
            continue
        arm, intervention = found[0]
        plan[key] = {"method": choice["method"], "class": choice["class"], "level": level, "alpha": arm.alpha,
                     "chosen_by": choice["chosen_by"], "arm": key, "minus_arm": f"{key}/minus_alpha",
                     "control_set": arm.control_set}
        arms += [Arm(key, intervention, everything), Arm(f"{key}/minus_alpha", intervention.negated(), everything)]
    if not arms:
        raise PipelineError("phase 4.8 has nothing to steer: phase 4.5 calibrated no method at the levels to run")
    arms.append(Arm("alpha_0", arms[0].intervention.at(0.0), everything))
    in_use = sorted({(p["control_set"], p["level"]) for p in plan.values()})
    controls = {(control_set, level): [(a, i) for a, i in calibrated if a.role == "control" and a.level == level
                                       and a.control_set == control_set] for control_set, level in in_use}
    arms += [Arm(a.name, i, control_tasks) for matched in controls.values() for a, i in matched]
    generated = run_arms(config, phase.spec, phase.inputs, problems, baseline, arms, "phase 4.8 (steering effects)")
    if generated is None:
        return None
    rows, generation = generated
    n_unsupported = {arm: int(n) for arm, n in rows.groupby("arm")["steered_error_type"].apply(
        lambda e: (e == "unsupported").sum()).items() if n}
    rows = with_outcomes(rows)
    out_dir = phase.out_dir
    rows_path = out_dir / "steered_results.parquet"
    save_rows(rows, rows_path)

    methods: dict[str, dict[str, Any]] = {}
    for key, info in plan.items():
        names = [a.name for a, _ in controls[info["control_set"], info["level"]]]
        methods.setdefault(info["method"], {})[info["class"]] = {
            **info, **arm_effects(rows[rows["arm"] == key]),
            "minus_alpha": arm_effects(rows[rows["arm"] == info["minus_arm"]]),
            "versus_controls": versus_level_controls(rows, key, names),
            "minus_alpha_versus_controls": versus_level_controls(rows, info["minus_arm"], names)}
    gates, gate_flags = load_gates(phase.upstream("3.8"))
    for key, info in plan.items():
        if info["class"] == "correct":
            methods[info["method"]]["correct"]["selective"] = {
                gate.name: {**asdict(gate), **selective_effects(rows[rows["arm"] == key], gate_flags[gate.name])}
                for gate in gates}
    control_rates = {_set_key(control_set, level): [
        {"arm": a.name, "type": a.group, "alpha": a.alpha,
         **{k: arm_effects(rows[rows["arm"] == a.name])[k]
            for k in ("correction", "preservation", "corruption", "valid_code_rate")}} for a, _ in matched]
        for (control_set, level), matched in controls.items()}
    analysis = {"split": "validation", "layer": chosen["layer"], "position": chosen["position"],
                "positions": chosen["positions"],
                "baseline": {"n_tasks": len(baseline), "n_passing": int(baseline["test_passed"].sum()),
                             "n_left_out_unsupported": left_out},
                "control_tasks": {"n": len(control_tasks),
                                  "n_passing": int(baseline.set_index("task_id").loc[list(control_tasks),
                                                                                     "test_passed"].sum())},
                "n_controls": {_set_key(control_set, level): len(matched)
                               for (control_set, level), matched in controls.items()},
                "primary_endpoints": list(config.primary_endpoints),
                "primary": primary_tests(methods, chosen["methods_declared"], config.primary_endpoints),
                "n_unsupported_steered": n_unsupported,
                "alpha_0": arm_effects(rows[rows["arm"] == "alpha_0"]), "methods": methods,
                "controls": control_rates, "colours": {m: get_method(m).colour for m in methods},
                "n_generations": int(len(rows))}
    analysis_path = out_dir / "steering_effect_analysis.json"
    save_json(analysis, analysis_path)
    plot_path = out_dir / "steering_effect_analysis.png"
    plot_steering_effects(analysis, plot_path)
    example_paths = _write_examples(out_dir / "examples", plan, rows)
    summary_path = out_dir / "phase_4_8_summary.json"
    headline = _headline(analysis)
    save_json({"headline": headline, "plan": plan, "primary": analysis["primary"], "n_generations": len(rows),
               "generation": generation}, summary_path)
    for line in headline:
        logger.info(line)
    return phase.finish([rows_path, analysis_path, plot_path, summary_path, *example_paths])


def replot(config: Config) -> None:
    """--viz-only: the figure again from the saved analysis, without generating anything."""
    out_dir = phase_dir(config, "4.8")
    path = out_dir / "steering_effect_analysis.json"
    if not path.is_file():
        raise PipelineError(f"no {path}: run `python run.py phase 4.8` first")
    plot_steering_effects(load_json(path), out_dir / "steering_effect_analysis.png")
    logger.info("redrew %s", out_dir / "steering_effect_analysis.png")


def _set_key(control_set: str, level: float) -> str:
    """"0.1" for the shared controls of level 0.1, "kv_cache_mutant@0.1" for a method's own."""
    return f"{level:g}" if control_set == SHARED_CONTROLS else f"{control_set}@{level:g}"


def _control_tasks(baseline: pd.DataFrame, n: int, seed: int) -> tuple[Any, ...]:
    """`n` tasks, half initially passing where there are enough (preservation needs them), the rest failing."""
    rng = np.random.default_rng(seed)
    passing = baseline.loc[baseline["test_passed"], "task_id"].to_numpy()
    failing = baseline.loc[~baseline["test_passed"], "task_id"].to_numpy()
    n_passing = min(len(passing), n // 2)
    n_failing = min(len(failing), n - n_passing)
    n_passing = min(len(passing), n - n_failing)
    picked = set(rng.choice(passing, n_passing, replace=False)) | set(rng.choice(failing, n_failing, replace=False))
    return tuple(t for t in baseline["task_id"] if t in picked)


def _write_examples(folder: Path, plan: dict[str, Any], rows: pd.DataFrame) -> list[Path]:
    paths = []
    for key, info in plan.items():
        arm_rows = rows[rows["arm"] == key]
        shown = arm_rows.sort_values("flipped", ascending=False, kind="stable").head(EXAMPLES_PER_FILE)
        path = folder / f"{key.replace('/', '_')}.md"
        write_examples(path, f"{info['method']}, {info['class']} direction, disruption {info['level']:g} (alpha "
                             f"{info['alpha']:.3g}), {int(arm_rows['flipped'].sum())} of {len(arm_rows)} flipped; "
                             f"first {len(shown)} shown", shown)
        paths.append(path)
    return paths


def _line(name: str, r: dict[str, Any]) -> str:
    return f"{name} {r['successes']}/{r['trials']} = {100 * r['rate']:.1f}% [{100 * r['low']:.1f}-{100 * r['high']:.1f}]"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _headline(analysis: dict[str, Any]) -> list[str]:
    lines = []
    for method, by_class in analysis["methods"].items():
        for kind, result in by_class.items():
            endpoints = ("correction", "preservation") if kind == "correct" else ("corruption",)
            for endpoint in endpoints:
                versus = result["versus_controls"][endpoint]
                primary = analysis["primary"].get(f"{method}/{endpoint}")
                lines.append(f"{method} {kind} (level {result['level']:g}, alpha {result['alpha']:.3g}): "
                             f"{_line(endpoint, result[endpoint])}; on {versus['n_tasks']} control tasks "
                             f"{versus['target']['successes']}/{versus['target']['trials']} vs controls' mean "
                             f"{_percent(versus['controls_mean_rate'])}, rank p {_number(versus['rank_p'])}, "
                             f"prediction p {_number(versus['prediction_p'])}"
                             + (f", Holm p {primary['holm_p']:.3g} (primary)" if primary else " (exploratory)"))
            for gate, selective in result.get("selective", {}).items():
                lines.append(f"{method} {kind}, selective through the {gate} gate ({selective['score']}; flags "
                             f"{selective['flagged']['failing']['successes']} failing and "
                             f"{selective['flagged']['passing']['successes']} passing tasks): "
                             f"{_line('correction', selective['correction'])}, "
                             f"{_line('preservation', selective['preservation'])}; kept "
                             f"{selective['correction']['successes']} of {result['correction']['successes']} fixes "
                             f"where a class-matched random gate keeps "
                             f"{selective['class_matched_gate_expected']['fixes_kept']:.1f} (p "
                             f"{selective['class_matched_gate_expected']['fixes_kept_p']:.2g}) (exploratory)")
    return lines
