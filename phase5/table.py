"""Phase 5's head-to-head rows: every steering method, adapter arm, score and baseline, with the figures the phases
that measured them wrote. Nothing is fitted or chosen here: a detection figure is the one phase 3.8 or 3.9 reported
on validation for the candidate chosen on hyperparams, a steering figure the one phase 4.8 or 4.9 measured at the
level chosen on hyperparams (4.5) or at c = +1 / -1.

Rows, in this order:
- `method`: each method phase 4.8 steered with (common/methods.py), its detection the score its registry entry
  names at 4.8's steering position, its steering the correct-class arm (correction, preservation, valid code) and
  the incorrect-class arm (corruption), each against its disruption-matched controls, with the Holm-adjusted
  primary p-values of 4.8's family;
- `floor`: 4.8's alpha-0 arm, the steered path doing nothing (flips from nothing);
- `adapter arm`: each arm of 4.9's coefficient sweep at c = +1 (correction, preservation, valid code) and c = -1
  (corruption) against the unsteered programs of the same tasks, with 4.9's own Holm family;
- `score`: phase 3.8's score families no method claims (detection only);
- `baseline`: phase 3.8's baselines (detection only), the one chosen on hyperparams and the declared one
  marked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from common.baselines import STRONGEST_DECLARED
from common.methods import METHODS
from common.steered_runs import endpoint_rates, with_outcomes

SWEEP_TITLES = {"svd_rotation": "SVD-rotation adapter", "lora": "LoRA adapter (PEFT)",
                "random_same_norm": "random adapter, trained norms",
                "mean_difference": "mean difference at matched NLL (4.9)",
                "prompting": "system prompt (careful / quick)"}
LOGPROB = "program_mean_logprob"  # the baseline phase 3.9 sets its calibrated confidence against first
# what phase 3.9's calibrator reads (phase3_9/runner.py `_features`): not the program's activations, so its
# within-task ranking is the margin's alone (a task's programs share their last-prompt routing)
DICTIONARY_READS = "the routing of the last-prompt activation and the program's mean margin"


@dataclass(frozen=True)
class Sources:
    """What the table reads: each measuring phase's results, parsed, and every phase's recorded cost."""
    evaluation: dict[str, Any]  # 3.8 evaluation_results.json
    calibration: dict[str, Any] | None  # 3.9 calibration_results.json; None when 3.9 made no dictionary
    calibration_missing: str | None  # why not
    steering: dict[str, Any]  # 4.8 steering_effect_analysis.json
    steered_rows: pd.DataFrame  # 4.8 steered_results.parquet
    sweep: dict[str, Any]  # 4.9 phase_4_9_summary.json (only `no_adapter_reason` when 2.9 trained none)
    sweep_rows: pd.DataFrame | None  # 4.9 sweep_rows.parquet; None when 4.9 swept nothing
    adapters: dict[str, Any]  # 2.9 phase_2_9_summary.json
    costs: dict[str, dict[str, Any]]  # phase id -> its manifest's "cost" (absent when the phase predates it)


def head_to_head(sources: Sources) -> list[dict[str, Any]]:
    position = sources.steering["position"]
    claimed = {METHODS[m].detection for m in sources.steering["methods"] if m in METHODS and METHODS[m].detection}
    return [*_method_rows(sources, position), _floor_row(sources), *_sweep_rows(sources),
            *_score_rows(sources, position, claimed), *_baseline_rows(sources)]


def _row(name: str, title: str, kind: str, detection: dict[str, Any] | None = None,
         steering: dict[str, Any] | None = None, cost: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "title": title, "kind": kind, "detection": detection, "steering": steering, "cost": cost}


# --- detection -------------------------------------------------------------------------------------------------

def _interval(result: dict[str, Any] | None, key: str) -> dict[str, Any] | None:
    """{value, low, high} of a phase's figure (and its pairs, where it counts them), None where it has none (NaN:
    a class was missing)."""
    if not result or result.get(key) is None or result[key] != result[key]:
        return None
    pairs = {k: result[k] for k in ("n_pairs", "n_tasks_with_both_classes") if k in result}
    return {"value": float(result[key]), "low": result.get("low"), "high": result.get("high"), **pairs}


def _over(result: dict[str, Any] | None, measure: str, key: str = "difference") -> dict[str, Any] | None:
    """A gain over a named baseline: {baseline, measure, value, low, high}, None where there is none."""
    gain = _interval(result, key)
    return {"baseline": result["baseline"], "measure": measure, **gain} if gain else None


def _from_evaluation_row(row: dict[str, Any], source: str) -> dict[str, Any]:
    """A phase 3.8 row: a score, not a probability (no Brier or ECE); its incremental AUROC over its comparison
    baseline, the one chosen on hyperparams, and over the one declared before any data (confidence and length)."""
    validation = row["validation"]
    within = row.get("within_task") or {}
    return {"source": source, "predicts": row["predicts"], "auroc": _interval(validation, "auroc"),
            "n_programs": int(validation.get("n_positive", 0) + validation.get("n_negative", 0)),
            "within_task_auroc": _interval(within, "auroc"), "within_task_reason": within.get("reason"),
            "over_comparison_baseline": _over(row.get("over_best_baseline"), "incremental AUROC"),
            "over_declared_baseline": _over(row.get("over_declared"), "incremental AUROC"),
            "brier": None, "ece": None, "brier_no_skill": None}


def _family_row(sources: Sources, position: str, family: str) -> dict[str, Any] | None:
    for row in sources.evaluation["table"]:
        if row["kind"] == "score" and row["position"] == position and row["score"].split(": ")[0] == family:
            return row
    return None


def _detection(sources: Sources, position: str, declared: tuple[str, str] | None) -> dict[str, Any]:
    if declared is None:
        return {"reason": "no detector reads this method's intervention"}
    phase_id, score = declared
    if phase_id == "3.8":
        row = _family_row(sources, position, score)
        if row is None:
            return {"reason": f"phase 3.8 has no {score} score at {position}"}
        return _from_evaluation_row(row, f"3.8 {row['score']} at {position}")
    if sources.calibration is None:
        return {"reason": f"phase 3.9 made no dictionary ({sources.calibration_missing})"}
    found = sources.calibration["predictors"].get(score)
    if found is None:
        return {"reason": f"phase 3.9 reports no {score}"}
    where = f"layer {sources.calibration['layer']}: {DICTIONARY_READS}"
    return _calibrated(found, sources.calibration.get("confidence_minus", {}), f"3.9 {score}, {where}")


def _calibrated(predictor: dict[str, Any], compared: dict[str, Any], source: str) -> dict[str, Any]:
    """A phase 3.9 predictor: a probability, so Brier and ECE beside its AUROC, and the Brier of always saying the
    pass rate (p(1 - p)); `compared`: 3.9's AUROC differences from baselines on the same programs (the confidence in
    place of the baseline, not added to it), against its comparison baseline, the model's mean log-probability (seed
    000), and against the declared baseline."""
    within = predictor.get("within_task_auroc") or {}
    rate = predictor["n_passing"] / predictor["n_programs"] if predictor.get("n_programs") else None

    def versus(name: str) -> dict[str, Any] | None:
        found = compared.get(name)
        return _over({**found["auroc"], "baseline": name}, "AUROC difference") if found else None

    return {"source": source, "predicts": "pass", "auroc": _interval(predictor.get("auroc"), "value"),
            "n_programs": predictor.get("n_programs"), "within_task_auroc": _interval(within, "auroc"),
            "within_task_reason": None if within else "one score per task",
            "over_comparison_baseline": versus(LOGPROB), "over_declared_baseline": versus(STRONGEST_DECLARED),
            "brier": _interval(predictor.get("brier"), "value"), "ece": _interval(predictor.get("ece"), "value"),
            "brier_no_skill": None if rate is None else rate * (1 - rate)}


# --- steering --------------------------------------------------------------------------------------------------

def _versus(result: dict[str, Any], endpoint: str) -> dict[str, Any] | None:
    """The arm against its disruption-matched controls on the control tasks: its own rate there, the controls' mean,
    how many controls reach it, and the rank and prediction p."""
    versus = result.get("versus_controls", {}).get(endpoint)
    if not versus or versus.get("rank_p") is None:
        return None
    return {"target": versus["target"], "controls_mean_rate": versus["controls_mean_rate"],
            "controls_at_or_above": versus["controls_at_or_above_target"], "n_controls": versus["n_controls"],
            "n_tasks": versus["n_tasks"], "rank_p": versus["rank_p"], "prediction_p": versus["prediction_p"]}


def _primary(holm_by_key: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """Each primary endpoint of one method: its Holm-adjusted p, and whether it ran (one that did not counts as
    p = 1 in the family)."""
    return {key.split("/", 1)[1]: value for key, value in holm_by_key.items() if key.split("/", 1)[0] == name}


def _seconds_per_program(rows: pd.DataFrame, column: str) -> dict[str, Any] | None:
    if column not in rows or rows.empty:
        return None
    times = rows[column].dropna().to_numpy(dtype=float)
    return {"mean": float(times.mean()), "n_programs": int(len(times))} if len(times) else None


def _recorded(sources: Sources, phases: tuple[str, ...], key: str) -> list[float] | None:
    """Each phase's recorded cost figure; None unless every phase recorded it."""
    found = [sources.costs[p][key] for p in phases if key in sources.costs.get(p, {})]
    return found if phases and len(found) == len(phases) else None


def _making(sources: Sources, phases: tuple[str, ...]) -> dict[str, Any]:
    """What the phases that made a method cost: their summed wall time and their largest peaks."""
    wall, resident, cuda = (_recorded(sources, phases, key) for key in (
        "wall_s", "peak_resident_mib", "peak_cuda_allocated_mib"))
    return {"making_s": sum(wall) if wall else None, "making_phases": list(phases),
            "making_peak_mib": max(resident) if resident else None,
            "making_peak_cuda_mib": max(cuda) if cuda else None}


def _steering_cost(sources: Sources, rows: pd.DataFrame, column: str, phase_id: str) -> dict[str, Any]:
    resident, cuda = (_recorded(sources, (phase_id,), key) for key in ("peak_resident_mib", "peak_cuda_allocated_mib"))
    return {"seconds_per_steered_program": _seconds_per_program(rows, column),
            "steering_peak_mib": resident[0] if resident else None, "steering_peak_cuda_mib": cuda[0] if cuda else None}


def _method_rows(sources: Sources, position: str) -> list[dict[str, Any]]:
    """A declared method 4.5 calibrated at no level it runs at has a row too: its primary endpoints count as p = 1
    in 4.8's Holm family, and a row that vanished would hide them."""
    analysis, rows = sources.steering, sources.steered_rows
    declared = {key.split("/", 1)[0] for key in analysis["primary"]}
    out = []
    for name in [m for m in METHODS if m in analysis["methods"] or m in declared]:
        by_class, method = analysis["methods"].get(name, {}), METHODS[name]
        correct, incorrect = by_class.get("correct", {}), by_class.get("incorrect", {})
        arms = [r[key] for r in by_class.values() for key in ("arm", "minus_arm")]
        steering = {
            "protocol": "4.8", "n_tasks": analysis["baseline"]["n_tasks"] if by_class else 0,
            "disruption": {"measure": "KL per token (4.5 level)" if by_class else
                           "did not run: phase 4.5 calibrated it at no level to run",
                           **{kind: {"level": r["level"], "alpha": r["alpha"], "chosen_by": r["chosen_by"]}
                              for kind, r in by_class.items()}},
            "correction": correct.get("correction"), "preservation": correct.get("preservation"),
            "corruption": incorrect.get("corruption"), "valid_code_rate": correct.get("valid_code_rate"),
            "versus_controls": {"correction": _versus(correct, "correction"),
                                "preservation": _versus(correct, "preservation"),
                                "corruption": _versus(incorrect, "corruption")},
            "primary": _primary(analysis["primary"], name)}
        steered = _steering_cost(sources, rows[rows["arm"].isin(arms)], "generation_s", "4.8") if by_class else {}
        cost = {**_making(sources, method.training_phases), **steered}
        out.append(_row(name, method.title, "method", _detection(sources, position, method.detection), steering,
                        cost))
    return out


def _floor_row(sources: Sources) -> dict[str, Any]:
    floor = sources.steering["alpha_0"]
    steering = {"protocol": "4.8", "n_tasks": floor["n_problems"], "disruption": {"measure": "none (alpha 0)"},
                "correction": floor["correction"], "preservation": floor["preservation"],
                "corruption": floor["corruption"], "valid_code_rate": floor["valid_code_rate"]}
    rows = sources.steered_rows
    return _row("alpha_0", "alpha 0 (the steered path doing nothing)", "floor", None, steering,
                _steering_cost(sources, rows[rows["arm"] == "alpha_0"], "generation_s", "4.8"))


def sweep_outcomes(sweep_rows: pd.DataFrame, arm: str, coefficient: float) -> pd.DataFrame:
    """One 4.9 arm at one c beside the unsteered program of each task, in the columns common/steered_runs.py reads;
    tasks with a program the sandbox could not judge in any arm are out, as in 4.9."""
    judged = ~sweep_rows.groupby("task_id")["error_type"].apply(lambda e: (e == "unsupported").any())
    tasks = judged[judged].index
    base = sweep_rows[sweep_rows["arm"] == "unsteered"].set_index("task_id", verify_integrity=True).loc[tasks]
    steered = sweep_rows[(sweep_rows["arm"] == arm) & (sweep_rows["coefficient"] == coefficient)]
    steered = steered.set_index("task_id", verify_integrity=True).loc[tasks]
    return with_outcomes(pd.DataFrame({
        "task_id": tasks, "baseline_passed": base["test_passed"].to_numpy(dtype=bool),
        "steered_passed": steered["test_passed"].to_numpy(dtype=bool),
        "steered_error_type": steered["error_type"].to_numpy(), "steered_valid_code": steered["valid_code"].to_numpy(),
        "generation_s": steered["generation_time"].to_numpy(dtype=float)}))


def _sweep_rows(sources: Sources) -> list[dict[str, Any]]:
    summary, rows = sources.sweep, sources.sweep_rows
    if rows is None:
        return []
    trained = sources.adapters.get("adapters", {})
    out = []
    for name, arm in summary["arms"].items():
        plus, minus = sweep_outcomes(rows, name, 1.0), sweep_outcomes(rows, name, -1.0)
        at = arm["by_coefficient"]
        steering = {
            "protocol": "4.9", "n_tasks": summary["n_tasks"],
            "disruption": {"measure": "NLL rise of the unsteered programs, nats per token",
                           "delta_nll": {"+1": at["1"].get("delta_nll"), "-1": at["-1"].get("delta_nll")}},
            "correction": endpoint_rates(plus)["correction"], "preservation": endpoint_rates(plus)["preservation"],
            "corruption": endpoint_rates(minus)["corruption"], "valid_code_rate": at["1"].get("valid_code_rate"),
            "primary": _primary({k: {"holm_p": p, "ran": True} for k, p in summary["primary"]["holm"].items()}, name)}
        made_by = ("2.9",) if name in summary["adapter_arms"] else (
            METHODS[name].training_phases if name in METHODS else ())
        cost = {**_making(sources, made_by), "own_training_s": trained.get(name, {}).get("training_s"),
                **_steering_cost(sources, pd.concat([plus, minus]), "generation_s", "4.9")}
        if not made_by:  # a system prompt: nothing to make
            cost["making_s"] = 0.0
        out.append(_row(f"4.9/{name}", SWEEP_TITLES.get(name, name), "adapter arm", None, steering, cost))
    return out


# --- detection-only rows ----------------------------------------------------------------------------------------

def _score_rows(sources: Sources, position: str, claimed: set[tuple[str, str]]) -> list[dict[str, Any]]:
    out = []
    for row in sources.evaluation["table"]:
        family = row["score"].split(": ")[0]
        if row["kind"] == "score" and row["position"] == position and ("3.8", family) not in claimed:
            out.append(_row(f"3.8/{family}", family.replace("_", " "), "score",
                            _from_evaluation_row(row, f"3.8 {row['score']} at {position}")))
    return out


def _baseline_rows(sources: Sources) -> list[dict[str, Any]]:
    """3.8's baselines as 3.8 reports them (3.9's Platt-scaled versions of them rank differently: not mixed in)."""
    out = []
    for row in sources.evaluation["table"]:
        if row["kind"] != "baseline":
            continue
        chosen = " (chosen on hyperparams)" if row["is_best_baseline"] else ""
        declared = " (declared)" if row["score"] == STRONGEST_DECLARED else ""
        out.append(_row(f"baseline/{row['score']}", row["score"].replace("_", " ") + chosen + declared, "baseline",
                        _from_evaluation_row(row, "3.8 baseline")))
    return out
