"""A multi-cluster steering dictionary with a learned router (seed 000).

Per task of the sae split, a steering vector points from the mean activation of its failing programs to that of its
passing ones (at a code position); k-means over those vectors, as unit vectors, gives K cluster means, the
dictionary. A linear projection P maps the activation at the last prompt token, read before any code exists, to
where that task's vector points; routing weighs the dictionary by the cosine of P(h) with each mean:

    w = softmax(tau * cos(P(h), mu_k)),    s = sum_k w_k mu_k

`s` is the steering adjustment (self-steering adds alpha * s), and the routing's shape (max w, the top-2 margin of
w, cos(P(h), s), |s|) is the activation half of the confidence features of phase 3.9. With a `routing_seed`, each row's
weights are shuffled before use by a permutation drawn from the seed and the row's own activation (the same prompt
always gets the same one): random routing, the control that keeps the dictionary and breaks the router.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np
import torch

DICTIONARY_FILE = "steering_dictionary.safetensors"  # phase 3.9's output: a `self_steering` intervention at alpha 1
ROUTING_FEATURES = ("max_weight", "top2_margin", "cos_projection_adjustment", "adjustment_norm")


class Routing(NamedTuple):
    projected: torch.Tensor  # [n, d] P(h)
    weights: torch.Tensor  # [n, K] softmax routing weights (shuffled per row under random routing)
    adjustment: torch.Tensor  # [n, d] s = weights @ means


@dataclass(frozen=True)
class SteeringDictionary:
    layer: int
    means: torch.Tensor  # [K, d] unit cluster means
    weight: torch.Tensor  # [d, d] P, applied to the standardised activation
    bias: torch.Tensor  # [d]
    input_mean: torch.Tensor  # [d] the sae split's mean last-prompt activation
    input_scale: torch.Tensor  # [d] and its standard deviation per dimension
    tau: float
    routing_seed: int | None = None  # None: the learned routing; else random routing drawn from this seed

    @property
    def n_clusters(self) -> int:
        return int(self.means.shape[0])

    @cached_property
    def digest(self) -> str:
        """Eight hex digits of the content: two dictionaries of one name that route differently differ here."""
        hashed = hashlib.sha256()
        for tensor in (self.means, self.weight, self.bias, self.input_mean, self.input_scale):
            hashed.update(tensor.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
        hashed.update(repr((self.layer, float(self.tau), self.routing_seed)).encode())
        return hashed.hexdigest()[:8]

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """P(h) for rows of activations [n, d] (float32, on the dictionary's device)."""
        standardised = (hidden.float() - self.input_mean) / self.input_scale
        return standardised @ self.weight.T + self.bias

    def route(self, hidden: torch.Tensor) -> Routing:
        projected = self.project(hidden)
        cosines = torch.nn.functional.normalize(projected, dim=-1) @ self.means.T
        weights = torch.softmax(self.tau * cosines, dim=-1)
        if self.routing_seed is not None:
            weights = torch.stack([row[self.random_order(h)] for row, h in zip(weights, hidden)])
        return Routing(projected, weights, weights @ self.means)

    def random_order(self, hidden_row: torch.Tensor) -> torch.Tensor:
        """The permutation random routing applies to one row: from the seed and a digest of the row's activation."""
        digest = hashlib.sha256(hidden_row.detach().to(torch.float32).cpu().contiguous().numpy().tobytes()).digest()
        rng = np.random.default_rng([int(self.routing_seed), int.from_bytes(digest[:8], "little")])
        return torch.from_numpy(rng.permutation(self.n_clusters)).to(hidden_row.device)

    def features(self, hidden: torch.Tensor) -> np.ndarray:
        """[n, 4] in ROUTING_FEATURES order."""
        with torch.no_grad():
            projected, weights, adjustment = self.route(hidden)
            top = torch.topk(weights, min(2, self.n_clusters), dim=-1).values
            margin = top[:, 0] - top[:, 1] if self.n_clusters > 1 else torch.ones_like(top[:, 0])
            cosine = torch.nn.functional.cosine_similarity(projected, adjustment, dim=-1)
            return torch.stack([top[:, 0], margin, cosine, adjustment.norm(dim=-1)], dim=1).double().numpy()

    def with_tau(self, tau: float) -> SteeringDictionary:
        return replace(self, tau=float(tau))

    def with_means(self, means: torch.Tensor) -> SteeringDictionary:
        """The same router over other unit means (of the same number): the random-dictionary control."""
        return replace(self, means=torch.nn.functional.normalize(means.float(), dim=-1))

    def randomly_routed(self, seed: int) -> SteeringDictionary:
        return replace(self, routing_seed=int(seed))

    def to(self, device: torch.device | str) -> SteeringDictionary:
        moved = {name: getattr(self, name).to(device) for name in _TENSORS}
        return replace(self, **moved)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return ({name: getattr(self, name) for name in _TENSORS},
                {"layer": self.layer, "tau": self.tau, "routing_seed": self.routing_seed})

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> SteeringDictionary:
        seed = metadata.get("routing_seed")
        return cls(int(metadata["layer"]), *(tensors[name].float() for name in _TENSORS), float(metadata["tau"]),
                   None if seed is None else int(seed))


_TENSORS = ("means", "weight", "bias", "input_mean", "input_scale")
