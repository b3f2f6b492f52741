"""Phase 4.8 statistics: what steering did to each task, against the baseline and against controls.

Experiments (on the validation split's greedy baseline):
- correction: correct direction on initially failing tasks, rate of fail -> pass;
- preservation: correct direction on initially passing tasks, rate of pass -> pass;
- corruption: incorrect direction on initially passing tasks, rate of pass -> fail.
Against the baseline: exact McNemar on the paired outcomes. On the tasks of one experiment the
discordant pairs can only go one way, so that p-value says only "outcomes changed"; for the correct
direction the whole split (correction and preservation together) gives the two-sided test of
"the pass rate moved". Against controls, on the same tasks, at the same layer and alpha: the
inference is at the direction level (`common.direction_inference.versus_controls`: the target's
rank among its controls and the prediction test), because directions differ more than tasks;
`compare_with_controls` (Fisher on pooled rows, a task bootstrap with the controls fixed) and
`given_valid_code` (the same among steered programs that still parse) are descriptive only. The
direction-level test needs the target exchangeable with its controls under the null; these controls
match layer and alpha, not disruption, so its p-values are exploratory here.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from scipy.stats import fisher_exact

from common.direction_inference import versus_controls
from common.statistics import compare_with_controls, mcnemar_exact, rate

EXPERIMENTS = {"correct": ("correction", "preservation"), "incorrect": ("corruption",)}
METHODS = ("sae", "mean_difference")


def arm_name(method: str, kind: str) -> str:
    return f"{method}/{kind}"


def control_arm_name(kind: str, direction_name: str) -> str:
    return f"control/{kind}/{direction_name}"


def steering_effects(rows: pd.DataFrame, bootstrap_samples: int, seed: int) -> dict[str, Any]:
    """`rows`: one per (arm, task) from common.steered_runs.run_arms."""
    results: dict[str, Any] = {}
    for kind, experiments in EXPERIMENTS.items():
        control_rows = rows[rows["arm"].str.startswith(f"control/{kind}/")]
        by_method = {}
        for method in METHODS:
            target = rows[rows["arm"] == arm_name(method, kind)]
            if target.empty:
                continue
            by_method[method] = _method_effects(target, kind, control_rows, bootstrap_samples, seed)
        if by_method or not control_rows.empty:
            results[kind] = {"experiments": list(experiments), "by_method": by_method,
                             "controls": _control_rates(control_rows)}
    return results


def _method_effects(target: pd.DataFrame, kind: str, control_rows: pd.DataFrame, bootstrap_samples: int,
                    seed: int) -> dict[str, Any]:
    failing, passing = target[~target["baseline_passed"]], target[target["baseline_passed"]]
    corrected = int(failing["steered_passed"].sum())
    broken = int((~passing["steered_passed"]).sum())
    if kind == "correct":
        on_tasks = failing
        effects: dict[str, Any] = {
            "correction": {**rate(corrected, len(failing)).to_dict(),
                           "mcnemar_p": mcnemar_exact(corrected, 0), "mcnemar_tasks": "initially failing"},
            "preservation": rate(len(passing) - broken, len(passing)).to_dict(),
            "whole_split": {"baseline_pass_rate": rate(int(target["baseline_passed"].sum()), len(target)).to_dict(),
                            "steered_pass_rate": rate(int(target["steered_passed"].sum()), len(target)).to_dict(),
                            "fail_to_pass": corrected, "pass_to_fail": broken,
                            "mcnemar_p": mcnemar_exact(corrected, broken)}}
        experiment = "correction"
    else:
        on_tasks = passing
        effects = {"corruption": {**rate(broken, len(passing)).to_dict(), "mcnemar_p": mcnemar_exact(0, broken),
                                  "mcnemar_tasks": "initially passing"}}
        experiment = "corruption"
    for name, tasks in (("correction", failing), ("preservation", passing), ("corruption", passing)):
        if name in effects:
            effects[name]["steered_valid_code"] = _valid_code(tasks)
    if not control_rows.empty:
        controls = control_rows.pivot(index="task_id", columns="arm", values="flipped")
        shared = controls.dropna().index.intersection(on_tasks["task_id"])
        flips = on_tasks.set_index("task_id").loc[shared, "flipped"].to_numpy(dtype=bool)
        control_flips = controls.loc[shared].to_numpy(dtype=bool).T
        effects[experiment]["direction_level"] = versus_controls(flips, control_flips)
        effects[experiment]["vs_controls"] = {**compare_with_controls(flips, control_flips, bootstrap_samples, seed),
                                              "descriptive": "rows pooled over control directions; not a test"}
        effects[experiment]["given_valid_code"] = given_valid_code(
            on_tasks[on_tasks["task_id"].isin(shared)], control_rows[control_rows["task_id"].isin(shared)])
    effects["direction"] = str(target["direction"].iloc[0])
    effects["layer"] = int(target["layer"].iloc[0])
    effects["alpha"] = float(target["alpha"].iloc[0])
    effects["mean_token_similarity"] = float(target["token_similarity"].mean())
    return effects


def given_valid_code(target: pd.DataFrame, controls: pd.DataFrame) -> dict[str, Any]:
    """Flip rate among steered programs that still parse and define the function, target against pooled
    controls. Separates "this direction changes behaviour" from "this direction breaks less code than a
    random push of the same size". The two subsets are different tasks, so no pairing: Fisher's exact test."""
    target, controls = target[target["steered_valid_code"]], controls[controls["steered_valid_code"]]
    k, big_k = int(target["flipped"].sum()), int(controls["flipped"].sum())
    fisher_p = (float(fisher_exact([[k, len(target) - k], [big_k, len(controls) - big_k]])[1])
                if len(target) and len(controls) else None)
    return {"target": rate(k, len(target)).to_dict(), "pooled_control": rate(big_k, len(controls)).to_dict(),
            "fisher_p": fisher_p}


def _valid_code(rows: pd.DataFrame) -> dict[str, Any]:
    """How much of the steered code still parses and defines the function: a direction that breaks
    less code has more chances to flip fail -> pass, so this stands beside every rate."""
    return rate(int(rows["steered_valid_code"].sum()), len(rows)).to_dict()


def _control_rates(control_rows: pd.DataFrame) -> dict[str, Any]:
    if control_rows.empty:
        return {"pooled": None, "pooled_steered_valid_code": None, "individual": []}
    individual = [{"arm": arm, "direction": str(group["direction"].iloc[0]), "source": str(group["source"].iloc[0]),
                   **rate(int(group["flipped"].sum()), len(group)).to_dict(),
                   "steered_valid_code": _valid_code(group)}
                  for arm, group in control_rows.groupby("arm", sort=True)]
    return {"pooled": rate(int(control_rows["flipped"].sum()), len(control_rows)).to_dict(),
            "pooled_steered_valid_code": _valid_code(control_rows), "individual": individual}
