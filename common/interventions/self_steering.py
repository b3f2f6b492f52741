"""Self-steering (seed 000): each row steered by a vector computed from its own prompt, h += alpha * s(h).

In a row's prefill (a prompt alone), the hook at the dictionary's layer reads the last prompt token's activation
there, routes it through the dictionary (common/steering_dictionary.py) to the adjustment s, and adds alpha * s to
every prompt position; the vector is handed to `after_prefill` (the prefill keeps what `prefill_applied` yields), and
from then on the row is an ordinary residual addition of alpha * s on every generated token, so decode steps reuse
the residual kind's per-row applier. s has norm at most 1 (a convex mix of unit means): at alpha 1 a confident
route adds a unit vector, an undecided one less.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, ClassVar, Iterator

import torch

from common.directions import SteeringDirection
from common.hooks import layer_forward_hooks, layer_output, with_hidden
from common.interventions.base import register
from common.interventions.residual import ResidualAddition, RowAdditions
from common.steering_dictionary import SteeringDictionary

SOURCE = "self_steering"


@register
@dataclass(frozen=True)
class SelfSteering:
    kind: ClassVar[str] = "self_steering"
    name: str
    dictionary: SteeringDictionary
    alpha: float = 1.0
    position: str = "code_last"  # where the dictionary's task vectors were read
    negated_push: bool = False  # pushes along -s(h)
    _on_device: dict[str, SteeringDictionary] = field(default_factory=dict, compare=False, repr=False)

    steers_prefill: ClassVar[bool] = True

    @cached_property
    def label(self) -> str:
        return f"{self.name}#{self.dictionary.digest}@L{self.dictionary.layer}x{self.alpha:g}:all"

    @property
    def first_layer(self) -> int:
        return self.dictionary.layer

    def columns(self) -> dict[str, Any]:
        return {"kind": self.kind, "intervention": self.label, "direction": self.name, "source": SOURCE,
                "layer": self.dictionary.layer, "alpha": self.alpha, "positions": "all"}

    def at(self, strength: float) -> SelfSteering:
        return replace(self, alpha=strength)

    def negated(self) -> SelfSteering:
        """Pushes along -s(h): the routing is the same, the adjustment's sign flips (named so; twice gives back the
        original)."""
        name = self.name[:-len("/negated")] if self.negated_push else f"{self.name}/negated"
        return replace(self, name=name, negated_push=not self.negated_push)

    def vector(self, hidden_last: torch.Tensor) -> torch.Tensor:
        """The signed adjustment [n, d] (float32) for last-prompt activations [n, d]."""
        device = str(hidden_last.device)
        if device not in self._on_device:  # P is d x d: moved once per device, not once per prompt
            self._on_device[device] = self.dictionary.to(hidden_last.device)
        dictionary = self._on_device[device]
        adjustment = dictionary.route(hidden_last.float()).adjustment
        return -adjustment if self.negated_push else adjustment

    @contextlib.contextmanager
    def prefill_applied(self, model: torch.nn.Module) -> Iterator[dict[str, torch.Tensor]]:
        """Yields {"vector": s} once the prefill has run (the prompt is a batch of one)."""
        computed: dict[str, torch.Tensor] = {}

        def hook(_module, _inputs, output):
            hidden = layer_output(output)
            if hidden.shape[0] != 1:
                raise ValueError(f"self-steering's prefill is one prompt alone; got a batch of {hidden.shape[0]}")
            vector = self.vector(hidden[:, -1])
            computed["vector"] = vector[0].detach().cpu()
            return with_hidden(output, hidden + (self.alpha * vector).to(hidden.dtype)[:, None, :])

        with layer_forward_hooks(model, {self.dictionary.layer: hook}):
            yield computed

    def after_prefill(self, prefill: Any) -> tuple[ResidualAddition, list[tuple[torch.Tensor, torch.Tensor]]]:
        vector = prefill.applied["vector"]
        norm = float(vector.norm())
        direction = SteeringDirection(f"{self.name}/row", self.dictionary.layer,
                                      vector if norm > 0 else torch.ones_like(vector), SOURCE,
                                      {"self_steering": self.label}, self.position)
        return ResidualAddition(direction, self.alpha * norm, "all"), prefill.keys_values

    @classmethod
    def decoder(cls, model: torch.nn.Module) -> RowAdditions:
        return RowAdditions(model)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, metadata = self.dictionary.state()
        return tensors, {**metadata, "name": self.name, "alpha": self.alpha, "position": self.position,
                         "negated_push": self.negated_push}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> SelfSteering:
        return cls(metadata["name"], SteeringDictionary.from_state(tensors, metadata), float(metadata["alpha"]),
                   metadata["position"], bool(metadata["negated_push"]))
