"""Direction extraction from contrastive pairs: every aggregator takes the same two arguments.

`positive[i]` and `negative[i]` are the activations of pair i (a passing program and a failing one of the same
task), `[n_pairs, d_model]` each; an aggregator returns one unit direction pointing from "fails" towards "passes".
A registry keyed by name, as steering-vectors keys its aggregators, so a phase iterates them and a new one is a
function here:
- `mean_difference`: the mean of the paired differences;
- `pca`: the first principal component of the centred paired differences, its sign fixed so that the
  differences project positively on it (seed 003's paired PCA);
- `probe`: the weight vector of a logistic regression telling which side of a pair passes from the paired
  differences: a discriminative direction, which discounts directions where pairs vary a lot.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

Aggregator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

AGGREGATORS: dict[str, Aggregator] = {}


def aggregator(name: str) -> Callable[[Aggregator], Aggregator]:
    def register(function: Aggregator) -> Aggregator:
        if name in AGGREGATORS:
            raise ValueError(f"aggregator {name!r} is registered twice")
        AGGREGATORS[name] = function
        return function
    return register


class NoDirection(ValueError):
    """The pairs give no direction: a zero or non-finite result."""


def _unit(vector: torch.Tensor) -> torch.Tensor:
    norm = float(vector.norm())
    if norm == 0.0 or not np.isfinite(norm):
        raise NoDirection("the pairs give no direction (zero or non-finite)")
    return (vector / norm).to(torch.float32)


@aggregator("mean_difference")
def mean_difference(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    return _unit((positive - negative).double().mean(0))


def first_component(differences: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(unit first principal component of the centred rows, sign towards their mean; share of variance it holds)."""
    centred = differences.double() - differences.double().mean(0)
    _, singular, right = torch.linalg.svd(centred, full_matrices=False)
    component = right[0]
    if float((differences.double() @ component).mean()) < 0:
        component = -component
    explained = float(singular[0] ** 2 / (singular ** 2).sum()) if float(singular.sum()) > 0 else 0.0
    return component.to(torch.float32), explained


@aggregator("pca")
def pca(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    return _unit(first_component(positive - negative)[0])


@aggregator("probe")
def probe(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """A logistic regression on the paired differences, each also entered negated with the other label and no
    intercept: it learns which side of a pair passes, so the pairing (and a task's shared context) is kept. The
    features stay in activation units, so its L2 penalty treats every direction of the residual stream alike."""
    differences = (positive - negative).double().numpy()
    features = np.concatenate([differences, -differences])
    labels = np.r_[np.ones(len(differences)), np.zeros(len(differences))]
    model = LogisticRegression(C=1.0, fit_intercept=False, max_iter=2000).fit(features, labels)
    return _unit(torch.from_numpy(model.coef_[0]))


def ordering(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """Per pair: 1 where the positive side scores higher, 0 where lower, 0.5 on a tie."""
    return (np.sign(np.asarray(positive, dtype=float) - np.asarray(negative, dtype=float)) + 1) / 2


def pair_ordered(direction: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> np.ndarray:
    """Per pair: does its positive side project further along `direction` than its negative side (1, 0, or 0.5)?"""
    return ordering((positive.double() @ direction.double()).numpy(), (negative.double() @ direction.double()).numpy())
