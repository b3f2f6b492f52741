"""Phase 5 figure: the head-to-head rows in three panels sharing one row axis: validation AUROC (95% task bootstrap;
chance at 0.5, the best baseline dotted), correction and corruption (95% Wilson intervals) and what making each cost (seconds, log scale)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.plotting import plt, save_figure

KIND_COLOURS = {"method": "#264653", "floor": "#8d99ae", "adapter arm": "#e76f51", "score": "#2a9d8f",
                "baseline": "#adb5bd"}


def _errors(points: list[tuple[float, float, float]]) -> list[list[float]]:
    return [[max(0.0, v - low) for v, low, _ in points], [max(0.0, high - v) for v, _, high in points]]


def plot_head_to_head(rows: list[dict[str, Any]], best_baseline: str | None, path: Path) -> None:
    titles = [row["title"] for row in rows]
    ys = list(range(len(rows)))[::-1]
    fig, (detect, steer, cost) = plt.subplots(1, 3, figsize=(15, 0.32 * len(rows) + 1.8), sharey=True)
    for y, row in zip(ys, rows):
        colour = KIND_COLOURS[row["kind"]]
        auroc = (row["detection"] or {}).get("auroc")
        if auroc and auroc.get("low") is not None:
            detect.errorbar([auroc["value"]], [y], xerr=_errors([(auroc["value"], auroc["low"], auroc["high"])]),
                            fmt="o", color=colour, capsize=2, markersize=4)
        steering = row["steering"] or {}
        for endpoint, marker, shift in (("correction", "^", 0.15), ("corruption", "v", -0.15)):
            r = steering.get(endpoint)
            if r and r.get("trials"):
                steer.errorbar([r["rate"]], [y + shift], xerr=_errors([(r["rate"], r["low"], r["high"])]),
                               fmt=marker, color=colour, capsize=2, markersize=5)
        seconds = (row["cost"] or {}).get("training_s")
        if seconds:
            cost.barh([y], [seconds], color=colour, height=0.6)
    detect.axvline(0.5, color="#999999", linewidth=0.8, linestyle="--")
    best = next((row["detection"]["auroc"] for row in rows if row["name"] == f"baseline/{best_baseline}"), None)
    if best:
        detect.axvline(best["value"], color=KIND_COLOURS["baseline"], linewidth=1.2, linestyle=":",
                       label=f"best baseline ({best_baseline})")
    detect.set(yticks=ys, yticklabels=titles, xlabel="validation AUROC (95% CI)", xlim=(-0.02, 1.02),
               title="detection")
    steer.set(xlabel="rate (95% CI): ▲ correction, ▼ corruption", xlim=(-0.02, 1.02), title="steering")
    cost.set(xlabel="seconds to make it (log)", title="cost")
    if any((row["cost"] or {}).get("training_s") for row in rows):
        cost.set_xscale("log")
    for kind, colour in KIND_COLOURS.items():
        detect.plot([], [], "o", color=colour, label=kind)
    detect.legend(fontsize=7, loc="lower left")
    save_figure(fig, path)
