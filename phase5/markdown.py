"""Phase 5's table as markdown: three sections (detection, steering, cost) over the same rows, each figure with its
count and interval; a row appears in a section where it has figures for it."""

from __future__ import annotations

from typing import Any

CHOOSES_NOTHING = ("Phase 5 chooses nothing: every candidate, threshold, level and weight below was chosen on the "
                   "sae or hyperparams split by the phase that reports it; this table only sets their validation "
                   "figures side by side.")


def interval(result: dict[str, Any] | None, signed: bool = False) -> str:
    if not result or result.get("value") is None:
        return "n/a"
    spec = "+.3f" if signed else ".3f"
    if result.get("low") is None or result["low"] != result["low"]:
        return f"{result['value']:{spec}}"
    return f"{result['value']:{spec}} [{result['low']:{spec}}, {result['high']:{spec}}]"


def proportion(result: dict[str, Any] | None) -> str:
    """A rate as 'k/n = r% [low-high]'."""
    if not result or not result.get("trials"):
        return "n/a"
    return (f"{result['successes']}/{result['trials']} = {100 * result['rate']:.0f}% "
            f"[{100 * result['low']:.0f}-{100 * result['high']:.0f}]")


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2g}"


def _versus(result: dict[str, Any] | None) -> str:
    if not result:
        return "n/a"
    return (f"{result['controls_at_or_above']} of {result['n_controls']} at or above (rank p "
            f"{_p(result['rank_p'])}, prediction p {_p(result['prediction_p'])}, {result['n_tasks']} tasks)")


def _disruption(steering: dict[str, Any]) -> str:
    disruption = steering["disruption"]
    if "delta_nll" in disruption:
        return f"ΔNLL {interval(_mean(disruption['delta_nll']))}"
    levels = [f"{kind} {r['level']:g} ({r['chosen_by']})" for kind, r in disruption.items() if isinstance(r, dict)]
    return "KL/token " + ", ".join(levels) if levels else disruption["measure"]


def _mean(result: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if not result else {"value": result.get("mean"), "low": result.get("low"), "high": result.get("high")}


def _over(detection: dict[str, Any]) -> str:
    over = detection.get("over_baseline")
    if not over:
        return "n/a"
    return f"{interval(over, signed=True)} over {over['baseline']} ({over['measure']})"


def _within(detection: dict[str, Any]) -> str:
    within = detection.get("within_task_auroc")
    if within:
        return interval(within) + (f" ({within['n_pairs']} pairs)" if "n_pairs" in within else "")
    return "n/a (read before the code)" if detection.get("within_task_reason") else "n/a"


def _seconds(cost: dict[str, Any]) -> str:
    timed = cost.get("seconds_per_steered_program")
    return "n/a" if not timed else f"{timed['mean']:.2f} ({timed['n_programs']})"


def _number(value: float | None, spec: str = ".0f") -> str:
    return "n/a" if value is None else f"{value:{spec}}"


def detection_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| row | kind | score | AUROC [95% CI] | within-task AUROC | over a baseline | Brier | ECE | programs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        d = row["detection"]
        if d is None:
            continue
        if "reason" in d:
            lines.append(f"| {row['title']} | {row['kind']} | n/a: {d['reason']} | | | | | | |")
            continue
        lines.append(f"| {row['title']} | {row['kind']} | {d['source']} (predicts {d['predicts']}) | "
                     f"{interval(d['auroc'])} | {_within(d)} | {_over(d)} | {interval(d['brier'])} | "
                     f"{interval(d['ece'])} | {d['n_programs']} |")
    return lines


def steering_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| row | phase | tasks | disruption | correction | preservation | corruption | valid code | "
             "correction vs its controls | corruption vs its controls | primary, Holm p |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        s = row["steering"]
        if s is None:
            continue
        primary = ", ".join(f"{k} {_p(v)}" for k, v in (s.get("primary_holm_p") or {}).items()) or "exploratory"
        lines.append(f"| {row['title']} | {s['protocol']} | {s['n_tasks']} | {_disruption(s)} | "
                     f"{proportion(s['correction'])} | {proportion(s['preservation'])} | "
                     f"{proportion(s['corruption'])} | {proportion(s['valid_code_rate'])} | "
                     f"{_versus(s.get('correction_vs_controls'))} | {_versus(s.get('corruption_vs_controls'))} | "
                     f"{primary} |")
    return lines


def cost_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| row | making it, s (phases) | its peak memory, MiB | s per steered program (programs) | "
             "steering phase's peak memory, MiB |", "|---|---|---|---|---|"]
    for row in rows:
        c = row["cost"]
        if c is None:
            continue
        phases = ", ".join(c.get("training_phases") or []) or "-"
        lines.append(f"| {row['title']} | {_number(c.get('training_s'))} ({phases}) | "
                     f"{_number(c.get('training_peak_mib'))} | {_seconds(c)} | {_number(c.get('steering_peak_mib'))} |")
    return lines


def markdown(table: dict[str, Any]) -> str:
    rows = table["rows"]
    return "\n".join([
        "# Every method head to head", "", CHOOSES_NOTHING, "", *table["notes"], "",
        "## Detection (validation split)", "", *detection_lines(rows), "",
        "## Steering (validation split)", "", *steering_lines(rows), "",
        "## Cost", "", *cost_lines(rows), ""])
