"""Phase 2.5 figures: where the separating latents sit, and what their activations look like per class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from common.plotting import plt, save_figure

_COLOURS = {"correct": "#2a9d8f", "incorrect": "#e76f51"}


def plot_scores_by_layer(scores: pd.DataFrame, listed: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Separation score of every eligible latent that fires at all, per layer, with the listed ones marked."""
    fig, ax = plt.subplots(figsize=(8, 4.2))
    layers = sorted(scores["layer"].unique())
    live = scores[scores["eligible"] & ((scores["f_correct"] > 0) | (scores["f_incorrect"] > 0))]
    data = [live.loc[live["layer"] == layer, "separation_score"].dropna().to_numpy() for layer in layers]
    ax.boxplot([d if len(d) else np.zeros(1) for d in data], positions=range(len(layers)), widths=0.5,
               showfliers=False)
    rng = np.random.default_rng(0)
    for name, rows in listed.items():
        xs = [layers.index(r["layer"]) + rng.uniform(-0.15, 0.15) for r in rows]
        ys = [r["separation_score"] * (1 if name == "correct" else -1) for r in rows]
        ax.scatter(xs, ys, s=18, color=_COLOURS[name], label=f"top {len(rows)} {name}-preferring", zorder=3)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(layers)), [str(layer) for layer in layers])
    ax.set_xlabel("layer (output of decoder layer L)")
    ax.set_ylabel("separation  f_correct - f_incorrect")
    ax.set_title("SAE latent separation scores by layer (box: all eligible firing latents)")
    ax.legend(fontsize=8, loc="best")
    save_figure(fig, path)


def plot_top_latent_activations(listed: dict[str, list[dict[str, Any]]], latents_by_layer: dict[int, torch.Tensor],
                                passed: np.ndarray, path: Path, per_class: int = 3) -> None:
    """Histograms of the best latents' activations on passing and failing rows."""
    chosen = [(name, row) for name in ("correct", "incorrect") for row in listed[name][:per_class]]
    n_cols = max(1, min(per_class, len(chosen)))
    n_rows = max(1, -(-len(chosen) // n_cols))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4 * n_cols, 3 * n_rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, row) in zip(axes.flat, chosen):
        ax.axis("on")
        values = latents_by_layer[row["layer"]][:, row["feature_idx"]].numpy()
        bins = np.linspace(0, max(float(values.max()), 1e-6), 21)
        for label, mask, colour in (("passing", passed, _COLOURS["correct"]),
                                    ("failing", ~passed, _COLOURS["incorrect"])):
            ax.hist(values[mask], bins=bins, alpha=0.55, color=colour, density=True,
                    label=f"{label} (fires {np.mean(values[mask] > 0):.0%} of {mask.sum()})")
        ax.set_title(f"{name}: layer {row['layer']} #{row['feature_idx']} (sep {row['separation_score']:.2f})",
                     fontsize=9)
        ax.set_xlabel("activation")
        ax.legend(fontsize=7)
    if not chosen:
        axes.flat[0].axis("on")
        axes.flat[0].text(0.5, 0.5, "no eligible latent separates the classes", ha="center", va="center")
    fig.suptitle("Top latents: activation at the last prompt token, per class")
    save_figure(fig, path)
