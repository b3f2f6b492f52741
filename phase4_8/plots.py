"""Phase 4.8 figure: per endpoint, each method's rate on the control tasks beside its disruption-matched controls
(one grey dot per control direction, the controls' 95% upper prediction bound dashed), and the method's
minus-alpha arm as a hollow marker; last, selective steering's trade-off over the whole split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.plotting import plt, save_figure

_PANELS = (("correct", "correction"), ("correct", "preservation"), ("incorrect", "corruption"))
_GATE_MARKERS = {"detector": "s", "baseline": "^"}


def plot_steering_effects(analysis: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(1, len(_PANELS) + 1, figsize=(4.6 * (len(_PANELS) + 1), 4.2))
    _plot_selective(axes[-1], analysis)
    for ax, (kind, endpoint) in zip(axes, _PANELS):
        methods = [(name, by_class[kind]) for name, by_class in analysis["methods"].items() if kind in by_class]
        for x, (name, result) in enumerate(methods):
            versus = result["versus_controls"][endpoint]
            ax.scatter([x - 0.15] * len(versus["control_rates"]), versus["control_rates"], color="#9e9e9e", s=12,
                       zorder=2, label="controls (same disruption)" if x == 0 else None)
            if versus.get("controls_upper_prediction_rate") is not None:
                ax.hlines(versus["controls_upper_prediction_rate"], x - 0.35, x + 0.35, colors="#9e9e9e", linestyles="--")
            target = versus["target"]
            ax.errorbar([x + 0.1], [target["rate"]], yerr=[[max(0.0, target["rate"] - target["low"])],
                                                           [max(0.0, target["high"] - target["rate"])]],
                        fmt="o", capsize=4, color=analysis["colours"].get(name, "black"), zorder=3)
            ax.annotate(f"{target['successes']}/{target['trials']}", (x + 0.1, target["high"]), ha="center",
                        va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
            minus = result["minus_alpha_versus_controls"][endpoint]["target"]
            ax.scatter([x + 0.25], [minus["rate"]], facecolors="none", edgecolors=analysis["colours"].get(name, "black"),
                       zorder=3, label="minus alpha" if x == 0 else None)
        ax.set_xticks(range(len(methods)), [f"{name}\n(level {r['level']:g})" for name, r in methods], fontsize=8)
        ax.set_ylim(-0.02, 1.1)
        ax.set_title(f"{endpoint} ({kind} direction), control tasks", fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"Phase 4.8, validation: layer {analysis['layer']}, directions from {analysis['position']}, "
                 f"steered at {analysis['positions']}", fontsize=9)
    save_figure(fig, path)


def _plot_selective(ax: Any, analysis: dict[str, Any]) -> None:
    """Correction against preservation (whole split) for each correct-class arm: steered everywhere (circle), only
    where a gate flags (square: the internal detector, triangle: the best baseline), a gate flagging the same shares
    of failing and passing tasks at random (x) and the perfect gate (star); unsteered is (0, 1)."""
    ax.scatter([0], [1], marker="D", color="black", label="unsteered")
    for name, by_class in analysis["methods"].items():
        result, colour = by_class.get("correct", {}), analysis["colours"].get(name, "black")
        gates = result.get("selective", {})
        if not gates:
            continue
        full = next(iter(gates.values()))["full_arm"]
        ax.scatter([full["correction"]["rate"]], [full["preservation"]["rate"]], color=colour, label=f"{name}, all")
        ax.scatter([full["correction"]["rate"]], [1.0], marker="*", s=80, color=colour)
        for gate, selective in gates.items():
            ax.scatter([selective["correction"]["rate"]], [selective["preservation"]["rate"]], color=colour,
                       marker=_GATE_MARKERS.get(gate, "o"), label=f"{name}, {gate} gate")
            expected = selective["class_matched_gate_expected"]
            ax.scatter([expected["correction"]], [expected["preservation"]], color=colour, marker="x")
    ax.set_xlabel("correction (failing tasks fixed)", fontsize=8)
    ax.set_ylabel("preservation (passing tasks kept)", fontsize=8)
    ax.set_title("selective steering, whole split (x: class-matched random gate, *: perfect)", fontsize=9)
    ax.legend(fontsize=6, loc="lower left")
