"""Phase 4.5 figure: dose-response. Effect against disruption for every method and every control, per class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.ticker import NullFormatter

from common.plotting import plt, save_figure

_PANELS = (("correct", "fixed", "correct directions: fail -> pass on failing problems"),
           ("correct", "broken", "correct directions: pass -> fail on passing problems"),
           ("incorrect", "broken", "incorrect directions: pass -> fail on passing problems"))
MARKERS = "os^vDPX*<>"  # one per control type, in order of appearance


def plot_dose_response(results: dict[str, dict[str, Any]], controls: list[dict[str, Any]], colours: dict[str, str],
                       path: Path) -> None:
    """Grey markers: one per control arm (shape by type); lines: each method with 95% intervals; the chosen
    level ringed. x is the disruption measured at the calibrated alpha (log scale)."""
    fig, axes = plt.subplots(1, len(_PANELS), figsize=(5 * len(_PANELS), 4.2))
    markers = dict(zip(dict.fromkeys(p["type"] for p in controls), MARKERS))
    for ax, (kind, outcome, title) in zip(axes, _PANELS):
        for kind_of_control, marker in markers.items():
            points = [p for p in controls if p["type"] == kind_of_control and p[outcome] is not None]
            ax.scatter([p["disruption"] for p in points], [p[outcome] for p in points], marker=marker, s=16,
                       color="#9e9e9e", alpha=0.7, label=kind_of_control.replace("_", " "))
        for result in (r for r in results.values() if r["class"] == kind):
            grid = [g for g in result["grid"] if g.get("reachable")]
            key = "versus_controls" if outcome == ("fixed" if kind == "correct" else "broken") else "break_rate"
            values = [g[key]["target"] if key == "versus_controls" else g[key] for g in grid]
            x = [g["achieved_disruption"] for g in grid]
            y = [v["rate"] for v in values]
            errors = [[max(0.0, v["rate"] - v["low"]) for v in values], [max(0.0, v["high"] - v["rate"]) for v in values]]
            ax.errorbar(x, y, yerr=errors, fmt="o-", capsize=3, color=colours.get(result["method"], "black"),
                        label=f"{result['method']} (chosen: {result['chosen_by']})")
            for g, xi, yi in zip(grid, x, y):
                if result["chosen_by"] == "rule" and g["level"] == result["level"]:
                    ax.scatter([xi], [yi], s=160, facecolors="none", edgecolors="black", zorder=5)
        if ax.has_data():
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # the minor labels of a short log axis collide
        else:
            ax.text(0.5, 0.5, "no level reachable", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("disruption: KL per token on baseline programs (nats)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=6)
    fig.suptitle("Phase 4.5, hyperparams split: each method against controls at matched disruption", fontsize=10)
    save_figure(fig, path)
