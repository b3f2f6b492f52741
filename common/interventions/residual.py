"""Residual addition, the first intervention kind: h += alpha * unit(v) at the output of decoder layer L.

Position policies:
- `all`: every real prompt position and every generated token (for directions found over the code);
- `last_prompt`: only the last prompt position (for directions read there, before any code exists);
  generated tokens are untouched.
Left padding is never steered: a prefill is one prompt alone, and decode steps add per row. Direction
algebra (`negated`, `scaled`, `at`) makes variants instead of hand-built copies.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, ClassVar, Iterator, Sequence

import torch

from common.config import POSITION_POLICIES
from common.directions import SteeringDirection
from common.hooks import decoder_layers, layer_forward_hooks, layer_output, with_hidden
from common.interventions.base import register


@register
@dataclass(frozen=True)
class ResidualAddition:
    kind: ClassVar[str] = "residual_addition"
    direction: SteeringDirection  # added as a unit vector
    alpha: float  # in units of the residual stream
    positions: str = "all"

    def __post_init__(self):
        if self.positions not in POSITION_POLICIES:
            raise ValueError(f"position policy {self.positions!r}: expected one of {POSITION_POLICIES}")

    @cached_property
    def unit_vector(self) -> torch.Tensor:
        return self.direction.unit().vector

    @cached_property
    def label(self) -> str:
        """e.g. 'mean_difference/layer_15#1a2b3c4d@L15x30:all': name, digest of the unit vector, layer, alpha,
        positions."""
        digest = hashlib.sha256(self.unit_vector.numpy().tobytes()).hexdigest()[:8]
        return f"{self.direction.name}#{digest}@L{self.direction.layer}x{self.alpha:g}:{self.positions}"

    @cached_property
    def added(self) -> torch.Tensor:
        """alpha * unit direction: what one steered position receives."""
        return self.alpha * self.unit_vector

    @property
    def first_layer(self) -> int:
        return self.direction.layer

    steers_prefill: ClassVar[bool] = True

    @property
    def steers_generated_tokens(self) -> bool:
        return self.positions == "all"

    def negated(self) -> ResidualAddition:
        """The opposite direction, named so; negating twice gives the original name back."""
        name = self.direction.name
        flipped = name[:-len("/negated")] if name.endswith("/negated") else f"{name}/negated"
        provenance = {**self.direction.provenance, "negated": not self.direction.provenance.get("negated", False)}
        return replace(self, direction=replace(self.direction, name=flipped, vector=-self.direction.vector,
                                               provenance=provenance))

    def scaled(self, factor: float) -> ResidualAddition:
        return replace(self, alpha=self.alpha * factor)

    def at(self, alpha: float) -> ResidualAddition:
        return replace(self, alpha=alpha)

    def columns(self) -> dict[str, Any]:
        return {"kind": self.kind, "intervention": self.label, "direction": self.direction.name,
                "source": self.direction.source, "layer": self.direction.layer, "alpha": self.alpha,
                "positions": self.positions}

    def prefill_applied(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
        return residual_added(model, self)

    def after_prefill(self, prefill: Any) -> tuple[ResidualAddition, list[tuple[torch.Tensor, torch.Tensor]]]:
        return self, prefill.keys_values

    @classmethod
    def decoder(cls, model: torch.nn.Module) -> RowAdditions:
        return RowAdditions(model)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        d = self.direction
        return {"vector": d.vector}, {"name": d.name, "layer": d.layer, "source": d.source,
                                      "provenance": d.provenance, "position": d.position, "alpha": self.alpha,
                                      "positions": self.positions}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> ResidualAddition:
        direction = SteeringDirection(metadata["name"], int(metadata["layer"]), tensors["vector"], metadata["source"],
                                      metadata["provenance"], metadata["position"])
        return cls(direction, float(metadata["alpha"]), metadata["positions"])


@contextlib.contextmanager
def residual_added(model: torch.nn.Module, addition: ResidualAddition, prompt_mask: torch.Tensor | None = None
                   ) -> Iterator[None]:
    """Steer every forward pass inside the block as a pass over whole prompts; `prompt_mask`
    [batch, prompt_len] marks real prompt tokens (None: all are real). Positions past the prompt in a
    longer pass (teacher forcing a program) count as generated tokens. The vector is `added`, made in
    float32 and cast once, the same one decode steps add."""

    def hook(_module, _inputs, output):
        hidden = layer_output(output)
        added = addition.added.to(hidden.device, hidden.dtype)
        return with_hidden(output, hidden + position_weights(hidden, prompt_mask, addition.positions) * added)

    with layer_forward_hooks(model, {addition.direction.layer: hook}):
        yield


def position_weights(hidden: torch.Tensor, prompt_mask: torch.Tensor | None, positions: str) -> torch.Tensor:
    """[batch, seq, 1]: 1 where the vector is added, 0 elsewhere, for a pass that starts at position 0."""
    batch, seq = hidden.shape[:2]
    if prompt_mask is None:
        prompt = torch.ones(batch, seq, dtype=torch.bool, device=hidden.device)
    else:
        prompt = prompt_mask.to(hidden.device, torch.bool)
    prompt_len = prompt.shape[1]
    if positions == "last_prompt":
        weights = torch.zeros(batch, seq, dtype=hidden.dtype, device=hidden.device)
        weights[:, prompt_len - 1] = 1.0
    else:
        generated = torch.ones(batch, seq - prompt_len, dtype=torch.bool, device=hidden.device)
        weights = torch.cat([prompt, generated], dim=1).to(hidden.dtype)
    return weights.unsqueeze(-1)


class RowAdditions:
    """Decode steps where row i of the batch gets its own vector at its own layer (zero for rows not
    steered there, or steered at `last_prompt` only). Hooks are added for each new layer as it appears."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.additions: dict[int, torch.Tensor] = {}  # layer -> [rows, d_model]
        self.active = False
        self._handles: dict[int, torch.utils.hooks.RemovableHandle] = {}

    def __enter__(self) -> RowAdditions:
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()

    def update(self, rows: Sequence[ResidualAddition | None]) -> None:
        steered = [r for r in rows if r is not None and r.steers_generated_tokens]
        self.additions = {}
        for layer in sorted({r.direction.layer for r in steered}):
            like = next(decoder_layers(self.model)[layer].parameters())  # the layer's own device and dtype
            added = torch.zeros(len(rows), steered[0].added.shape[-1], dtype=like.dtype, device=like.device)
            for i, r in enumerate(rows):
                if r is not None and r.steers_generated_tokens and r.direction.layer == layer:
                    added[i] = r.added.to(like.device, like.dtype)
            self.additions[layer] = added
            if layer not in self._handles:
                self._handles[layer] = decoder_layers(self.model)[layer].register_forward_hook(self._hook(layer))

    def _hook(self, layer: int):
        def hook(_module, _inputs, output):
            if not self.active or layer not in self.additions:
                return output
            hidden = layer_output(output)
            return with_hidden(output, hidden + self.additions[layer][:, None, :])
        return hook
