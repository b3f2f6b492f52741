"""Phase 5's table as markdown: three sections (detection, steering, cost) over the same rows, each figure with its
count and interval; a row appears in a section where it has figures for it."""

from __future__ import annotations

from typing import Any, Callable

from common.positions import SHARED_BY_TASK
from common.statistics import Rate

CHOOSES_NOTHING = ("Phase 5 chooses nothing: every candidate, threshold, level and weight below was chosen on the "
                   "sae or hyperparams split by the phase that reports it; this table only sets their validation "
                   "figures side by side.")
MIN_TASKS_FOR_INTERVAL = 5


def interval(result: dict[str, Any] | None, signed: bool = False) -> str:
    if not result or result.get("value") is None:
        return "n/a"
    spec = "+.3f" if signed else ".3f"
    if result.get("low") is None or result["low"] != result["low"]:
        return f"{result['value']:{spec}}"
    return f"{result['value']:{spec}} [{result['low']:{spec}}, {result['high']:{spec}}]"


def proportion(result: dict[str, Any] | None) -> str:
    """A rate as common/statistics.py writes it: 'k/n = r% [95% CI low-high%]' (Wilson)."""
    if not result or not result.get("trials"):
        return "n/a"
    return str(Rate(**{k: result[k] for k in ("successes", "trials", "low", "high")}))


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2g}"


def _versus(result: dict[str, Any] | None) -> str:
    if not result:
        return "n/a"
    target = result["target"]
    return (f"{target['successes']}/{target['trials']} vs controls' mean {100 * result['controls_mean_rate']:.0f}%; "
            f"{result['controls_at_or_above']} of {result['n_controls']} controls at or above (rank p "
            f"{_p(result['rank_p'])}, prediction p {_p(result['prediction_p'])})")


def _disruption(steering: dict[str, Any]) -> str:
    disruption = steering["disruption"]
    if "delta_nll" in disruption:
        return "ΔNLL " + ", ".join(f"{c}: {interval(_mean(rise))}" for c, rise in disruption["delta_nll"].items())
    levels = [f"{kind} {r['level']:g} ({r['chosen_by']})" for kind, r in disruption.items() if isinstance(r, dict)]
    return "KL/token " + ", ".join(levels) if levels else disruption["measure"]


def _mean(result: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if not result else {"value": result.get("mean"), "low": result.get("low"), "high": result.get("high")}


ENDPOINT_WORDS = {"plus_vs_unsteered": "pass at +1 vs unsteered (McNemar)",
                  "minus_vs_unsteered": "pass at -1 vs unsteered (McNemar)"}


def _primary(steering: dict[str, Any]) -> str:
    primary = steering.get("primary")
    if not primary:
        return "exploratory"
    return ", ".join(f"{ENDPOINT_WORDS.get(endpoint, endpoint)} {_p(r['holm_p'])}"
                     + ("" if r["ran"] else " (did not run: p = 1)") for endpoint, r in primary.items())


def _over(gain: dict[str, Any] | None) -> str:
    if not gain:
        return "n/a"
    return f"{interval(gain, signed=True)} over {gain['baseline']} ({gain['measure']})"


def _within(detection: dict[str, Any]) -> str:
    """Within-task AUROC with its pairs and the tasks they come from; a bootstrap over fewer than
    MIN_TASKS_FOR_INTERVAL tasks has too few distinct resamples to be an interval, so none is shown."""
    within = detection.get("within_task_auroc")
    if within:
        n_tasks = within.get("n_tasks_with_both_classes")
        if n_tasks is None:
            return interval(within) + (f" ({within['n_pairs']} pairs)" if "n_pairs" in within else "")
        if n_tasks < MIN_TASKS_FOR_INTERVAL:
            return f"{within['value']:.3f} ({within['n_pairs']} pairs in {n_tasks} tasks: too few for an interval)"
        return f"{interval(within)} ({within['n_pairs']} pairs in {n_tasks} tasks)"
    reason = detection.get("within_task_reason")
    if reason == SHARED_BY_TASK:
        return "n/a (one score per task)"
    return f"n/a ({reason})" if reason else "n/a"


def _brier(detection: dict[str, Any]) -> str:
    if not detection.get("brier"):
        return "n/a"
    if detection.get("brier_no_skill") is None:
        return interval(detection["brier"])
    return f"{interval(detection['brier'])} (no skill {detection['brier_no_skill']:.3f})"


def _memory(resident: float | None, cuda: float | None) -> str:
    if resident is None:
        return "n/a"
    return f"{resident:.0f}" + (f" (CUDA {cuda:.0f})" if cuda is not None else "")


def _seconds(cost: dict[str, Any]) -> str:
    timed = cost.get("seconds_per_steered_program")
    return "n/a" if not timed else f"{timed['mean']:.2f} ({timed['n_programs']})"


def _making(cost: dict[str, Any]) -> str:
    seconds = cost.get("making_s")
    phases = ", ".join(cost.get("making_phases") or []) or "-"
    own = f"; its own training {cost['own_training_s']:.0f}" if cost.get("own_training_s") is not None else ""
    return ("n/a" if seconds is None else f"{seconds:.0f}") + f" ({phases}{own})"


def _table(header: list[str], rows: list[dict[str, Any]], section: str,
           cells: Callable[[dict[str, Any], dict[str, Any]], list[str]]) -> list[str]:
    """A markdown table of the rows that have figures for `section`, one line each."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if row[section] is not None:
            lines.append("| " + " | ".join([row["title"], *cells(row, row[section])]) + " |")
    return lines


def _detection_cells(row: dict[str, Any], d: dict[str, Any]) -> list[str]:
    if "reason" in d:
        return [row["kind"], f"n/a: {d['reason']}", *[""] * 7]
    return [row["kind"], f"{d['source']} (predicts {d['predicts']})", interval(d["auroc"]), _within(d),
            _over(d["over_comparison_baseline"]), _over(d["over_declared_baseline"]), _brier(d), interval(d["ece"]),
            str(d["n_programs"])]


def detection_lines(rows: list[dict[str, Any]]) -> list[str]:
    header = ["row", "kind", "score", "AUROC [95% CI]", "within-task AUROC",
              "over its comparison baseline (3.8: chosen on hyperparams; 3.9: mean log-prob)",
              "over the declared baseline", "Brier", "ECE", "programs"]
    return _table(header, rows, "detection", _detection_cells)


def _steering_cells(row: dict[str, Any], s: dict[str, Any]) -> list[str]:
    versus = s.get("versus_controls") or {}
    return [s["protocol"], str(s["n_tasks"]), _disruption(s), proportion(s["correction"]),
            proportion(s["preservation"]), proportion(s["corruption"]), proportion(s["valid_code_rate"]),
            *[_versus(versus.get(e)) for e in ("correction", "preservation", "corruption")], _primary(s)]


def steering_lines(rows: list[dict[str, Any]]) -> list[str]:
    header = ["row", "phase", "tasks", "disruption", "correction", "preservation", "corruption", "valid code",
              "correction vs its controls", "preservation vs its controls", "corruption vs its controls",
              "primary, Holm p"]
    return _table(header, rows, "steering", _steering_cells)


def _cost_cells(row: dict[str, Any], c: dict[str, Any]) -> list[str]:
    return [_making(c), _memory(c.get("making_peak_mib"), c.get("making_peak_cuda_mib")), _seconds(c),
            _memory(c.get("steering_peak_mib"), c.get("steering_peak_cuda_mib"))]


def cost_lines(rows: list[dict[str, Any]]) -> list[str]:
    header = ["row", "making it, s (phases)", "their peak memory, MiB", "s per steered program (programs)",
              "steering phase's peak memory, MiB"]
    return _table(header, rows, "cost", _cost_cells)


def markdown(table: dict[str, Any]) -> str:
    rows = table["rows"]
    return "\n".join([
        "# Every method head to head", "", CHOOSES_NOTHING, "", *table["notes"], "",
        "## Detection (validation split)", "", *detection_lines(rows), "",
        "## Steering (validation split)", "", *steering_lines(rows), "",
        "## Cost", "", *cost_lines(rows), ""])
