"""A multi-cluster steering dictionary with a learned router (seed 000).

Per task of the sae split, a steering vector points from the mean activation of its failing programs to that of its
passing ones (at a code position); k-means over those vectors, as unit vectors, gives K cluster means, the
dictionary. A linear projection P maps the activation at the last prompt token, read before any code exists, to
where that task's vector points; routing weighs the dictionary by the cosine of P(h) with each mean:

    w = softmax(tau * cos(P(h), mu_k)),    s = sum_k w_k mu_k

`s` is the steering adjustment (self-steering adds alpha * s), and the routing's shape (max w, the top-2 margin of
w, cos(P(h), s), |s|) is the activation half of the confidence features of phase 3.9. A `route_order` permutes the
weights before they are used: random routing, the control that keeps the dictionary and breaks the router.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np
import torch

ROUTING_FEATURES = ("max_weight", "top2_margin", "cos_projection_adjustment", "adjustment_norm")


class Routing(NamedTuple):
    projected: torch.Tensor  # [n, d] P(h)
    weights: torch.Tensor  # [n, K] softmax routing weights (after any route_order)
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
    route_order: tuple[int, ...] | None = None  # None: the learned routing; a permutation of range(K): random routing

    @property
    def n_clusters(self) -> int:
        return int(self.means.shape[0])

    @cached_property
    def digest(self) -> str:
        """Eight hex digits of the content: two dictionaries of one name that route differently differ here."""
        hashed = hashlib.sha256()
        for tensor in (self.means, self.weight, self.bias, self.input_mean, self.input_scale):
            hashed.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
        hashed.update(repr((self.layer, float(self.tau), self.route_order)).encode())
        return hashed.hexdigest()[:8]

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """P(h) for rows of activations [n, d] (float32, on the dictionary's device)."""
        standardised = (hidden.float() - self.input_mean) / self.input_scale
        return standardised @ self.weight.T + self.bias

    def route(self, hidden: torch.Tensor) -> Routing:
        projected = self.project(hidden)
        cosines = torch.nn.functional.normalize(projected, dim=-1) @ self.means.T
        weights = torch.softmax(self.tau * cosines, dim=-1)
        if self.route_order is not None:
            weights = weights[:, list(self.route_order)]
        return Routing(projected, weights, weights @ self.means)

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

    def rerouted(self, route_order: tuple[int, ...]) -> SteeringDictionary:
        if sorted(route_order) != list(range(self.n_clusters)):
            raise ValueError(f"route_order {route_order} is not a permutation of {self.n_clusters} clusters")
        return replace(self, route_order=tuple(int(i) for i in route_order))

    def to(self, device: torch.device | str) -> SteeringDictionary:
        moved = {name: getattr(self, name).to(device) for name in _TENSORS}
        return replace(self, **moved)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return ({name: getattr(self, name) for name in _TENSORS},
                {"layer": self.layer, "tau": self.tau,
                 "route_order": None if self.route_order is None else list(self.route_order)})

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> SteeringDictionary:
        order = metadata.get("route_order")
        return cls(int(metadata["layer"]), *(tensors[name].float() for name in _TENSORS), float(metadata["tau"]),
                   None if order is None else tuple(int(i) for i in order))


_TENSORS = ("means", "weight", "bias", "input_mean", "input_scale")
