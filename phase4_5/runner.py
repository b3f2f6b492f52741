"""Phase 4.5: which steering coefficient to use, found on the hyperparams split (seed 001).

The decoder rows of phase 2.5's best correct-preferring and best incorrect-preferring latents are
added at their layers during greedy generation, at every coefficient of the grid, on the same
`problems_per_coefficient` problems (complexity-stratified): the correct direction on problems the
baseline (phase 3.6) fails, the incorrect direction on problems it passes. Per coefficient: flip
rate, steered pass rate, syntax-error rate and how far the code moved. A coefficient is proposed by
a stated rule; `--set correct_coefficient=... incorrect_coefficient=...` overrides it. The
generations stay in `checkpoint/`, so changing only the choice reruns in seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.activation_cache import mean_residual_norms
from common.config import Config
from common.directions import SteeringDirection, load_directions
from common.errors import PipelineError
from common.logging import get_logger
from common.phases import get_phase
from common.prompt_utils import PromptBuilder, resolve_prompt_style
from common.steered_runs import BASELINE_COLUMNS, Arm, save_rows, arm_metrics, run_arms, write_examples
from common.interventions import ResidualAddition
from common.utils import (discover_latest_phase_output, phase_dir, save_json, upstream_inputs,
    write_manifest)
from common_simplified.model_loader import load_model_and_tokenizer
from phase4_5.plots import plot_coefficient_effects

logger = get_logger("phase4_5")

KINDS = {"correct": "initially failing", "incorrect": "initially passing"}  # direction -> problems it is tried on


def run(config: Config) -> Path | None:
    spec = get_phase("4.5")
    inputs = upstream_inputs(config, spec)
    folder = {phase: discover_latest_phase_output(phase, config.data_dir).parent for phase in spec.upstream}
    baseline = pd.read_parquet(folder["3.6"] / "dataset_hyperparams_temp_0_0.parquet", columns=BASELINE_COLUMNS)
    problems = pd.read_parquet(folder["0.1"] / "hyperparams.parquet")
    best = best_latent_directions(folder["2.5"] / "latent_directions.safetensors", config.steering_direction_position)
    selected, warnings = _problems_to_steer(config, baseline, best)
    for warning in warnings:
        logger.warning(warning)
    if not selected:
        raise PipelineError("phase 4.5 has nothing to steer: " + "; ".join(warnings))

    model, tokenizer = load_model_and_tokenizer(config.model_name, config.device, config.dtype)
    builder = PromptBuilder(resolve_prompt_style(config.prompt_style, tokenizer), tokenizer)
    steered_prompts = pd.concat(list(selected.values()))["prompt"].tolist()
    norms = mean_residual_norms(model, tokenizer, steered_prompts, sorted({best[kind].layer for kind in selected}),
                                builder.adds_special_tokens)
    grid = sorted(config.steering_coefficients)
    arms = [Arm(f"{kind}@{c:g}", ResidualAddition(best[kind], _alpha(config, c, norms[best[kind].layer]),
                                            config.steering_positions), tuple(selected[kind]["task_id"]))
            for kind in selected for c in grid]
    steered = run_arms(config, spec, inputs, problems, baseline, arms, "phase 4.5 (coefficient grid)",
                       loaded=(model, tokenizer))
    if steered is None:
        return None
    rows, generation = steered

    out_dir = phase_dir(config, spec.id)
    grid_path = out_dir / "coefficient_grid_results.parquet"
    save_rows(rows, grid_path)
    results: dict[str, Any] = {}
    example_paths = []
    for kind in selected:
        by_coefficient = []
        for c in grid:
            arm_rows = rows[rows["arm"] == f"{kind}@{c:g}"]
            by_coefficient.append({"coefficient": c, "alpha": _alpha(config, c, norms[best[kind].layer]),
                                   **arm_metrics(arm_rows)})
            path = out_dir / "coefficient_examples" / f"{kind}_coeff_{c:g}.md"
            write_examples(path, f"{kind} steering, coefficient {c:g} ({best[kind].name}), on {KINDS[kind]} "
                                 "hyperparams problems", arm_rows)
            example_paths.append(path)
        results[kind] = _choice(config, kind, best[kind], by_coefficient, norms[best[kind].layer],
                                selected[kind], len(baseline))
        logger.info("%s steering: %s", kind, results[kind]["rationale"])

    selected_path = out_dir / "selected_coefficients.json"
    save_json({**results, "rule": PROPOSAL_RULE.format(validity=config.min_valid_code_rate),
               "coefficient_scale": config.coefficient_scale, "positions": config.steering_positions,
               "split": "hyperparams", "warnings": warnings}, selected_path)
    plot_path = out_dir / "coefficient_analysis_plots.png"
    plot_coefficient_effects(results, plot_path)
    summary_path = out_dir / "phase_4_5_summary.json"
    save_json({"grid": grid, "coefficient_scale": config.coefficient_scale, "positions": config.steering_positions,
               "mean_residual_norm": {str(layer): norm for layer, norm in norms.items()},
               "n_generations": int(len(rows)), "generation": generation, "warnings": warnings,
               "by_direction": {kind: {"direction": r["direction"], "selected_coefficient": r["coefficient"],
                                       "chosen_by": r["chosen_by"], "grid": r["grid"]} for kind, r in results.items()}},
              summary_path)
    return write_manifest(config, spec, inputs, [grid_path, selected_path, plot_path, summary_path, *example_paths])


def best_latent_directions(path: Path, position: str) -> dict[str, SteeringDirection]:
    """Phase 2.5's rank-1 latent of each class at one activation position, by the class it prefers."""
    return {d.provenance["prefers"]: d for d in load_directions(path)
            if d.source == "sae_latent" and d.provenance.get("rank") == 1 and d.position == position}


def _problems_to_steer(config: Config, baseline: pd.DataFrame, best: dict[str, SteeringDirection]
                       ) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Per direction, its complexity-stratified problems (failing ones for correct, passing for incorrect)."""
    selected, warnings = {}, []
    for kind, pool_name in KINDS.items():
        pool = baseline[~baseline["test_passed"]] if kind == "correct" else baseline[baseline["test_passed"]]
        if kind not in best:
            warnings.append(f"phase 2.5 listed no {kind}-preferring latent (see its warnings: a class may be "
                            f"missing on the sae split): {kind} steering is skipped")
        elif pool.empty:
            warnings.append(f"no {pool_name} problems on the hyperparams split: {kind} steering is skipped")
        else:
            if len(pool) < config.problems_per_coefficient:
                warnings.append(f"only {len(pool)} {pool_name} problems (wanted {config.problems_per_coefficient}): "
                                f"{kind} steering uses all of them")
            selected[kind] = stratified_by_complexity(pool, config.problems_per_coefficient, config.seed)
    return selected, warnings


def stratified_by_complexity(pool: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """`n` problems spread over the complexity range: sort by complexity, cut into n equal bins, draw one
    from each. The pool itself when it holds n or fewer."""
    if len(pool) <= n:
        return pool
    ordered = pool.sort_values(["cyclomatic_complexity", "task_id"], kind="stable").reset_index(drop=True)
    rng = np.random.default_rng(seed)
    picks = [int(rng.choice(chunk)) for chunk in np.array_split(np.arange(len(ordered)), n)]
    return ordered.iloc[picks]


def _alpha(config: Config, coefficient: float, residual_norm: float) -> float:
    return coefficient * residual_norm if config.coefficient_scale == "residual_norm" else coefficient


PROPOSAL_RULE = ("among coefficients whose steered programs are valid (parse and define the function under test) at "
                 "least {validity:.0%} of the time, the one "
                 "with the most flips (the smallest on ties); if none flips anything, the largest such coefficient; "
                 "if none keeps that validity, the smallest coefficient")


def propose_coefficient(by_coefficient: list[dict[str, Any]], min_validity: float) -> tuple[float, str]:
    valid = [m for m in by_coefficient if m["valid_code_rate"]["rate"] >= min_validity - 1e-12]
    if not valid:
        return by_coefficient[0]["coefficient"], (f"no coefficient kept valid code >= {min_validity:.0%}; "
                                                  "the smallest is proposed")
    most = max(m["flip_rate"]["successes"] for m in valid)
    if most == 0:
        chosen = valid[-1]
        return chosen["coefficient"], (f"no coefficient flipped any of the {chosen['n_problems']} problems; the largest "
                                       f"with valid code >= {min_validity:.0%} is proposed")
    chosen = next(m for m in valid if m["flip_rate"]["successes"] == most)
    flips = chosen["flip_rate"]
    return chosen["coefficient"], (f"most flips with valid code >= {min_validity:.0%}: {flips['successes']}/"
                                   f"{flips['trials']} at coefficient {chosen['coefficient']:g}")


def _choice(config: Config, kind: str, direction: SteeringDirection, by_coefficient: list[dict[str, Any]],
            residual_norm: float, problems: pd.DataFrame, n_split: int) -> dict[str, Any]:
    proposed, rationale = propose_coefficient(by_coefficient, config.min_valid_code_rate)
    override = getattr(config, f"{kind}_coefficient")
    coefficient = proposed if override is None else override
    metrics = next((m for m in by_coefficient if m["coefficient"] == coefficient), None)
    if override is not None:
        rationale = f"set by hand (--set {kind}_coefficient={override:g}); the rule proposed {proposed:g}: {rationale}"
        if metrics is None:
            rationale += f"; {override:g} is not on the grid, so it has no metrics here"
    return {"coefficient": coefficient, "alpha": _alpha(config, coefficient, residual_norm),
            "coefficient_scale": config.coefficient_scale, "mean_residual_norm": residual_norm,
            "chosen_by": "override" if override is not None else "rule", "proposed_coefficient": proposed,
            "rationale": rationale, "direction": direction.name, "layer": direction.layer,
            "feature_index": direction.provenance.get("feature_idx"), "positions": config.steering_positions,
            "separation_score": direction.provenance.get("separation_score"), "metrics": metrics,
            "problems": [str(t) for t in problems["task_id"]], "n_problems_evaluated": int(len(problems)),
            "n_problems_in_split": n_split, "grid": by_coefficient}
