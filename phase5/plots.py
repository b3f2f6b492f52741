"""Phase 5 figure: the head-to-head rows in three panels sharing one row axis: validation AUROC (95% task bootstrap;
chance at 0.5, the baseline chosen on hyperparams and the declared one as lines), correction and corruption (95% Wilson
intervals over the row's tasks; on 4.8's control tasks only, the arm's own rate hollow beside the disruption-matched
controls' mean as a grey cross, since the two are comparable only there) and what making each cost
(seconds, log scale)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.baselines import STRONGEST_DECLARED
from common.plotting import plt, save_figure

KIND_COLOURS = {"method": "#264653", "floor": "#8d99ae", "adapter arm": "#e76f51", "score": "#2a9d8f",
                "baseline": "#adb5bd"}
CONTROLS = "#6c757d"


def _errors(value: float, low: float, high: float) -> list[list[float]]:
    return [[max(0.0, value - low)], [max(0.0, high - value)]]


def _baseline_lines(axis, rows: list[dict[str, Any]], chosen: str | None) -> None:
    by_name = {row["name"]: row for row in rows}
    for name, style, words in ((chosen, ":", "chosen on hyperparams"), (STRONGEST_DECLARED, "-.", "declared")):
        auroc = (by_name.get(f"baseline/{name}", {}).get("detection") or {}).get("auroc")
        if auroc:
            axis.axvline(auroc["value"], color=CONTROLS, linewidth=1.0, linestyle=style,
                         label=f"baseline {words} ({name})")


def plot_head_to_head(rows: list[dict[str, Any]], chosen_baseline: str | None, path: Path) -> None:
    titles = [row["title"] for row in rows]
    ys = list(range(len(rows)))[::-1]
    fig, (detect, steer, cost) = plt.subplots(1, 3, figsize=(15, 0.32 * len(rows) + 1.8), sharey=True)
    for y, row in zip(ys, rows):
        colour = KIND_COLOURS[row["kind"]]
        auroc = (row["detection"] or {}).get("auroc")
        if auroc and auroc.get("low") is not None:
            detect.errorbar([auroc["value"]], [y], xerr=_errors(auroc["value"], auroc["low"], auroc["high"]),
                            fmt="o", color=colour, capsize=2, markersize=4)
        steering = row["steering"] or {}
        for endpoint, marker, shift in (("correction", "^", 0.15), ("corruption", "v", -0.15)):
            r = steering.get(endpoint)
            if r and r.get("trials"):
                steer.errorbar([r["rate"]], [y + shift], xerr=_errors(r["rate"], r["low"], r["high"]),
                               fmt=marker, color=colour, capsize=2, markersize=5)
            versus = (steering.get("versus_controls") or {}).get(endpoint)
            if versus and versus["target"].get("trials"):  # the arm and its controls on the same (control) tasks
                steer.plot([versus["target"]["rate"]], [y + shift], marker, color=colour, markerfacecolor="none",
                           markersize=7)
                steer.plot([versus["controls_mean_rate"]], [y + shift], "x", color=CONTROLS, markersize=5)
        seconds = (row["cost"] or {}).get("making_s")
        if seconds:
            cost.barh([y], [seconds], color=colour, height=0.6)
    detect.axvline(0.5, color="#cccccc", linewidth=0.8, linestyle="--")
    _baseline_lines(detect, rows, chosen_baseline)
    detect.set(yticks=ys, yticklabels=titles, xlabel="validation AUROC (95% CI)", xlim=(-0.02, 1.02),
               title="detection")
    steer.set(xlabel="▲ correction, ▼ corruption (95% CI)\non the control tasks: hollow, the arm; × its controls' mean",
              xlim=(-0.02, 1.02), title="steering")
    cost.set(xlabel="seconds to make it (log; blank: none or unrecorded)", title="cost")
    if any((row["cost"] or {}).get("making_s") for row in rows):
        cost.set_xscale("log")
    for kind, colour in KIND_COLOURS.items():
        detect.plot([], [], "o", color=colour, label=kind)
    cost.legend(*detect.get_legend_handles_labels(), loc="lower right", fontsize=8)  # detection-only rows: no bars
    save_figure(fig, path)
