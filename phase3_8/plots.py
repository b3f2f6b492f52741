"""Phase 3.8 figures: ROC curves and per-class score histograms of the chosen scores on the validation split."""

from __future__ import annotations

from pathlib import Path

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


def plot_roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray, str]], path: Path) -> None:
    """`curves`: label -> (scores, positive-class mask, name of the positive class)."""
    fig, ax = plt.subplots(figsize=(5.2, 5))
    for label, (scores, positive, _) in curves.items():
        fpr, tpr = roc_points(scores, positive)
        ax.plot(fpr, tpr, label=f"{label} (AUROC {auroc(scores, positive):.2f})")
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8, label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("Validation split, greedy: scores chosen on hyperparams", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path)


def plot_score_histograms(curves: dict[str, tuple[np.ndarray, np.ndarray, str]], path: Path) -> None:
    fig, axes = plt.subplots(1, max(1, len(curves)), figsize=(4.2 * max(1, len(curves)), 3.2), squeeze=False)
    for ax, (label, (scores, positive, positive_name)) in zip(axes.flat, curves.items()):
        other = "failing" if positive_name == "passing" else "passing"
        bins = np.linspace(scores.min(), scores.max() + 1e-9, 21)
        ax.hist(scores[positive], bins=bins, alpha=0.55, density=True, label=f"{positive_name} ({positive.sum()})")
        ax.hist(scores[~positive], bins=bins, alpha=0.55, density=True, label=f"{other} ({(~positive).sum()})")
        ax.set_title(label, fontsize=8)
        ax.set_xlabel("score")
        ax.legend(fontsize=7)
    save_figure(fig, path)


def plot_auroc_by_temperature(results: dict[str, dict], path: Path) -> None:
    """One line per family: validation AUROC of its chosen score at each temperature, with bootstrap intervals."""
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for offset, (family, result) in enumerate(results.items()):
        by_temperature = sorted(result["validation_auroc_by_temperature"].items(), key=lambda item: float(item[0]))
        x = np.array([float(t) for t, _ in by_temperature]) + 0.015 * (offset - (len(results) - 1) / 2)
        y = np.array([r["auroc"] for _, r in by_temperature])
        spread = np.array([[r["auroc"] - r["low"] for _, r in by_temperature],
                           [r["high"] - r["auroc"] for _, r in by_temperature]])
        ax.errorbar(x, y, yerr=spread, marker="o", capsize=3, label=f"{family}: {result['chosen']}")
    ax.axhline(0.5, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("sampling temperature (0 = greedy)")
    ax.set_ylabel("validation AUROC (95% CI)")
    ax.set_title("Does the score still predict when the code is sampled?", fontsize=10)
    ax.legend(fontsize=7)
    save_figure(fig, path)
