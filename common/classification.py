"""Scores as classifiers: AUROC with a bootstrap interval, within tasks, and over a baseline; an F1 threshold
chosen on one split only.

A score predicts a positive class (e.g. "this code will pass") when it is high. AUROC is the
Mann-Whitney probability that a random positive outscores a random negative (ties count half);
within-task AUROC asks the same of pairs from one task only, the test a score read before any code
exists cannot pass.
Thresholds are picked on the selection split by `best_f1_threshold` (or `youden_threshold`) and only applied elsewhere
with `binary_metrics`, which also reports the trivial classifiers next to the real one.
"""

from __future__ import annotations

from typing import Any, Callable

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


def weighted_aurocs(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC under each row of `weights` [n_resamples, n_rows] (how often each row was drawn), all resamples in
    one pass over the sorted scores; NaN where a resample holds no row of a class."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores, sorted_positive = scores[order], positive[order]
    drawn = np.asarray(weights, dtype=float)[:, order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # tie groups
    positives = np.add.reduceat(drawn * sorted_positive, starts, axis=1)
    negatives = np.add.reduceat(drawn * ~sorted_positive, starts, axis=1)
    below = np.cumsum(negatives, axis=1) - negatives
    wins = (positives * (below + 0.5 * negatives)).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return wins / (positives.sum(1) * negatives.sum(1))


def group_bootstrap_counts(groups: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """[n_resamples, n_rows]: how often each row's group (task) was drawn when groups are resampled with replacement."""
    names, row_group = np.unique(groups, return_inverse=True)
    draws = np.random.default_rng(seed).integers(0, len(names), size=(n_resamples, len(names)))
    counts = np.stack([np.bincount(row, minlength=len(names)) for row in draws]) if n_resamples else np.empty((0, 0))
    return counts[:, row_group] if n_resamples else np.empty((0, len(row_group)))


def _class_bootstrap_counts(positive: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """[n_resamples, n_rows] draws of rows with replacement within each class (class sizes fixed)."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_resamples, len(positive)))
    for members in (np.flatnonzero(positive), np.flatnonzero(~positive)):
        counts[:, members] = rng.multinomial(len(members), np.full(len(members), 1 / len(members)), size=n_resamples)
    return counts


def percentile_interval(draws: np.ndarray, confidence: float = 0.95) -> dict[str, Any]:
    """Percentile interval of bootstrap draws; draws that are NaN (a resample that lost a class) are counted,
    not silently dropped."""
    values = np.asarray(draws, dtype=float)
    kept = values[~np.isnan(values)]
    tail = 100 * (1 - confidence) / 2
    if not len(kept):
        return {"low": float("nan"), "high": float("nan"), "n_resamples": len(values), "resamples_lost_class": len(values)}
    return {"low": float(np.percentile(kept, tail)), "high": float(np.percentile(kept, 100 - tail)),
            "n_resamples": len(values), "resamples_lost_class": int(len(values) - len(kept))}


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
        counts = group_bootstrap_counts(groups, n_resamples, seed)
    else:
        result["resampled"] = "rows within each class"
        counts = _class_bootstrap_counts(positive, n_resamples, seed)
    return {**result, **percentile_interval(weighted_aurocs(scores, positive, counts), confidence)}


def _task_wins(scores: np.ndarray, positive: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per group with both classes (sorted by group): Mann-Whitney wins of its positives over its negatives (ties
    half), and its number of (positive, negative) pairs."""
    frame = pd.DataFrame({"group": groups, "score": scores, "positive": positive})
    wins, pairs = [], []
    for _, group in frame.groupby("group", sort=True):
        n_pos = int(group["positive"].sum())
        n_neg = len(group) - n_pos
        if n_pos and n_neg:
            ranks = rankdata(group["score"].to_numpy())
            wins.append(ranks[group["positive"].to_numpy()].sum() - n_pos * (n_pos + 1) / 2)
            pairs.append(n_pos * n_neg)
    return np.asarray(wins, dtype=float), np.asarray(pairs, dtype=float)


def within_task_auroc(scores: np.ndarray, positive: np.ndarray, groups: np.ndarray, n_resamples: int = 1000,
                      seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """AUROC over pairs of a positive and a negative row of the same group (task) only, ties half: can the
    score tell this task's good program from its bad one? Groups with one class add no pair; a group with
    many pairs weighs more. The interval resamples groups; each keeps its pairs."""
    wins, pairs = _task_wins(np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool), groups)
    result: dict[str, Any] = {"n_tasks_with_both_classes": len(pairs), "n_pairs": int(pairs.sum())}
    if not len(pairs):
        return {**result, "auroc": float("nan"), "low": float("nan"), "high": float("nan")}
    draws = np.random.default_rng(seed).integers(0, len(pairs), size=(n_resamples, len(pairs)))
    resampled = wins[draws].sum(1) / pairs[draws].sum(1)
    return {**result, "auroc": float(wins.sum() / pairs.sum()), **percentile_interval(resampled, confidence)}


def within_task_difference(scores: np.ndarray, reference: np.ndarray, positive: np.ndarray, groups: np.ndarray,
                           n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """Within-task AUROC of `scores` minus that of `reference` on the same pairs, the interval resampling groups
    for both at once: does a score tell a task's programs apart better than, say, the model's own confidence?"""
    positive = np.asarray(positive, dtype=bool)
    wins, pairs = _task_wins(np.asarray(scores, dtype=float), positive, groups)
    reference_wins, _ = _task_wins(np.asarray(reference, dtype=float), positive, groups)
    if not len(pairs):
        return {"difference": float("nan"), "low": float("nan"), "high": float("nan"), "n_pairs": 0}
    draws = np.random.default_rng(seed).integers(0, len(pairs), size=(n_resamples, len(pairs)))
    resampled = (wins[draws].sum(1) - reference_wins[draws].sum(1)) / pairs[draws].sum(1)
    return {"difference": float((wins.sum() - reference_wins.sum()) / pairs.sum()), "n_pairs": int(pairs.sum()),
            **percentile_interval(resampled, confidence)}


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
    counts = group_bootstrap_counts(groups_eval, n_resamples, seed)
    draws = weighted_aurocs(both_pred, positive_eval, counts) - weighted_aurocs(base_pred, positive_eval, counts)
    base_auc, both_auc = auroc(base_pred, positive_eval), auroc(both_pred, positive_eval)
    return {"baseline_auroc": base_auc, "combined_auroc": both_auc, "difference": both_auc - base_auc,
            **percentile_interval(draws, confidence)}


def _best_threshold(scores: np.ndarray, positive: np.ndarray, criterion: Callable[..., np.ndarray]) -> float:
    """The threshold (predict positive when score >= it) maximising `criterion(true_pos, predicted, n_pos, n_neg)`,
    each an array over the candidate thresholds; ties go to the higher threshold."""
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    candidates = np.unique(scores)
    predicted = scores[None, :] >= candidates[:, None]
    value = criterion((predicted & positive).sum(1), predicted.sum(1), int(positive.sum()), int((~positive).sum()))
    return float(candidates[len(value) - 1 - np.argmax(value[::-1])])


def best_f1_threshold(scores: np.ndarray, positive: np.ndarray) -> float:
    """The threshold that maximises F1."""
    return _best_threshold(scores, positive, lambda tp, predicted, n_pos, n_neg: 2 * tp / (predicted + n_pos))


def youden_threshold(scores: np.ndarray, positive: np.ndarray) -> float:
    """The threshold that maximises sensitivity + specificity - 1 (Youden's J), which, unlike F1, does not favour
    flagging nearly everything when the positive class is the majority."""
    return _best_threshold(scores, positive, lambda tp, predicted, n_pos, n_neg:
                           tp / max(n_pos, 1) - (predicted - tp) / max(n_neg, 1))


def binary_metrics(scores: np.ndarray, positive: np.ndarray, threshold: float) -> dict[str, Any]:
    """Precision, recall, F1 and accuracy at a fixed threshold, with counts, beside the trivial classifiers."""
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    predicted = scores >= threshold
    tp, fp = int((predicted & positive).sum()), int((predicted & ~positive).sum())
    fn, tn = int((~predicted & positive).sum()), int((~predicted & ~positive).sum())
    n_pos = tp + fn
    always_positive_f1 = 2 * n_pos / (len(scores) + n_pos) if len(scores) else float("nan")
    positive_share = n_pos / len(scores) if len(scores) else float("nan")  # no row with a score: nothing to count
    return {"threshold": threshold, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": rate(tp, tp + fp).to_dict(), "recall": rate(tp, n_pos).to_dict(),
            "f1": 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0,
            "accuracy": rate(tp + tn, len(scores)).to_dict(),
            "trivial": {"always_positive": {"f1": always_positive_f1, "accuracy": positive_share},
                        "always_negative": {"f1": 0.0, "accuracy": 1 - positive_share}}}
