"""Which SAE latents separate code that will pass from code that will fail: scores for all latents at once.

For each latent, over the analysed rows (phase 1, sae split, last prompt token):
- f_correct / f_incorrect: fraction of passing / failing rows on which it fires (activation > 0);
- separation_score = f_correct - f_incorrect (its negative ranks incorrect-preferring latents);
- t_statistic: Welch's t of the activation values, passing minus failing (0 where neither class varies
  and their means agree; +-T_STATISTIC_CAP where neither varies but the means differ: perfectly separated);
- mean activation per class.
Everything is a tensor operation over [n_rows, d_sae]; `tests/test_sae_analysis.py` checks it
against a plain loop. Stability: tasks are resampled with replacement and the scores recomputed,
all resamples in one matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from common.saes import load_sae

GEMMA_SCOPE_RELEASE = "gemma-scope-2b-pt-res-canonical"
T_STATISTIC_CAP = 1e6  # stands for an infinite t: both classes constant, at different values


def load_gemma_scope_sae(layer: int, width: str = "16k", device: str = "cpu"):
    """GemmaScope residual SAE of google/gemma-2-2b reading the output of decoder layer `layer`.

    GemmaScope `res` SAEs hook `blocks.{L}.hook_resid_post`: the same site phase 1 records.
    """
    return load_sae({"kind": "release", "release": GEMMA_SCOPE_RELEASE,
                     "sae_id": f"layer_{layer}/width_{width}/canonical", "layer": layer}, device)


@dataclass
class LatentScores:
    """Per-latent arrays of length d_sae."""
    f_correct: np.ndarray
    f_incorrect: np.ndarray
    separation: np.ndarray
    t_statistic: np.ndarray
    mean_correct: np.ndarray
    mean_incorrect: np.ndarray


def separation_scores(latents: torch.Tensor, passed: np.ndarray) -> LatentScores:
    """Scores of every latent; `latents` is [n_rows, d_sae], `passed` a boolean per row, both classes non-empty."""
    mask = torch.tensor(np.asarray(passed, dtype=bool))
    good, bad = latents[mask].double(), latents[~mask].double()
    if len(good) == 0 or len(bad) == 0:
        raise ValueError("separation scores need at least one passing and one failing row")
    f_correct, f_incorrect = (good > 0).double().mean(0), (bad > 0).double().mean(0)
    mean_good, mean_bad = good.mean(0), bad.mean(0)
    var_good = good.var(0, correction=1) if len(good) > 1 else torch.zeros_like(mean_good)
    var_bad = bad.var(0, correction=1) if len(bad) > 1 else torch.zeros_like(mean_bad)
    spread = torch.sqrt(var_good / len(good) + var_bad / len(bad))
    gap = mean_good - mean_bad
    t = torch.where(spread > 0, gap / spread.clamp_min(1e-300), torch.sign(gap) * T_STATISTIC_CAP).clamp(
        -T_STATISTIC_CAP, T_STATISTIC_CAP)
    return LatentScores(f_correct.numpy(), f_incorrect.numpy(), (f_correct - f_incorrect).numpy(), t.numpy(),
                        mean_good.numpy(), mean_bad.numpy())


def bootstrap_separation(fires: torch.Tensor, passed: np.ndarray, weights: torch.Tensor) -> torch.Tensor:
    """[n_resamples, d_sae] separation scores, one row per resample; a resample missing a class gives NaN."""
    mask = torch.tensor(np.asarray(passed, dtype=np.float32))
    good_w, bad_w = weights * mask, weights * (1 - mask)
    f_correct = (good_w @ fires) / good_w.sum(1, keepdim=True)
    f_incorrect = (bad_w @ fires) / bad_w.sum(1, keepdim=True)
    return f_correct - f_incorrect


def task_label_permutations(passed: np.ndarray, task_ids: np.ndarray, strata: np.ndarray, n_permutations: int,
                            seed: int) -> torch.Tensor:
    """[n_permutations, n_rows] labels shuffled the way the null hypothesis allows: whole tasks trade their
    rows' labels (the samples of a task are not independent), and only with tasks of the same stratum
    (difficulty level) and the same number of rows, so the null keeps what difficulty explains."""
    passed = np.asarray(passed, dtype=np.float32)
    rows_of = pd.Series(np.arange(len(task_ids))).groupby(np.asarray(task_ids), sort=True).apply(np.asarray)
    strata_of = {task: strata[rows[0]] for task, rows in rows_of.items()}
    exchangeable: dict[tuple, list] = {}
    for task, rows in rows_of.items():
        exchangeable.setdefault((strata_of[task], len(rows)), []).append(task)
    rng = np.random.default_rng(seed)
    out = np.empty((n_permutations, len(passed)), dtype=np.float32)
    for draw in range(n_permutations):
        for tasks in exchangeable.values():
            for task, source in zip(tasks, rng.permutation(len(tasks))):
                out[draw, rows_of[task]] = passed[rows_of[tasks[source]]]
    return torch.from_numpy(out)


def within_task_label_permutations(passed: np.ndarray, task_ids: np.ndarray, n_permutations: int, seed: int
                                   ) -> torch.Tensor:
    """[n_permutations, n_rows] labels shuffled among the rows of each task: the null of "nothing beyond the task",
    for positions whose activations differ between the programs of a task."""
    passed = np.asarray(passed, dtype=np.float32)
    rows_of = [rows for rows in pd.Series(np.arange(len(task_ids))).groupby(np.asarray(task_ids)).indices.values()
               if len(rows) > 1]
    rng = np.random.default_rng(seed)
    out = np.tile(passed, (n_permutations, 1))
    for draw in range(n_permutations):
        for rows in rows_of:
            out[draw, rows] = passed[rng.permutation(rows)]
    return torch.from_numpy(out)


def permutation_max_separation(fires: torch.Tensor, shuffled: torch.Tensor, eligible: torch.Tensor
                               ) -> tuple[np.ndarray, np.ndarray]:
    """Best separation over eligible latents under each row of shuffled labels: the chance level.

    With ~20k latents some separate the classes by luck; the observed best score means something
    only if it beats these. Returns (best correct-preferring, best incorrect-preferring) per permutation.
    """
    pool = fires[:, eligible]
    positives = shuffled.sum(1, keepdim=True)
    separation = (shuffled @ pool) / positives - ((1 - shuffled) @ pool) / (shuffled.shape[1] - positives)
    return separation.max(1).values.numpy(), (-separation).max(1).values.numpy()


def bootstrap_ranks(resampled: torch.Tensor, eligible: torch.Tensor, chosen: list[int]) -> torch.Tensor:
    """[n_resamples, len(chosen)] rank (1 = best) of each chosen column among the eligible ones, higher is better."""
    pool = resampled[:, eligible]
    return torch.stack([(pool > resampled[:, [column]]).sum(1) + 1 for column in chosen], dim=1)
