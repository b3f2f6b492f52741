"""Phase 3.8 figures: every score's validation AUROC beside the baselines, and ROC curves per position."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from common.classification import auroc
from common.plotting import plt, save_figure


def roc_points(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates), from the strictest threshold to the loosest."""
    thresholds = np.unique(scores)[::-1]
    predicted = scores[None, :] >= thresholds[:, None]
    tpr = (predicted & positive).sum(1) / max(positive.sum(), 1)
    fpr = (predicted & ~positive).sum(1) / max((~positive).sum(), 1)
    return np.r_[0.0, fpr], np.r_[0.0, tpr]


def plot_forest(rows: list[dict[str, Any]], path: Path) -> None:
    """Validation AUROC (all rows) and within-task AUROC with 95% intervals, one line per score and baseline;
    the best baseline's AUROC is the line to beat."""
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(rows) + 1.4))
    labels, shown = [], set()
    for y, row in enumerate(rows):
        labels.append(f"{row['position']} | {row['score']}" if row["kind"] == "score" else f"baseline | {row['score']}")
        for result, colour, offset, name in ((row["validation"], "#264653", -0.15, "all rows"),
                                             (row["within_task"], "#e76f51", 0.15, "within tasks")):
            value = result.get("auroc") if result else None
            if value is None or value != value:
                continue
            ax.errorbar(value, y + offset, xerr=[[value - result["low"]], [result["high"] - value]], fmt="o",
                        color=colour, ms=4, capsize=2, label=None if name in shown else name)
            shown.add(name)
        if row["is_best_baseline"]:
            ax.axvline(row["validation"]["auroc"], color="#264653", ls=":", lw=1)
    ax.axvline(0.5, color="grey", ls="--", lw=0.8)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("validation AUROC (95% task-bootstrap interval)")
    ax.set_title("Scores against baselines (dotted: best baseline, chosen on hyperparams)", fontsize=10)
    if shown:
        ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path)


def plot_roc_by_position(curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], path: Path) -> None:
    """One panel per position: ROC curves of its chosen scores and of the best baseline on validation."""
    panels = [(position, by_label) for position, by_label in curves.items() if by_label]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.4 * max(1, len(panels)), 4.4), squeeze=False)
    for ax, (position, by_label) in zip(axes.flat, panels):
        for label, (scores, positive) in by_label.items():
            fpr, tpr = roc_points(scores, positive)
            ax.plot(fpr, tpr, ls=":" if label.startswith("best baseline") else "-",
                    label=f"{label} ({auroc(scores, positive):.2f})")
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
        ax.set_title(position, fontsize=10)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=6, loc="lower right")
    save_figure(fig, path)
