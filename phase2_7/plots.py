"""Phase 2.7 figure: held-out pair accuracy of each aggregator's direction by layer, one panel per position."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.plotting import plt, save_figure


def plot_pair_accuracy(accuracy: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    """`accuracy[position][layer][aggregator]["held_out_pair_accuracy"]`; 0.5 is chance."""
    fig, axes = plt.subplots(1, len(accuracy), figsize=(4.2 * len(accuracy), 3.6), squeeze=False)
    for ax, (position, by_layer) in zip(axes[0], accuracy.items()):
        layers = sorted(by_layer, key=int)
        names = [name for name, value in by_layer[layers[0]].items() if isinstance(value, dict)]
        for name in names:
            ax.plot([int(layer) for layer in layers],
                    [by_layer[layer][name]["held_out_pair_accuracy"] for layer in layers], marker="o", label=name)
        ax.axhline(0.5, color="#9e9e9e", linestyle="--", linewidth=1)
        held_out = by_layer[layers[0]][names[0]]["held_out_pairs"] if names else 0
        ax.set_title(f"{position} ({held_out} held-out pairs)", fontsize=9)
        ax.set_xlabel("layer", fontsize=8)
        ax.set_ylim(0.4, 1.02)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("held-out pairs ordered correctly", fontsize=8)
    fig.suptitle("Phase 2.7: contrastive directions, pairs of tasks not used to fit them", fontsize=9)
    save_figure(fig, path)
