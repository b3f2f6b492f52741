"""Phase 4.8 statistics: what each method's steering did on the validation split, against the baseline and controls.

Per method and class, on every task:
- correct class: correction (fail -> pass on initially failing tasks), preservation (pass -> pass on
  initially passing ones), and the whole-split McNemar (the two-sided test that the pass rate moved);
- incorrect class: corruption (pass -> fail on initially passing tasks);
- minus alpha (the same direction negated, same alpha): the sign should reverse the effect; it is not
  calibrated on its own (KL is not symmetric in the sign), so its comparison with controls is descriptive;
- alpha 0: flips from nothing (re-running the baseline through the steered path: the floor).
Selective steering (exploratory): steer only the tasks a phase 3.8 gate flags as likely to fail; the rest keep
their baseline program. Correction and preservation over the whole split, beside gates that know nothing of which
tasks steering fixes (expected values; one of them class-matched, with a hypergeometric test of the fixes kept) and a
perfect gate (flags exactly the failing tasks).
Against controls, on `control_tasks` (the same tasks for every arm): the direction-level tests of
common/direction_inference.py against the controls calibrated to the same disruption. Within one
experiment the discordant pairs go one way, so a McNemar there only says "outcomes changed"; it is
not reported. Primary endpoints (config) get Holm-adjusted p-values (prediction test) over all methods;
everything else is exploratory.
"""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

import numpy as np
from scipy.stats import hypergeom

from common.direction_inference import holm, versus_controls
from common.errors import PipelineError
from common.statistics import rate
from common.steered_runs import arm_metrics, endpoint_rates, outcome_matrix, with_outcomes

ENDPOINT_OUTCOME = {"correction": ("correct", "fixed"), "preservation": ("correct", "kept"),
                    "corruption": ("incorrect", "broken")}


def arm_effects(rows: pd.DataFrame) -> dict[str, Any]:
    """Every rate of one arm: the endpoints, and flips, valid code and divergence (common/steered_runs.py)."""
    return {**endpoint_rates(rows), **arm_metrics(rows)}


def selective_effects(rows: pd.DataFrame, flagged: pd.Series) -> dict[str, Any]:
    """One arm's rates had only the flagged tasks been steered (a task's steered program does not depend on the
    other rows, so the full arm's rows give it without generating again), beside two gates that know nothing of
    which tasks steering fixes: one flagging the same share of all tasks, and one flagging the same share of the
    failing and of the passing tasks (a perfect pass/fail detector at this gate's error rates). The hypergeometric
    p asks whether the gate kept more or fewer of the full arm's fixes than the class-matched gate would. `rows`
    come without the steered programs the sandbox could not judge, so such a task is out even when unflagged."""
    missing = sorted(set(rows["task_id"]) - set(flagged.index))
    if missing:
        raise PipelineError(f"phase 3.8's gate flags miss {len(missing)} steered tasks (e.g. {missing[0]}): rerun "
                            "phase 3.8 on the current phase 3.5 output")
    on = flagged.loc[rows["task_id"]].to_numpy(dtype=bool)
    passing = rows["baseline_passed"].to_numpy(dtype=bool)
    gated = rows.assign(steered_passed=np.where(on, rows["steered_passed"], rows["baseline_passed"]))
    effects, full = endpoint_rates(with_outcomes(gated)), endpoint_rates(rows)
    n_failing, n_passing = int((~passing).sum()), int(passing.sum())
    full_fixed, full_broken = full["correction"]["successes"], n_passing - full["preservation"]["successes"]
    flagged_failing, flagged_passing = int((on & ~passing).sum()), int((on & passing).sum())
    kept_fixes = effects["correction"]["successes"]
    fewer = hypergeom.cdf(kept_fixes, n_failing, full_fixed, flagged_failing)
    more = hypergeom.sf(kept_fixes - 1, n_failing, full_fixed, flagged_failing)
    return {"flagged": {"failing": rate(flagged_failing, n_failing).to_dict(),
                        "passing": rate(flagged_passing, n_passing).to_dict()},
            "correction": effects["correction"], "preservation": effects["preservation"],
            "whole_split": effects["whole_split"],
            "net_tasks_fixed": kept_fixes - (n_passing - effects["preservation"]["successes"]),
            "full_arm": {"correction": full["correction"], "preservation": full["preservation"],
                         "net_tasks_fixed": full_fixed - full_broken},
            "uninformed_gate_expected": {"correction": full_fixed * on.mean() / max(n_failing, 1),
                                         "preservation": 1 - full_broken * on.mean() / max(n_passing, 1)},
            "class_matched_gate_expected": {
                "fixes_kept": full_fixed * flagged_failing / max(n_failing, 1),
                "correction": full_fixed * flagged_failing / max(n_failing, 1) ** 2,
                "preservation": 1 - full_broken * flagged_passing / max(n_passing, 1) ** 2,
                "fixes_kept_p": min(1.0, 2 * min(fewer, more))},
            "perfect_gate": {"correction": full_fixed / max(n_failing, 1), "preservation": 1.0}}


def versus_level_controls(rows: pd.DataFrame, target: str, controls: Sequence[str]) -> dict[str, Any]:
    """The target against its disruption-matched controls on the control tasks, for each endpoint."""
    out = {}
    for endpoint, (_, outcome) in ENDPOINT_OUTCOME.items():
        matrix, tasks = outcome_matrix(rows, [target, *controls], outcome)
        out[endpoint] = {**versus_controls(matrix[0], matrix[1:]), "n_tasks": len(tasks)}
    return out


def primary_tests(methods: dict[str, Any], declared_methods: Sequence[str], endpoints: Sequence[str]
                  ) -> dict[str, Any]:
    """Holm over the prediction p-values of every declared (method, primary endpoint): the family is fixed by the
    config, not by what ran, so an arm that could not run counts as p = 1. (The rank p cannot serve: with m
    controls it is at least 1 / (m + 1), too large to survive Holm over several endpoints.)"""
    raw, missing = {}, []
    for name in declared_methods:
        for endpoint in endpoints:
            kind = ENDPOINT_OUTCOME[endpoint][0]
            p = methods.get(name, {}).get(kind, {}).get("versus_controls", {}).get(endpoint, {}).get("prediction_p")
            raw[f"{name}/{endpoint}"] = 1.0 if p is None else p
            if p is None:
                missing.append(f"{name}/{endpoint}")
    adjusted = holm(raw)
    return {key: {"p": raw[key], "holm_p": adjusted[key], "ran": key not in missing} for key in raw}
