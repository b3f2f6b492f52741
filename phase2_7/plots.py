"""Phase 2.7 figure: how well each contrastive direction orders the pairs of held-out tasks, by layer.

One row per fitted kind of pair, one column per position. Solid: pairs of the kind it was fitted on; dashed:
`equivalent` pairs (both sides pass), where a direction about correctness should sit at 0.5; dotted grey: what the
model's mean log-probability orders among pairs of that kind. Bars: 95% task-bootstrap intervals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.plotting import plt, save_figure


def plot_pair_accuracy(accuracy: dict[str, dict[str, dict[str, Any]]], baselines: dict[str, Any], path: Path) -> None:
    positions = list(accuracy)
    fitted = list(dict.fromkeys(key for by_layer in accuracy.values() for figures in by_layer.values()
                                for key in figures["directions"]))
    kinds = list(dict.fromkeys(key.split("/")[0] for key in fitted))
    fig, axes = plt.subplots(len(kinds), len(positions), figsize=(4.2 * len(positions), 3.4 * len(kinds)),
                             squeeze=False)
    for row, kind in enumerate(kinds):
        names = [key.split("/")[1] for key in fitted if key.startswith(f"{kind}/")]
        for column, position in enumerate(positions):
            ax, by_layer = axes[row][column], accuracy[position]
            layers = sorted(by_layer, key=int)
            for i, name in enumerate(names):
                colour = f"C{i}"
                for target, style in ((kind, "-"), ("equivalent", "--")):
                    held = [by_layer[layer]["directions"].get(f"{kind}/{name}", {}).get("held_out", {}).get(target)
                            for layer in layers]
                    if not all(h and h["accuracy"] is not None for h in held):
                        continue
                    points = [h["accuracy"] for h in held]
                    ax.errorbar([int(layer) for layer in layers], points, capsize=2, color=colour, linestyle=style,
                                marker="o" if style == "-" else None,
                                label=name if style == "-" else f"{name} (equivalent)",
                                yerr=[[p - h["low"] for p, h in zip(points, held)],
                                      [h["high"] - p for p, h in zip(points, held)]])
            logprob = baselines.get(kind, {}).get("mean_logprob", {}).get("accuracy")
            if logprob is not None:
                ax.axhline(logprob, color="#6c757d", linestyle=":", label="mean log-prob")
            ax.axhline(0.5, color="#cccccc", linewidth=0.8)
            ax.set_ylim(0, 1.02)
            ax.set_title(f"{kind} pairs, {position}", fontsize=9)
            ax.set_xlabel("layer", fontsize=8)
            if column == 0:
                ax.set_ylabel("held-out pairs ordered correctly", fontsize=8)
            ax.legend(fontsize=6, loc="lower right")
    fig.suptitle("Phase 2.7: contrastive directions on pairs of tasks not used to fit them", fontsize=9)
    save_figure(fig, path)
