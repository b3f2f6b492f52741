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
- `baseline`: phase 3.8's baselines (detection only), the best one on hyperparams marked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from common.methods import METHODS
from common.steered_runs import endpoint_rates, with_outcomes

SWEEP_ARMS = {"svd_rotation": "SVD-rotation adapter", "lora": "LoRA adapter (PEFT)",
              "random_same_norm": "random adapter, trained norms", "mean_difference": "mean difference at matched NLL",
              "prompting": "system prompt (careful / quick)"}
LOGPROB = "program_mean_logprob"  # the baseline phase 3.9 sets its calibrated confidence against
SWEEP_TRAINED = {"svd_rotation", "lora", "random_same_norm"}  # phase 2.9 made them; its summary has their time


@dataclass(frozen=True)
class Sources:
    """What the table reads: each measuring phase's results, parsed, and every phase's recorded cost."""
    evaluation: dict[str, Any]  # 3.8 evaluation_results.json
    calibration: dict[str, Any] | None  # 3.9 calibration_results.json; None when 3.9 made no dictionary
    calibration_missing: str | None  # why not
    steering: dict[str, Any]  # 4.8 steering_effect_analysis.json
    steered_rows: pd.DataFrame  # 4.8 steered_results.parquet
    sweep: dict[str, Any]  # 4.9 phase_4_9_summary.json
    sweep_rows: pd.DataFrame  # 4.9 sweep_rows.parquet
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
    pairs = {"n_pairs": result["n_pairs"]} if "n_pairs" in result else {}
    return {"value": float(result[key]), "low": result.get("low"), "high": result.get("high"), **pairs}


def _from_evaluation_row(row: dict[str, Any], source: str) -> dict[str, Any]:
    validation = row["validation"]
    within = row.get("within_task") or {}
    over = row.get("over_best_baseline")
    return {"source": source, "predicts": row["predicts"], "auroc": _interval(validation, "auroc"),
            "n_programs": int(validation.get("n_positive", 0) + validation.get("n_negative", 0)),
            "within_task_auroc": _interval(within, "auroc"), "within_task_reason": within.get("reason"),
            "over_baseline": ({"baseline": over["baseline"], "measure": "incremental AUROC (combined on hyperparams)",
                               **_interval(over, "difference")} if over and _interval(over, "difference") else None),
            "brier": None, "ece": None}


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
    compared = sources.calibration.get("confidence_minus", {}).get(LOGPROB)
    where = f"{sources.calibration['position']}, layer {sources.calibration['layer']}"
    return _calibrated(found, compared, f"3.9 {score} at {where}")


def _calibrated(predictor: dict[str, Any], compared: dict[str, Any] | None, source: str) -> dict[str, Any]:
    """A phase 3.9 predictor: a probability, so Brier and ECE beside its AUROC; `compared`: its AUROC minus that of
    the model's mean log-probability, on the same programs (3.9's comparison)."""
    within = predictor.get("within_task_auroc") or {}
    difference = _interval((compared or {}).get("auroc"), "difference")
    return {"source": source, "predicts": "pass", "auroc": _interval(predictor.get("auroc"), "value"),
            "n_programs": predictor.get("n_programs"), "within_task_auroc": _interval(within, "auroc"),
            "within_task_reason": None if within else "scored per task (the same for every program of a task)",
            "over_baseline": ({"baseline": LOGPROB, "measure": "AUROC difference", **difference}
                              if difference else None),
            "brier": _interval(predictor.get("brier"), "value"), "ece": _interval(predictor.get("ece"), "value")}


# --- steering --------------------------------------------------------------------------------------------------

def _versus(result: dict[str, Any], endpoint: str) -> dict[str, Any] | None:
    versus = result.get("versus_controls", {}).get(endpoint)
    if not versus or versus.get("rank_p") is None:
        return None
    return {"controls_at_or_above": versus["controls_at_or_above_target"], "n_controls": versus["n_controls"],
            "n_tasks": versus["n_tasks"], "rank_p": versus["rank_p"], "prediction_p": versus["prediction_p"]}


def _seconds_per_program(rows: pd.DataFrame, column: str) -> dict[str, Any] | None:
    if column not in rows or rows.empty:
        return None
    times = rows[column].dropna().to_numpy(dtype=float)
    return {"mean": float(times.mean()), "n_programs": int(len(times))} if len(times) else None


def _peak_mib(sources: Sources, phases: tuple[str, ...]) -> float | None:
    peaks = [sources.costs[p]["peak_resident_mib"] for p in phases if p in sources.costs]
    return max(peaks) if peaks else None


def _training_s(sources: Sources, phases: tuple[str, ...]) -> float | None:
    times = [sources.costs[p]["wall_s"] for p in phases if p in sources.costs]
    return float(sum(times)) if len(times) == len(phases) else None


def _method_rows(sources: Sources, position: str) -> list[dict[str, Any]]:
    analysis, rows = sources.steering, sources.steered_rows
    primary = analysis["primary"]
    out = []
    for name in [m for m in METHODS if m in analysis["methods"]]:
        by_class, method = analysis["methods"][name], METHODS[name]
        correct, incorrect = by_class.get("correct", {}), by_class.get("incorrect", {})
        arms = [r[key] for r in by_class.values() for key in ("arm", "minus_arm")]
        steering = {
            "protocol": "4.8", "n_tasks": analysis["baseline"]["n_tasks"],
            "disruption": {"measure": "KL per token (4.5 level)",
                           **{kind: {"level": r["level"], "alpha": r["alpha"], "chosen_by": r["chosen_by"]}
                              for kind, r in by_class.items()}},
            "correction": correct.get("correction"), "preservation": correct.get("preservation"),
            "corruption": incorrect.get("corruption"), "valid_code_rate": correct.get("valid_code_rate"),
            "correction_vs_controls": _versus(correct, "correction"),
            "preservation_vs_controls": _versus(correct, "preservation"),
            "corruption_vs_controls": _versus(incorrect, "corruption"),
            "primary_holm_p": {key.split("/", 1)[1]: value["holm_p"] for key, value in primary.items()
                               if key.split("/", 1)[0] == name and value["ran"]}}
        phases = method.training_phases
        cost = {"training_s": _training_s(sources, phases), "training_phases": list(phases),
                "training_peak_mib": _peak_mib(sources, phases),
                "seconds_per_steered_program": _seconds_per_program(rows[rows["arm"].isin(arms)], "generation_s"),
                "steering_peak_mib": _peak_mib(sources, ("4.8",))}
        out.append(_row(name, method.title, "method", _detection(sources, position, method.detection), steering,
                        cost))
    return out


def _floor_row(sources: Sources) -> dict[str, Any]:
    floor = sources.steering["alpha_0"]
    steering = {"protocol": "4.8", "n_tasks": floor["n_problems"], "disruption": {"measure": "none (alpha 0)"},
                "correction": floor["correction"], "preservation": floor["preservation"],
                "corruption": floor["corruption"], "valid_code_rate": floor["valid_code_rate"]}
    rows = sources.steered_rows
    cost = {"seconds_per_steered_program": _seconds_per_program(rows[rows["arm"] == "alpha_0"], "generation_s")}
    return _row("alpha_0", "alpha 0 (the steered path doing nothing)", "floor", None, steering, cost)


def sweep_outcomes(sweep_rows: pd.DataFrame, arm: str, coefficient: float) -> pd.DataFrame:
    """One 4.9 arm at one c beside the unsteered program of each task, in the columns common/steered_runs.py reads;
    tasks with a program the sandbox could not judge in any arm are out, as in 4.9."""
    judged = ~sweep_rows.groupby("task_id")["error_type"].apply(lambda e: (e == "unsupported").any())
    tasks = judged[judged].index
    base = sweep_rows[sweep_rows["arm"] == "unsteered"].set_index("task_id").loc[tasks]
    steered = sweep_rows[(sweep_rows["arm"] == arm) & (sweep_rows["coefficient"] == coefficient)]
    steered = steered.set_index("task_id").loc[tasks]
    return with_outcomes(pd.DataFrame({
        "task_id": tasks, "baseline_passed": base["test_passed"].to_numpy(dtype=bool),
        "steered_passed": steered["test_passed"].to_numpy(dtype=bool),
        "steered_error_type": steered["error_type"].to_numpy(), "steered_valid_code": steered["valid_code"].to_numpy(),
        "generation_s": steered["generation_time"].to_numpy(dtype=float)}))


def _sweep_rows(sources: Sources) -> list[dict[str, Any]]:
    summary, rows = sources.sweep, sources.sweep_rows
    holm = summary["primary"]["holm"]
    out = []
    for name, title in SWEEP_ARMS.items():
        if name not in summary["arms"]:
            continue
        arm = summary["arms"][name]
        plus, minus = sweep_outcomes(rows, name, 1.0), sweep_outcomes(rows, name, -1.0)
        at_plus = arm["by_coefficient"]["1"]
        steering = {
            "protocol": "4.9", "n_tasks": summary["n_tasks"],
            "disruption": {"measure": "NLL rise, nats per token (c = +1)", "delta_nll": at_plus.get("delta_nll")},
            "correction": endpoint_rates(plus)["correction"], "preservation": endpoint_rates(plus)["preservation"],
            "corruption": endpoint_rates(minus)["corruption"], "valid_code_rate": at_plus.get("valid_code_rate"),
            "primary_holm_p": {key.split("/", 1)[1]: p for key, p in holm.items() if key.split("/", 1)[0] == name}}
        trained = sources.adapters.get("adapters", {}).get(name, {}) if name in SWEEP_TRAINED else None
        made_by = ("2.9",) if name in SWEEP_TRAINED else METHODS[name].training_phases if name in METHODS else ()
        training_s = trained.get("training_s") if trained is not None else _training_s(sources, made_by)
        cost = {"training_s": 0.0 if name == "prompting" else training_s, "training_phases": list(made_by),
                "training_peak_mib": _peak_mib(sources, made_by),
                "seconds_per_steered_program": _seconds_per_program(pd.concat([plus, minus]), "generation_s"),
                "steering_peak_mib": _peak_mib(sources, ("4.9",))}
        out.append(_row(f"4.9/{name}", title, "adapter arm", None, steering, cost))
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
    calibrated = (sources.calibration or {}).get("predictors", {})
    out = []
    for row in sources.evaluation["table"]:
        if row["kind"] != "baseline":
            continue
        detection = _from_evaluation_row(row, "3.8 baseline" + (" (best on hyperparams)" if row["is_best_baseline"]
                                                                else ""))
        if row["score"] in calibrated:  # phase 3.9 calibrated it into a probability: its Brier and ECE
            detection["brier"] = _interval(calibrated[row["score"]].get("brier"), "value")
            detection["ece"] = _interval(calibrated[row["score"]].get("ece"), "value")
            detection["source"] += "; Brier and ECE: 3.9's Platt-scaled fit"
        title = row["score"].replace("_", " ") + (" (best)" if row["is_best_baseline"] else "")
        out.append(_row(f"baseline/{row['score']}", title, "baseline", detection))
    return out


def finite(value: Any) -> bool:
    return value is not None and bool(np.isfinite(value))
