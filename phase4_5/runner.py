"""Phase 4.5: each method's steering strength, chosen on the hyperparams split against controls at matched disruption.

The grid is over disruption, not alpha: at every level of `disruption_levels` (mean KL per token of
the next-token distributions over baseline programs, common/disruption.py) each method's direction of
each class and `selection_controls_per_type` controls of each type are given the alpha that disturbs
the model that much (a method with its own kind of controls, such as a KV-cache edit, meets as many of
those instead: common/methods.py). Every arm steers every hyperparams problem (both classes), so each method is
compared with controls that disturb the model exactly as much, on the same problems. Rule, per method
and class, the smallest level where:
- its effect (correct class: fail -> pass on failing problems; incorrect: pass -> fail on passing ones)
  beats the controls of that level at the direction level with a positive one-sided 95% lower bound
  (common/direction_inference.py); and
- for the correct class, pass -> fail on passing problems is no higher than the controls' mean and at
  most `max_break_rate`.
None qualifies: "no effective level", and phase 4.8 runs `preregistered_level`. `--set chosen_level=L`
records a person's choice instead (seed 001's manual selection); the generations are reused. All
`controls_per_type` controls of each type are calibrated at every level (cheap: no generation) and saved
with the targets in `interventions.safetensors` + `arms.json` for phase 4.8.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from scipy.stats import spearmanr

from common.direction_inference import versus_controls
from common.disruption import teacher_texts
from common.errors import PipelineError
from common.logging import get_logger
from common.controls import CONTROL_TYPES, SHARED_CONTROLS, Control
from common.methods import METHODS, Proposal, SteeringSite, get_method, steering_layer
from common.phase_run import PhaseRun
from common.prompt_utils import PromptBuilder, resolve_prompt_style
from common.statistics import rate
from common.steered_runs import (BASELINE_COLUMNS, Arm, arm_metrics, outcome_matrix, run_arms, save_rows,
                                 with_outcomes, write_examples)
from common.utils import save_json
from common_simplified.model_loader import load_model_and_tokenizer
from common.calibrated_arms import CalibratedArm, save_arms
from common.control_vectors import save_control_vector
from common.interventions import ResidualAddition
from phase4_5.calibration import achieved_disruption, calibrate, make_controls
from phase4_5.plots import plot_dose_response

logger = get_logger("phase4_5")

OWN_SEED_STEP = 1000  # between the seeds of two methods' own controls
EFFECT = {"correct": "fixed", "incorrect": "broken"}  # the outcome a class's direction is meant to cause


def run(phase: PhaseRun) -> Path | None:
    config = phase.config
    folders = {upstream: phase.upstream(upstream) for upstream in phase.spec.upstream}
    baseline = pd.read_parquet(folders["3.6"] / "dataset_hyperparams_temp_0_0.parquet", columns=BASELINE_COLUMNS
                               + ["raw_output"])
    unsupported = int((baseline["error_type"] == "unsupported").sum())
    baseline = baseline[baseline["error_type"] != "unsupported"].reset_index(drop=True)
    problems = pd.read_parquet(folders["0.1"] / "hyperparams.parquet")
    position = config.steering_direction_position
    layer = steering_layer(folders["2.5"], position, config.steering_layer)
    if layer is None:
        raise PipelineError(f"phase 4.5 has nothing to steer: phase 2.5 lists no correct-preferring latent at {position} "
                            "to place the steering layer (set steering_layer)")
    site = SteeringSite(layer, position, folders)
    warnings = [f"{unsupported} baseline programs the sandbox could not judge are left out"] if unsupported else []
    targets, exclusions, proposals = {}, [], {}
    for name in config.methods:
        method = get_method(name)
        unread = [p for p in method.upstream if p not in folders]
        if unread:
            raise PipelineError(f"method {name} reads phase {', '.join(unread)}, which phase 4.5 does not: add it to "
                                "4.5's upstream in common/phases.py")
        proposals[name] = proposal = method.propose(site)
        warnings += proposal.warnings
        exclusions += proposal.exclude_latents
        targets.update({(name, kind): intervention for kind, intervention in proposal.interventions.items()})
    if not targets:
        raise PipelineError("phase 4.5 has nothing to steer: " + "; ".join(warnings))
    if len(baseline) < config.min_problems_per_level:
        warnings.append(f"only {len(baseline)} hyperparams problems per level (wanted {config.min_problems_per_level})")
    for warning in warnings:
        logger.warning(warning)

    model, tokenizer = load_model_and_tokenizer(config.model_name, config.device, config.dtype)
    builder = PromptBuilder(resolve_prompt_style(config.prompt_style, tokenizer), tokenizer)
    controls, target_sets = _controls(config, site, proposals, exclusions, model.config.hidden_size, warnings)
    sample = baseline.sample(n=min(config.disruption_programs, len(baseline)), random_state=config.seed)
    texts = teacher_texts(tokenizer, sample["prompt"].tolist(), sample["raw_output"].tolist(),
                          builder.adds_special_tokens, config.disruption_max_tokens)
    levels = sorted(set(config.disruption_levels) | {config.preregistered_level})
    arms, curves = calibrate(model, texts, targets, target_sets, controls, levels, config)
    steered = [(arm, addition) for arm, addition in arms
               if arm.level in config.disruption_levels and arm.role in ("target", "selection_control")]
    curves["achieved"] = achieved_disruption(model, texts, steered)
    tasks = tuple(baseline["task_id"])
    generated = run_arms(config, phase.spec, phase.inputs, problems, baseline[BASELINE_COLUMNS],
                         [Arm(arm.name, addition, tasks) for arm, addition in steered],
                         "phase 4.5 (disruption grid)", loaded=(model, tokenizer))
    if generated is None:
        return None
    rows, generation = generated
    rows = with_outcomes(rows)
    out_dir = phase.out_dir
    grid_path = out_dir / "coefficient_grid_results.parquet"
    save_rows(rows, grid_path)
    results = {f"{method}/{kind}": _choose(config, method, kind, [a for a, _ in steered], rows, curves["achieved"])
               for method, kind in targets}
    for key, result in results.items():
        logger.info("%s: %s", key, result["rationale"])
    example_paths = _write_examples(out_dir / "coefficient_examples", [a for a, _ in steered], rows)
    outputs = save_arms(out_dir, arms) + _control_vectors(out_dir / "control_vectors", results, arms,
                                                          model.config.model_type)
    selected_path = out_dir / "selected_coefficients.json"
    save_json({"methods": results, "methods_declared": list(config.methods), "layer": layer, "position": position, "positions": site.policy,
               "preregistered_level": config.preregistered_level, "rule": RULE.format(config.max_break_rate),
               "split": "hyperparams", "n_problems": len(baseline), "warnings": warnings}, selected_path)
    similarity = _similarity_check(rows, curves["achieved"])
    plot_path = out_dir / "coefficient_analysis_plots.png"
    plot_dose_response(results, _control_points(rows, [a for a, _ in steered], curves["achieved"]),
                       {m: get_method(m).colour for m in config.methods}, plot_path)
    summary_path = out_dir / "phase_4_5_summary.json"
    save_json({"layer": layer, "position": position, "levels": list(config.disruption_levels),
               "n_controls_at_each_level": {f"{level:g}": {control_set: sum(
                   a.role == "selection_control" and a.level == level and a.control_set == control_set
                   for a, _ in steered) for control_set in sorted(set(target_sets.values()))}
                   for level in config.disruption_levels},
               "n_controls_calibrated_for_4_8": len(controls["control"]), "calibration": curves, "disruption_vs_token_similarity":
               similarity, "n_generations": int(len(rows)), "generation": generation, "warnings": warnings,
               "chosen": {key: {"level": r["level"], "alpha": r["alpha"], "chosen_by": r["chosen_by"]}
                          for key, r in results.items()}}, summary_path)
    return phase.finish([grid_path, selected_path, plot_path, summary_path, *outputs, *example_paths])


def _controls(config, site: SteeringSite, proposals: dict[str, Proposal], exclusions: list[int], d_model: int,
              warnings: list[str]) -> tuple[dict[str, list[tuple[str, Control]]], dict[str, str]]:
    """Per role, (control set, control): the shared residual controls when a method uses them, and each method's
    own (as many as the shared set has when every type is available); and each method's set. Each method with its
    own controls draws them from its own seed, set by its place in the registry (the first keeps the role's seed),
    so two KV methods never share a noise draw and the config's order of methods changes nothing."""
    target_sets = {name: SHARED_CONTROLS if get_method(name).controls is None else name for name in proposals}
    registered = [name for name, m in METHODS.items() if m.controls is not None]  # fixed order: seeds by name
    controls: dict[str, list[tuple[str, Control]]] = {}
    for role, per_type, seed in (("selection_control", config.selection_controls_per_type, config.seed),
                                 ("control", config.controls_per_type, config.seed + 1)):
        controls[role] = []
        if SHARED_CONTROLS in target_sets.values():
            shared, missing = make_controls(site, exclusions, per_type, d_model, seed)
            controls[role] += [(SHARED_CONTROLS, c) for c in shared]
            warnings += [f"{role} type left out: {m}" for m in missing]
        for name in (name for name, control_set in target_sets.items() if control_set != SHARED_CONTROLS):
            own_seed = seed + OWN_SEED_STEP * registered.index(name)
            controls[role] += [(name, c) for c in get_method(name).controls(proposals[name],
                                                                              len(CONTROL_TYPES) * per_type, own_seed)]
    return controls, target_sets


def _control_vectors(folder: Path, results: dict[str, Any], arms: list[tuple[CalibratedArm, Any]], model_hint: str
                     ) -> list[Path]:
    """Each method and class at the level in use, as a llama.cpp control vector (common/control_vectors.py), where
    it is a residual addition applied at every position."""
    paths = []
    for key, result in results.items():
        found = [i for a, i in arms
                 if a.role == "target" and f"{a.group}/{a.kind}" == key and a.level == result["level"]]
        if not found or not isinstance(found[0], ResidualAddition):
            continue
        if found[0].positions != "all" or found[0].direction.layer < 1:
            logger.info("%s: no control vector (llama.cpp adds one at every token of layers 1 and up)", key)
            continue
        paths.append(save_control_vector(folder / f"{key.replace('/', '_')}.gguf", found[:1], model_hint))
    return paths


RULE = ("per method and class, the smallest disruption level where the effect on the target class beats that level's "
        "controls with a positive one-sided 95% lower bound (direction-level prediction test), and, for the correct "
        "class, pass -> fail on passing problems is at most the controls' mean and at most {:.0%}; otherwise no "
        "effective level, and phase 4.8 runs the pre-registered level")


def _choose(config, method: str, kind: str, arms, rows: pd.DataFrame, achieved: dict[str, float]) -> dict[str, Any]:
    grid = []
    for level in sorted(config.disruption_levels):
        target = next((a for a in arms if a.role == "target" and a.group == method and a.kind == kind
                       and a.level == level), None)
        if target is None:
            grid.append({"level": level, "reachable": False})
            continue
        controls = [a.name for a in arms if a.role == "selection_control" and a.level == level
                    and a.control_set == target.control_set]
        effect, tasks = outcome_matrix(rows, [target.name, *controls], EFFECT[kind])
        breaks, _ = outcome_matrix(rows, [target.name, *controls], "broken")
        target_rows = rows[rows["arm"] == target.name]
        entry = {"level": level, "reachable": True, "alpha": target.alpha, "achieved_disruption": achieved[target.name],
                 "effect": EFFECT[kind], "versus_controls": versus_controls(effect[0], effect[1:]),
                 "break_rate": rate(int(breaks[0].sum()), breaks.shape[1]).to_dict(),
                 "controls_mean_break_rate": float(breaks[1:].mean()) if breaks.shape[0] > 1 and breaks.size else None,
                 **arm_metrics(target_rows)}
        bound = entry["versus_controls"]["difference_lower_bound"]
        preserved = kind != "correct" or (entry["controls_mean_break_rate"] is not None
                                          and entry["break_rate"]["rate"] <= entry["controls_mean_break_rate"]
                                          and entry["break_rate"]["rate"] <= config.max_break_rate)
        entry["qualifies"] = bool(bound is not None and bound > 0 and preserved)
        grid.append(entry)
    chosen = next((g for g in grid if g.get("qualifies")), None)
    if config.chosen_level is not None:
        proposed = chosen["level"] if chosen else f"none (pre-registered {config.preregistered_level:g})"
        person = next((g for g in grid if g["level"] == config.chosen_level and g.get("reachable")), None)
        return {"method": method, "class": kind, "level": config.chosen_level, "chosen_by": "person",
                "rationale": f"set by hand (--set chosen_level={config.chosen_level:g}); the rule proposed {proposed}",
                "alpha": person["alpha"] if person else None, "grid": grid}
    if chosen is not None:
        v = chosen["versus_controls"]
        rationale = (f"level {chosen['level']:g} (alpha {chosen['alpha']:.3g}): {v['target']['successes']}/"
                     f"{v['target']['trials']} {EFFECT[kind]} against controls' mean {100 * v['controls_mean_rate']:.1f}%, "
                     f"lower bound {100 * v['difference_lower_bound']:+.1f} pts")
        level, chosen_by = chosen["level"], "rule"
    else:
        level, chosen_by = config.preregistered_level, "preregistered"
        rationale = (f"no effective level: at no level did {EFFECT[kind]} beat the controls with a positive lower bound"
                     f"{' while preserving passing code' if kind == 'correct' else ''}; phase 4.8 runs the "
                     f"pre-registered level {level:g}")
    return {"method": method, "class": kind, "level": level, "chosen_by": chosen_by, "rationale": rationale,
            "alpha": chosen["alpha"] if chosen else None, "grid": grid}


def _control_points(rows: pd.DataFrame, arms, achieved: dict[str, float]) -> list[dict[str, Any]]:
    """Each control arm's fix and break rates with its achieved disruption, for the dose-response figure."""
    points = []
    for arm in (a for a in arms if a.role == "selection_control"):
        r = rows[rows["arm"] == arm.name]
        points.append({"level": arm.level, "disruption": achieved[arm.name], "type": arm.group,
                       "control_set": arm.control_set,
                       "fixed": float(r["fixed"].dropna().astype(bool).mean()) if r["fixed"].notna().any() else None,
                       "broken": float(r["broken"].dropna().astype(bool).mean()) if r["broken"].notna().any() else None})
    return points


def _similarity_check(rows: pd.DataFrame, achieved: dict[str, float]) -> dict[str, Any]:
    """Does the disruption measure agree with how far steered code moved? Spearman over arms."""
    by_arm = rows.groupby("arm")["token_similarity"].mean()
    names = [name for name in by_arm.index if name in achieved]
    if len(names) < 3:
        return {"n_arms": len(names), "spearman_rho": None}
    rho, p = spearmanr([achieved[n] for n in names], [by_arm[n] for n in names])
    return {"n_arms": len(names), "spearman_rho": float(rho), "p_value": float(p)}


def _write_examples(folder: Path, arms, rows: pd.DataFrame) -> list[Path]:
    paths = []
    for arm in (a for a in arms if a.role == "target"):
        arm_rows = rows[rows["arm"] == arm.name]
        path = folder / f"{arm.group}_{arm.kind}_level_{arm.level:g}.md"
        write_examples(path, f"{arm.group}, {arm.kind} direction, disruption {arm.level:g} nats/token (alpha "
                             f"{arm.alpha:.3g}), hyperparams problems, {int(arm_rows['flipped'].sum())} of "
                             f"{len(arm_rows)} flipped", arm_rows.sort_values("flipped", ascending=False, kind="stable"))
        paths.append(path)
    return paths
