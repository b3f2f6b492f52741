"""Which SAE latents separate code that will pass from code that will fail: scores for all latents at once.

For each latent, over the analysed rows (phase 1, sae split, last prompt token):
- f_correct / f_incorrect: fraction of passing / failing rows on which it fires (activation > 0);
- separation_score = f_correct - f_incorrect (its negative ranks incorrect-preferring latents);
- t_statistic: Welch's t of the activation values, passing minus failing (0 where neither class varies);
- mean activation per class.
Everything is a tensor operation over [n_rows, d_sae]; `tests/test_sae_analysis.py` checks it
against a plain loop. Stability: tasks are resampled with replacement and the scores recomputed,
all resamples in one matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from common.saes import load_sae

GEMMA_SCOPE_RELEASE = "gemma-scope-2b-pt-res-canonical"


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
    t = torch.where(spread > 0, (mean_good - mean_bad) / spread.clamp_min(1e-300), torch.zeros_like(spread))
    return LatentScores(f_correct.numpy(), f_incorrect.numpy(), (f_correct - f_incorrect).numpy(), t.numpy(),
                        mean_good.numpy(), mean_bad.numpy())


def task_bootstrap_weights(task_ids: np.ndarray, n_resamples: int, seed: int) -> torch.Tensor:
    """[n_resamples, n_rows]: how often each row's task was drawn when tasks are resampled with replacement."""
    tasks, row_task = np.unique(task_ids, return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(tasks), size=(n_resamples, len(tasks)))
    counts = np.stack([np.bincount(row, minlength=len(tasks)) for row in draws])
    return torch.as_tensor(counts[:, row_task], dtype=torch.float32)


def bootstrap_separation(fires: torch.Tensor, passed: np.ndarray, weights: torch.Tensor) -> torch.Tensor:
    """[n_resamples, d_sae] separation scores, one row per resample; a resample missing a class gives NaN."""
    mask = torch.tensor(np.asarray(passed, dtype=np.float32))
    good_w, bad_w = weights * mask, weights * (1 - mask)
    f_correct = (good_w @ fires) / good_w.sum(1, keepdim=True)
    f_incorrect = (bad_w @ fires) / bad_w.sum(1, keepdim=True)
    return f_correct - f_incorrect


def permutation_max_separation(fires: torch.Tensor, passed: np.ndarray, eligible: torch.Tensor, n_permutations: int,
                               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Best separation over eligible latents when the pass/fail labels are shuffled: the chance level.

    With ~20k latents some separate the classes by luck; the observed best score means something
    only if it beats these. Returns (best correct-preferring, best incorrect-preferring) per permutation.
    """
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor(np.asarray(passed, dtype=np.float32))
    shuffled = torch.stack([labels[torch.randperm(len(labels), generator=generator)] for _ in range(n_permutations)])
    pool = fires[:, eligible]
    separation = (shuffled @ pool) / labels.sum() - ((1 - shuffled) @ pool) / (1 - labels).sum()
    return separation.max(1).values.numpy(), (-separation).max(1).values.numpy()


def bootstrap_ranks(resampled: torch.Tensor, eligible: torch.Tensor, chosen: list[int]) -> torch.Tensor:
    """[n_resamples, len(chosen)] rank (1 = best) of each chosen column among the eligible ones, higher is better."""
    pool = resampled[:, eligible]
    return torch.stack([(pool > resampled[:, [column]]).sum(1) + 1 for column in chosen], dim=1)
