"""Phase 2.8 figure: how well each KV-cache vector orders the pairs of held-out tasks, per layer.

One panel per vector. Solid: its values' delta on held-out pairs of its own kind; dashed: its keys' delta; dotted:
values on `equivalent` pairs (both sides pass), where a vector about correctness should sit near 0.5. Bars: 95%
task-bootstrap intervals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.plotting import plt, save_figure


def plot_held_out(vectors: dict[str, dict[str, Any]], path: Path) -> None:
    fig, axes = plt.subplots(1, len(vectors), figsize=(4.6 * len(vectors), 3.4), squeeze=False)
    for ax, (name, vector) in zip(axes[0], vectors.items()):
        for side, target, style in (("values", vector["pairs"], "-"), ("keys", vector["pairs"], "--"),
                                    ("values", "equivalent", ":")):
            by_layer = vector["held_out"][side]["by_layer"]
            layers = sorted(by_layer, key=int)
            held = [by_layer[layer].get(target) for layer in layers]
            if not all(h and h["accuracy"] is not None for h in held):
                continue
            points = [h["accuracy"] for h in held]
            ax.errorbar([int(layer) for layer in layers], points, capsize=2, linestyle=style, marker="o",
                        yerr=[[p - h["low"] for p, h in zip(points, held)],
                              [h["high"] - p for p, h in zip(points, held)]],
                        label=f"{side}, {target} pairs (n={held[0]['n_pairs']})")
        ax.axhline(0.5, color="#cccccc", linewidth=0.8)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{name} ({vector['n_pairs']} pairs)", fontsize=9)
        ax.set_xlabel("layer", fontsize=8)
        ax.set_ylabel("held-out pairs ordered correctly", fontsize=8)
        ax.legend(fontsize=6, loc="lower right")
    fig.suptitle("Phase 2.8: KV-cache vectors on pairs of tasks not used to extract them", fontsize=9)
    save_figure(fig, path)
