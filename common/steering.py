"""Adding alpha * direction to the residual stream during generation, as hooks that always remove themselves.

The vector is added to the output of decoder layer L (= the input of layer L+1), the site where
phase 1 records activations and the SAEs read. Position policies:
- `all` (seed 001): every real prompt position, and every generated token;
- `last_prompt`: only the last prompt position; generated tokens are untouched.
Two hooks carry that out. `steering_applied` steers a pass over whole prompts (a prefill): left
padding is never steered, the prompt's attention mask says which positions are real. `RowSteering`
steers decode steps of a continuously batched run, where every row may carry its own steering (or
none) and rows join and leave between steps.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Iterator, Sequence

import torch

from common.config import POSITION_POLICIES
from common.directions import SteeringDirection
from common.hooks import decoder_layers, layer_forward_hooks, layer_output


@dataclass(frozen=True)
class Steering:
    direction: SteeringDirection  # added as a unit vector
    alpha: float  # in units of the residual stream (see coefficient_scale in phase 4.5)
    positions: str = "all"

    def __post_init__(self):
        if self.positions not in POSITION_POLICIES:
            raise ValueError(f"position policy {self.positions!r}: expected one of {POSITION_POLICIES}")

    @cached_property
    def label(self) -> str:
        """Names one steered condition in checkpoints and tables, e.g. 'mean_difference/layer_15#1a2b3c4d@30:all';
        the digest of the vector makes a direction that changed under the same name a new condition."""
        digest = hashlib.sha256(self.direction.unit().vector.numpy().tobytes()).hexdigest()[:8]
        return f"{self.direction.name}#{digest}@{self.alpha:g}:{self.positions}"

    @cached_property
    def added(self) -> torch.Tensor:
        """alpha * unit direction: what one steered position receives."""
        return self.alpha * self.direction.unit().vector

    @property
    def steers_generated_tokens(self) -> bool:
        return self.positions == "all"

    def describe(self) -> dict:
        return {"direction": self.direction.name, "layer": self.direction.layer, "alpha": self.alpha,
                "positions": self.positions, "site": "output of decoder layer L"}


def _with_hidden(output, hidden: torch.Tensor):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextlib.contextmanager
def steering_applied(model: torch.nn.Module, steering: Steering, prompt_mask: torch.Tensor | None = None
                     ) -> Iterator[None]:
    """Steer every forward pass inside the block as a pass over whole prompts; `prompt_mask`
    [batch, prompt_len] marks real prompt tokens (None: all are real). Positions past the prompt in a
    longer pass (teacher forcing a program) count as generated tokens."""

    def hook(_module, _inputs, output):
        hidden = layer_output(output)
        added = steering.added.to(hidden.device, hidden.dtype)
        return _with_hidden(output, hidden + _position_weights(hidden, prompt_mask, steering.positions) * added)

    with layer_forward_hooks(model, {steering.direction.layer: hook}):
        yield


def _position_weights(hidden: torch.Tensor, prompt_mask: torch.Tensor | None, positions: str) -> torch.Tensor:
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


class RowSteering:
    """Decode-step steering where row i of the batch gets its own vector at its own layer (zero for rows
    not steered there, or steered at `last_prompt` only). `update(steerings)` after the rows change;
    hooks are added for each new layer as it appears and all come off when the block ends."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.additions: dict[int, torch.Tensor] = {}  # layer -> [rows, d_model]
        self.active = False  # only decode steps are steered here; prefills go through steering_applied
        self._handles: dict[int, torch.utils.hooks.RemovableHandle] = {}

    def __enter__(self) -> RowSteering:
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()

    def update(self, steerings: Sequence[Steering | None]) -> None:
        """The vectors of the current rows, in batch order."""
        steered = [s for s in steerings if s is not None and s.steers_generated_tokens]
        self.additions = {}
        for layer in sorted({s.direction.layer for s in steered}):
            like = next(decoder_layers(self.model)[layer].parameters())  # the layer's own device and dtype
            rows = torch.zeros(len(steerings), steered[0].added.shape[-1], dtype=like.dtype, device=like.device)
            for i, s in enumerate(steerings):
                if s is not None and s.steers_generated_tokens and s.direction.layer == layer:
                    rows[i] = s.added.to(like.device, like.dtype)
            self.additions[layer] = rows
            if layer not in self._handles:
                self._handles[layer] = decoder_layers(self.model)[layer].register_forward_hook(self._hook(layer))

    def _hook(self, layer: int):
        def hook(_module, _inputs, output):
            if not self.active or layer not in self.additions:
                return output
            hidden = layer_output(output)
            return _with_hidden(output, hidden + self.additions[layer][:, None, :])
        return hook
