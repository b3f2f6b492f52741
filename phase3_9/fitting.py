"""Fitting seed 000's pieces on the sae split: per-task steering vectors, their k-means dictionary, the projection P.

P is trained with the seed's cosine loss (AdamW, weight decay) from the standardised last-prompt activation to the
task's unit steering vector. It starts from the constant guess (zero weights, the mean training vector as bias): a
router that cannot beat that says nothing about the task in front of it. With one row per task (a few hundred) a
d x d map overfits within a few epochs, so the number of epochs, 0 included, is chosen on a held-out fifth of the
tasks (the best held-out mean cosine, which therefore flatters P: the same search on shuffled vectors says by how
much), as is the learning rate (the public implementation's 1e-3 overshoots from
this start on standardised inputs: every step moves all d x d weights), and P is refitted on every task.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.cluster import KMeans

from common.contrastive_pairs import held_out_tasks

EPOCH_PATIENCE = 20  # held-out epochs without improvement before the search stops


@dataclass(frozen=True)
class ProjectionTraining:
    """The optimiser settings for P, as the config gives them: the learning rate is chosen from `lrs`."""
    lrs: tuple[float, ...]
    weight_decay: float
    batch_size: int
    max_epochs: int
    seed: int


def task_vectors(table: pd.DataFrame, code: torch.Tensor, references: dict[str, torch.Tensor]
                 ) -> tuple[list[str], torch.Tensor, dict[str, int]]:
    """Per task with a failing program that has an activation: the mean code activation of its passing programs (the
    model's own when it has any, else the reference's) minus the mean of its failing ones. Rows of `code` follow
    `table`; NaN rows (no program) are left out. Returns the task ids, [tasks, d] vectors and counts of where the
    passing side came from and of tasks left out."""
    located = ~torch.isnan(code).any(dim=1).numpy()
    passed = table["test_passed"].to_numpy(dtype=bool)
    task_ids = table["task_id"].astype(str).to_numpy()
    tasks, vectors = [], []
    counts = {"own_passing": 0, "reference": 0, "no_failing_program": 0, "no_passing_side": 0}
    for task in dict.fromkeys(task_ids):
        rows = task_ids == task
        failing, passing = rows & ~passed & located, rows & passed & located
        if not failing.any():
            counts["no_failing_program"] += 1
            continue
        if passing.any():
            positive = code[torch.from_numpy(passing)].double().mean(0)
            counts["own_passing"] += 1
        elif task in references:
            positive = references[task].double()
            counts["reference"] += 1
        else:
            counts["no_passing_side"] += 1
            continue
        tasks.append(task)
        vectors.append(positive - code[torch.from_numpy(failing)].double().mean(0))
    return tasks, torch.stack(vectors).float(), counts


def cluster_means(unit_vectors: torch.Tensor, n_clusters: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """K-means over unit vectors (their directions, not their sizes); each cluster's mean renormalised. Returns the
    [K, d] unit means and each vector's cluster."""
    labels = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(unit_vectors.double().numpy())
    means = torch.stack([unit_vectors[torch.from_numpy(labels == k)].double().mean(0) for k in range(n_clusters)])
    return torch.nn.functional.normalize(means, dim=-1).float(), labels


@dataclass(frozen=True)
class Projection:
    weight: torch.Tensor  # [d, d]
    bias: torch.Tensor  # [d]
    input_mean: torch.Tensor
    input_scale: torch.Tensor
    record: dict[str, Any]  # epochs chosen and the held-out curve


def _fit(hidden: torch.Tensor, targets: torch.Tensor, lr: float, epochs: int, settings: ProjectionTraining,
         held_out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.nn.Linear, list[float]]:
    """P trained on standardised `hidden` for `epochs`, starting from the constant guess (zero weights, the mean
    target as bias); given held-out rows, P as it was after the epoch (0: untrained) with the best held-out mean
    cosine, the search stopping EPOCH_PATIENCE epochs past it, and that cosine before training and after each
    epoch."""
    generator = torch.Generator().manual_seed(settings.seed)
    linear = torch.nn.Linear(hidden.shape[1], targets.shape[1])
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.copy_(torch.nn.functional.normalize(targets.mean(0), dim=-1))
    optimiser = torch.optim.AdamW(linear.parameters(), lr=lr, weight_decay=settings.weight_decay)
    curve: list[float] = []
    best_state = None

    def held_out_cosine() -> float:
        with torch.no_grad():
            return float(torch.nn.functional.cosine_similarity(linear(held_out[0]), held_out[1], dim=-1).mean())

    for epoch in range(epochs + 1):
        if epoch:
            for batch in torch.randperm(len(hidden), generator=generator).split(settings.batch_size):
                loss = 1 - torch.nn.functional.cosine_similarity(linear(hidden[batch]), targets[batch], dim=-1).mean()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        if held_out is None:
            continue
        curve.append(held_out_cosine())
        if curve[-1] == max(curve):
            best_state = {name: t.detach().clone() for name, t in linear.state_dict().items()}
        elif len(curve) - 1 - int(np.argmax(curve)) >= EPOCH_PATIENCE:
            break
    if best_state is not None:
        linear.load_state_dict(best_state)
    return linear, curve


def _standardiser(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return hidden.double().mean(0).float(), hidden.double().std(0).clamp_min(1e-6).float()


def _search(hidden: torch.Tensor, targets: torch.Tensor, held_out: np.ndarray, settings: ProjectionTraining
            ) -> tuple[float, list[float], dict[float, list[float]], Projection]:
    """Every learning rate tried on the fitted rows (standardised by their own mean and spread), scored on the held-out
    rows: the chosen rate, its held-out curve, every rate's curve, and the P it gives."""
    fit, test = torch.from_numpy(~held_out), torch.from_numpy(held_out)
    mean, scale = _standardiser(hidden[fit])
    standardised = (hidden - mean) / scale
    trials = {lr: _fit(standardised[fit], targets[fit], lr, settings.max_epochs, settings,
                       (standardised[test], targets[test])) for lr in settings.lrs}
    lr = max(settings.lrs, key=lambda rate: (max(trials[rate][1]), -rate))  # ties: the smaller step
    linear, curve = trials[lr]
    return lr, curve, {rate: c for rate, (_, c) in trials.items()}, Projection(
        linear.weight.detach().clone(), linear.bias.detach().clone(), mean, scale, {})


def train_projection(hidden: torch.Tensor, unit_targets: torch.Tensor, tasks: list[str], settings: ProjectionTraining
                     ) -> tuple[Projection, Projection, np.ndarray]:
    """P from last-prompt activations [tasks, d] to unit task vectors [tasks, d]: the learning rate and the number of
    epochs chosen on a held-out fifth of the tasks, then P refitted on all of them. Returns that P, the P fitted
    without the held-out tasks (for held-out checks), and the held-out mask.

    The held-out cosine is also the one the choice maximised, so it flatters P; the same search with the fitted
    tasks' vectors shuffled among them (the prompt then says nothing about the vector) shows by how much."""
    held_out = held_out_tasks(np.asarray(tasks), settings.seed)
    lr, curve, by_lr, trial = _search(hidden, unit_targets, held_out, settings)
    epochs = int(np.argmax(curve))  # curve[0] is before any training
    shuffled = unit_targets.clone()
    fitted_rows = np.flatnonzero(~held_out)
    shuffled[fitted_rows] = unit_targets[np.random.default_rng(settings.seed).permutation(fitted_rows)]
    _, null_curve, _, _ = _search(hidden, shuffled, held_out, settings)
    mean, scale = _standardiser(hidden)
    final, _ = _fit((hidden - mean) / scale, unit_targets, lr, epochs, settings)
    record = {"lr": lr, "epochs": epochs, "held_out_tasks": int(held_out.sum()), "fitted_tasks": int((~held_out).sum()),
              "held_out_mean_cosine": curve[epochs], "held_out_mean_cosine_of_constant": curve[0],
              "shuffled_targets_gain_over_constant": max(null_curve) - null_curve[0],
              "best_held_out_cosine_by_lr": {f"{rate:g}": max(c) for rate, c in by_lr.items()},
              "held_out_cosine_by_epoch": curve,
              "settings": {"lrs": list(settings.lrs), "weight_decay": settings.weight_decay,
                           "batch_size": settings.batch_size, "max_epochs": settings.max_epochs}}
    return (Projection(final.weight.detach().clone(), final.bias.detach().clone(), mean, scale, record),
            replace(trial, record=record), held_out)
