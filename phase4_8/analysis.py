"""Phase 4.8 statistics: what each method's steering did on the validation split, against the baseline and controls.

Per method and class, on every task:
- correct class: correction (fail -> pass on initially failing tasks), preservation (pass -> pass on
  initially passing ones), and the whole-split McNemar (the two-sided test that the pass rate moved);
- incorrect class: corruption (pass -> fail on initially passing tasks);
- minus alpha (the same direction negated, same alpha): the sign should reverse the effect; it is not
  calibrated on its own (KL is not symmetric in the sign), so its comparison with controls is descriptive;
- alpha 0: flips from nothing (re-running the baseline through the steered path: the floor).
Selective steering (exploratory): steer only the tasks a phase 3.8 gate flags as likely to fail; the rest keep
their baseline program. Correction and preservation over the whole split, beside two references at the same flag
rate: a random gate (expected values), and a perfect gate (flags exactly the failing tasks).
Against controls, on `control_tasks` (the same tasks for every arm): the direction-level tests of
common/direction_inference.py against the controls calibrated to the same disruption. Within one
experiment the discordant pairs go one way, so a McNemar there only says "outcomes changed"; it is
not reported. Primary endpoints (config) get Holm-adjusted p-values (prediction test) over all methods;
everything else is exploratory.
"""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from common.direction_inference import holm, versus_controls
from common.statistics import mcnemar_exact, rate
from common.steered_runs import arm_metrics, outcome_matrix

ENDPOINT_OUTCOME = {"correction": ("correct", "fixed"), "preservation": ("correct", "kept"),
                    "corruption": ("incorrect", "broken")}


def _rate_of(rows: pd.DataFrame, outcome: str) -> dict[str, Any]:
    values = rows[outcome].dropna().astype(bool)
    return rate(int(values.sum()), len(values)).to_dict()


def arm_effects(rows: pd.DataFrame) -> dict[str, Any]:
    """Every rate of one arm over the whole split, with counts and Wilson intervals."""
    fixed, broken = rows["fixed"].dropna().astype(bool), rows["broken"].dropna().astype(bool)
    return {"correction": _rate_of(rows, "fixed"), "preservation": _rate_of(rows, "kept"),
            "corruption": _rate_of(rows, "broken"),
            "whole_split": {"baseline_pass_rate": rate(int(rows["baseline_passed"].sum()), len(rows)).to_dict(),
                            "steered_pass_rate": rate(int(rows["steered_passed"].sum()), len(rows)).to_dict(),
                            "fail_to_pass": int(fixed.sum()), "pass_to_fail": int(broken.sum()),
                            "mcnemar_p": mcnemar_exact(int(fixed.sum()), int(broken.sum()))},
            **arm_metrics(rows)}


def selective_effects(rows: pd.DataFrame, flagged: pd.Series) -> dict[str, Any]:
    """One arm's correction and preservation had only the flagged tasks been steered (a task's steered program does
    not depend on the other rows, so the full arm's rows give it without generating again)."""
    on = flagged.reindex(rows["task_id"]).fillna(True).to_numpy(dtype=bool)
    passing = rows["baseline_passed"].to_numpy(dtype=bool)
    fixed = rows["fixed"].fillna(False).to_numpy(dtype=bool)
    broken = rows["broken"].fillna(False).to_numpy(dtype=bool)
    n_failing, n_passing = int((~passing).sum()), int(passing.sum())
    flag_rate = float(on.mean()) if len(on) else float("nan")
    full_fixed, full_broken = int(fixed.sum()), int(broken.sum())
    return {"flagged": {"failing": rate(int((on & ~passing).sum()), n_failing).to_dict(),
                        "passing": rate(int((on & passing).sum()), n_passing).to_dict()},
            "correction": rate(int((fixed & on).sum()), n_failing).to_dict(),
            "preservation": rate(n_passing - int((broken & on).sum()), n_passing).to_dict(),
            "net_tasks_fixed": int((fixed & on).sum()) - int((broken & on).sum()),
            "full_arm": {"correction": rate(full_fixed, n_failing).to_dict(),
                         "preservation": rate(n_passing - full_broken, n_passing).to_dict(),
                         "net_tasks_fixed": full_fixed - full_broken},
            "random_gate_expected": {"correction": full_fixed * flag_rate / max(n_failing, 1),
                                     "preservation": 1 - full_broken * flag_rate / max(n_passing, 1)},
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
