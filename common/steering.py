"""Adding alpha * direction to the residual stream during generation, as a hook that always removes itself.

The vector is added to the output of decoder layer L (= the input of layer L+1), the site where
phase 1 records activations and the SAEs read. Position policies:
- `all` (seed 001): every real prompt position in the prefill, and every generated token;
- `last_prompt`: only the last prompt position, in the prefill; generated tokens are untouched.
Left padding is never steered: the prompt's attention mask says which positions are real.
The first forward pass through the layer inside the block is the prefill; later passes of one
token are decode steps (HF generate with a KV cache). A pass over the whole sequence (no cache)
is treated like a prefill whose positions past the prompt are all real.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Iterator

import torch

from common.config import POSITION_POLICIES
from common.directions import SteeringDirection
from common.hooks import layer_forward_hooks, layer_output


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

    def describe(self) -> dict:
        return {"direction": self.direction.name, "layer": self.direction.layer, "alpha": self.alpha,
                "positions": self.positions, "site": "output of decoder layer L"}


@contextlib.contextmanager
def steering_applied(model: torch.nn.Module, steering: Steering, prompt_mask: torch.Tensor | None = None
                     ) -> Iterator[None]:
    """Steer every forward pass inside the block; `prompt_mask` [batch, prompt_len] marks real prompt tokens."""
    vector = steering.direction.unit().vector
    state = {"prefilled": False}

    def hook(_module, _inputs, output):
        hidden = layer_output(output)
        step = hidden.shape[1]
        if state["prefilled"] and step == 1:
            if steering.positions == "last_prompt":
                return output
            steered = hidden + steering.alpha * vector.to(hidden.device, hidden.dtype)
        else:
            state["prefilled"] = True
            steered = hidden + _position_weights(hidden, prompt_mask, steering.positions) * \
                (steering.alpha * vector.to(hidden.device, hidden.dtype))
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    with layer_forward_hooks(model, {steering.direction.layer: hook}):
        yield


def _position_weights(hidden: torch.Tensor, prompt_mask: torch.Tensor | None, positions: str) -> torch.Tensor:
    """[batch, seq, 1]: 1 where the vector is added, 0 elsewhere, for a pass that starts at position 0."""
    batch, seq = hidden.shape[:2]
    prompt = prompt_mask.to(hidden.device, torch.bool) if prompt_mask is not None else \
        torch.ones(batch, seq, dtype=torch.bool, device=hidden.device)
    prompt_len = prompt.shape[1]
    if positions == "last_prompt":
        weights = torch.zeros(batch, seq, dtype=hidden.dtype, device=hidden.device)
        weights[:, prompt_len - 1] = 1.0
    else:
        generated = torch.ones(batch, seq - prompt_len, dtype=torch.bool, device=hidden.device)
        weights = torch.cat([prompt, generated], dim=1).to(hidden.dtype)
    return weights.unsqueeze(-1)

