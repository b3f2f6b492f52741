"""Scores as classifiers: AUROC with a bootstrap interval, within tasks, and over a baseline; an F1 threshold
chosen on one split only.

A score predicts a positive class (e.g. "this code will pass") when it is high. AUROC is the
Mann-Whitney probability that a random positive outscores a random negative (ties count half);
within-task AUROC asks the same of pairs from one task only, the test a score read before any code
exists cannot pass.
Thresholds are picked on the selection split by `best_f1_threshold` and only applied elsewhere
with `binary_metrics`, which also reports the trivial classifiers next to the real one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from common.statistics import rate


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """NaN when a class is empty."""
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, np.asarray(scores, dtype=float)))


def _percentile_interval(draws: list[float], confidence: float) -> dict[str, Any]:
    """Percentile interval of bootstrap draws; draws that are NaN (a resample that lost a class) are counted,
    not silently dropped."""
    values = np.asarray(draws, dtype=float)
    kept = values[~np.isnan(values)]
    tail = 100 * (1 - confidence) / 2
    if not len(kept):
        return {"low": float("nan"), "high": float("nan"), "n_resamples": len(values), "resamples_lost_class": len(values)}
    return {"low": float(np.percentile(kept, tail)), "high": float(np.percentile(kept, 100 - tail)),
            "n_resamples": len(values), "resamples_lost_class": int(len(values) - len(kept))}


def group_resamples(groups: np.ndarray, n_resamples: int, seed: int) -> list[np.ndarray]:
    """Row indices of `n_resamples` resamples of whole groups (tasks) with replacement."""
    group_ids = np.unique(groups, return_inverse=True)[1]
    members = [np.flatnonzero(group_ids == g) for g in range(group_ids.max() + 1)] if len(group_ids) else []
    rng = np.random.default_rng(seed)
    return [np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
            for _ in range(n_resamples)] if members else []


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
    if groups is not None and len(np.unique(groups)) < len(groups):
        result["resampled"] = f"{len(np.unique(groups))} groups"
        draws = [auroc(scores[rows], positive[rows]) for rows in group_resamples(groups, n_resamples, seed)]
    else:
        rng = np.random.default_rng(seed)
        result["resampled"] = "rows within each class"
        pos, neg = scores[positive], scores[~positive]
        labels = np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]
        draws = [auroc(np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))], labels)
                 for _ in range(n_resamples)]
    return {**result, **_percentile_interval(draws, confidence)}


def within_task_auroc(scores: np.ndarray, positive: np.ndarray, groups: np.ndarray, n_resamples: int = 1000,
                      seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """AUROC over pairs of a positive and a negative row of the same group (task) only, ties half: can the
    score tell this task's good program from its bad one? Groups with one class add no pair. The interval
    resamples groups; each keeps its pairs."""
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    frame = pd.DataFrame({"group": groups, "score": scores, "positive": positive})
    wins, pairs = [], []
    for _, group in frame.groupby("group", sort=True):
        n_pos = int(group["positive"].sum())
        n_neg = len(group) - n_pos
        if n_pos and n_neg:
            ranks = rankdata(group["score"].to_numpy())
            wins.append(ranks[group["positive"].to_numpy()].sum() - n_pos * (n_pos + 1) / 2)
            pairs.append(n_pos * n_neg)
    wins_arr, pairs_arr = np.asarray(wins, dtype=float), np.asarray(pairs, dtype=float)
    result: dict[str, Any] = {"n_tasks_with_both_classes": len(pairs), "n_pairs": int(pairs_arr.sum())}
    if not len(pairs):
        return {**result, "auroc": float("nan"), "low": float("nan"), "high": float("nan")}
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(pairs), size=(n_resamples, len(pairs)))
    resampled = wins_arr[draws].sum(1) / pairs_arr[draws].sum(1)
    tail = 100 * (1 - confidence) / 2
    return {**result, "auroc": float(wins_arr.sum() / pairs_arr.sum()),
            "low": float(np.percentile(resampled, tail)), "high": float(np.percentile(resampled, 100 - tail))}


def fit_combiner(features: np.ndarray, positive: np.ndarray) -> Any:
    """A standardised logistic regression on a few score columns: how scores are combined, fitted on one split."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(features, positive)


def incremental_auroc(base_fit: np.ndarray, score_fit: np.ndarray, positive_fit: np.ndarray, base_eval: np.ndarray,
                      score_eval: np.ndarray, positive_eval: np.ndarray, groups_eval: np.ndarray,
                      n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """Does a score add to a baseline? Logistic models on (baseline) and on (baseline, score), fitted on one split
    (`*_fit`), compared by AUROC on another (`*_eval`); the interval of the difference resamples evaluation groups,
    both models on the same resample."""
    base_train, base_test = np.asarray(base_fit, float).reshape(-1, 1), np.asarray(base_eval, float).reshape(-1, 1)
    both_train = np.c_[base_train, np.asarray(score_fit, float)]
    both_test = np.c_[base_test, np.asarray(score_eval, float)]
    positive_fit, positive_eval = np.asarray(positive_fit, bool), np.asarray(positive_eval, bool)
    if positive_fit.all() or not positive_fit.any() or positive_eval.all() or not positive_eval.any():
        return {"baseline_auroc": float("nan"), "combined_auroc": float("nan"), "difference": float("nan"),
                "low": float("nan"), "high": float("nan"), "note": "a split lacks a class"}
    base_pred = fit_combiner(base_train, positive_fit).decision_function(base_test)
    both_pred = fit_combiner(both_train, positive_fit).decision_function(both_test)
    draws = [auroc(both_pred[rows], positive_eval[rows]) - auroc(base_pred[rows], positive_eval[rows])
             for rows in group_resamples(groups_eval, n_resamples, seed)]
    base_auc, both_auc = auroc(base_pred, positive_eval), auroc(both_pred, positive_eval)
    return {"baseline_auroc": base_auc, "combined_auroc": both_auc, "difference": both_auc - base_auc,
            **_percentile_interval(draws, confidence)}


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
