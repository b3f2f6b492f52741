"""Scores as classifiers: AUROC with a bootstrap interval, and an F1 threshold chosen on one split only.

A score predicts a positive class (e.g. "this code will pass") when it is high. AUROC is the
Mann-Whitney probability that a random positive outscores a random negative (ties count half).
Thresholds are picked on the selection split by `best_f1_threshold` and only applied elsewhere
with `binary_metrics`, which also reports the trivial classifiers next to the real one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata

from common.statistics import rate


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """NaN when a class is empty."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auroc_with_interval(scores: np.ndarray, positive: np.ndarray, n_resamples: int = 1000, seed: int = 0,
                        confidence: float = 0.95, groups: np.ndarray | None = None) -> dict[str, Any]:
    """AUROC and a percentile bootstrap interval.

    Rows that share a group (the samples of one task) are not independent, so when some group holds
    more than one row whole groups are resampled; otherwise rows are resampled within each class
    (class sizes fixed)."""
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    point = auroc(scores, positive)
    result = {"auroc": point, "n_positive": int(positive.sum()), "n_negative": int((~positive).sum())}
    if np.isnan(point):
        return {**result, "low": float("nan"), "high": float("nan")}
    rng = np.random.default_rng(seed)
    group_ids = np.unique(groups, return_inverse=True)[1] if groups is not None else None
    if group_ids is not None and np.bincount(group_ids).max() > 1:
        members = [np.flatnonzero(group_ids == g) for g in range(group_ids.max() + 1)]
        result["resampled"] = f"{len(members)} groups"
        draws = []
        for _ in range(n_resamples):
            rows = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
            draws.append(auroc(scores[rows], positive[rows]))
    else:
        result["resampled"] = "rows within each class"
        pos, neg = scores[positive], scores[~positive]
        labels = np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]
        draws = [auroc(np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))], labels)
                 for _ in range(n_resamples)]
    tail = 100 * (1 - confidence) / 2
    return {**result, "low": float(np.nanpercentile(draws, tail)), "high": float(np.nanpercentile(draws, 100 - tail))}


def best_f1_threshold(scores: np.ndarray, positive: np.ndarray) -> float:
    """The threshold (predict positive when score >= it) that maximises F1; ties go to the higher threshold."""
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    candidates = np.unique(scores)
    predicted = scores[None, :] >= candidates[:, None]
    true_pos = (predicted & positive).sum(1)
    f1 = 2 * true_pos / (predicted.sum(1) + positive.sum())
    return float(candidates[len(f1) - 1 - np.argmax(f1[::-1])])


def binary_metrics(scores: np.ndarray, positive: np.ndarray, threshold: float) -> dict[str, Any]:
    """Precision, recall, F1 and accuracy at a fixed threshold, with counts, beside the trivial classifiers."""
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    predicted = scores >= threshold
    tp, fp = int((predicted & positive).sum()), int((predicted & ~positive).sum())
    fn, tn = int((~predicted & positive).sum()), int((~predicted & ~positive).sum())
    n_pos = tp + fn
    always_positive_f1 = 2 * n_pos / (len(scores) + n_pos) if len(scores) else float("nan")
    return {"threshold": threshold, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": rate(tp, tp + fp).to_dict(), "recall": rate(tp, n_pos).to_dict(),
            "f1": 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0,
            "accuracy": rate(tp + tn, len(scores)).to_dict(),
            "trivial": {"always_positive": {"f1": always_positive_f1, "accuracy": n_pos / len(scores)},
                        "always_negative": {"f1": 0.0, "accuracy": 1 - n_pos / len(scores)}}}
