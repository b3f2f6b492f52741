"""Phase 4.8 figure: each experiment's rate for the SAE direction, the mean-difference direction and the
controls (pooled bar, one dot per control direction), with 95% intervals and counts, and a hollow
diamond for the share of steered code still valid (a direction that breaks less code can flip more)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.plotting import plt, save_figure

_COLOURS = {"sae": "#2a9d8f", "mean_difference": "#457b9d", "controls": "#9e9e9e"}


def plot_steering_effects(analysis: dict[str, Any], path: Path) -> None:
    panels = [(kind, experiment) for kind, result in analysis["effects"].items() for experiment in result["experiments"]]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 4), squeeze=False)
    for ax, (kind, experiment) in zip(axes.flat, panels):
        result = analysis["effects"][kind]
        bars = {method: effect[experiment] for method, effect in result["by_method"].items()}
        valid = {method: r["steered_valid_code"]["rate"] for method, r in bars.items()}
        pooled = result["controls"]["pooled"]
        if pooled and experiment != "preservation":  # controls run on the tasks of correction / corruption
            bars["controls"] = pooled
            valid["controls"] = result["controls"]["pooled_steered_valid_code"]["rate"]
        ax.scatter(range(len(valid)), list(valid.values()), marker="D", facecolors="none", edgecolors="#d62828",
                   zorder=4, label="valid code")
        for x, (label, r) in enumerate(bars.items()):
            ax.bar(x, r["rate"], color=_COLOURS[label], alpha=0.85,
                   yerr=[[max(0.0, r["rate"] - r["low"])], [max(0.0, r["high"] - r["rate"])]], capsize=4)
            ax.annotate(f"{r['successes']}/{r['trials']}", (x, r["high"]), ha="center", va="bottom", fontsize=8,
                        xytext=(0, 2), textcoords="offset points")
        if "controls" in bars:
            x = list(bars).index("controls")
            individual = [c["rate"] for c in result["controls"]["individual"]]
            ax.scatter([x] * len(individual), individual, color="black", s=12, zorder=3, label="each control")
        ax.legend(fontsize=7, loc="upper left", ncol=2)
        ax.set_xticks(range(len(bars)), [label.replace("_", "-") for label in bars], fontsize=8)
        ax.set_ylim(0, 1.25)  # room for the legend above the 100% mark
        ax.set_title(f"{experiment} ({kind} direction)", fontsize=10)
        ax.set_ylabel("rate")
    coefficients = ", ".join(f"{kind}: alpha {c['alpha']:g} at layer {c['layer']}"
                             for kind, c in analysis["coefficients"].items())
    fig.suptitle(f"Steering on the validation split ({coefficients}; positions: {analysis['positions']})", fontsize=9)
    save_figure(fig, path)
