"""KV-cache steering (seed 002): one edit of the cache after the prompt, nothing during decoding.

After a row's prefill, `alpha * key_weight * key_delta[l]` is added to the keys and `alpha * value_weight *
value_delta[l]` to the values of each steered layer l at the row's last prompt position, on copies (a later
request of the same prompt reuses the prefill unedited). Every generated token attends to the edited position; the
first generated token comes from the prefill's own logits, so the edit shows from the second token on (the
public implementation re-feeds the prompt's last token after the edit, so its first token sees it: a known
difference). Cached keys carry the rotary position of where they were read, so a key delta averaged over prompts
of different lengths mixes rotations; values carry none. `alpha` scales the deltas as stored: phase 2.8 stores raw
mean deltas (seed 002's coefficient is alpha on those), and the methods steer with `unit()` edits, whose alpha
counts like a residual addition's. The deltas are per layer [key-value heads, head dim]; the engine's slot cache
sets the row's edited keys and values in its own slot, so padding and the other rows are untouched. The prefill
itself is unsteered (`steers_prefill` is False), so every edit of a prompt starts from its one unsteered prefill.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, ClassVar, Sequence

import torch

from common.interventions.base import register


@register
@dataclass(frozen=True)
class KVCacheEdit:
    kind: ClassVar[str] = "kv_cache"
    name: str
    layers: tuple[int, ...]
    key_deltas: torch.Tensor  # [len(layers), kv_heads, head_dim]
    value_deltas: torch.Tensor  # [len(layers), kv_heads, head_dim]
    alpha: float = 1.0
    key_weight: float = 0.0
    value_weight: float = 1.0
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if (self.key_deltas.ndim != 3 or self.key_deltas.shape[0] != len(self.layers)
                or self.value_deltas.shape != self.key_deltas.shape):
            raise ValueError(f"{self.name}: key and value deltas must both be [{len(self.layers)}, kv_heads, head_dim]")
        if not self.layers or len(set(self.layers)) != len(self.layers) or min(self.layers) < 0:
            raise ValueError(f"{self.name}: layers {self.layers} must be one or more, distinct and >= 0")

    @cached_property
    def label(self) -> str:
        """Name, digest of both deltas, layers and strengths: a changed delta under the same name is a new label."""
        digest = hashlib.sha256(self.key_deltas.detach().cpu().float().numpy().tobytes()
                                + self.value_deltas.detach().cpu().float().numpy().tobytes()).hexdigest()[:8]
        layers = ",".join(map(str, self.layers))
        return f"{self.name}#{digest}@L{layers}x{self.alpha:g}:k{self.key_weight:g}v{self.value_weight:g}"

    steers_prefill: ClassVar[bool] = False  # the edit comes after the prefill, which every edit of a prompt shares

    @property
    def first_layer(self) -> int:
        return max(self.layers)  # never used to replay (the prefill is shared), but true: nothing below it changes

    def columns(self) -> dict[str, Any]:
        return {"kind": self.kind, "intervention": self.label, "direction": self.name,
                "source": self.provenance.get("source", "kv_cache"), "layer": min(self.layers), "alpha": self.alpha,
                "positions": "last_prompt_cache"}

    def at(self, strength: float) -> KVCacheEdit:
        return replace(self, alpha=strength)

    def unit(self) -> KVCacheEdit:
        """The same edit with what it adds (key_weight * keys and value_weight * values, every layer together) scaled
        to norm 1, as a unit residual direction is: alpha then counts in comparable units, and one calibration grid
        serves both kinds (raw mean deltas of minimal pairs are 20-110 times smaller per layer than of the model's own).
        The factor is kept in `provenance["unit_scale"]`: alpha times it is the coefficient on the raw deltas."""
        added = torch.cat([(self.key_weight * self.key_deltas).flatten(), (self.value_weight * self.value_deltas)
                           .flatten()]).double().norm()
        if not float(added) > 0:
            raise ValueError(f"{self.name}: the edit adds nothing, so it has no unit")
        scale = 1.0 / float(added)
        return replace(self, key_deltas=self.key_deltas * scale, value_deltas=self.value_deltas * scale,
                       provenance={**self.provenance, "unit_scale": scale * self.provenance.get("unit_scale", 1.0)})

    def negated(self) -> KVCacheEdit:
        name = self.name[:-len("/negated")] if self.name.endswith("/negated") else f"{self.name}/negated"
        provenance = {**self.provenance, "negated": not self.provenance.get("negated", False)}
        return replace(self, name=name, key_deltas=-self.key_deltas, value_deltas=-self.value_deltas,
                       provenance=provenance)

    def prefill_applied(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def after_prefill(self, prefill: Any) -> tuple[KVCacheEdit, list[tuple[torch.Tensor, torch.Tensor]]]:
        keys_values = list(prefill.keys_values)
        for i, layer in enumerate(self.layers):
            keys, values = keys_values[layer]
            if tuple(self.key_deltas.shape[1:]) != (keys.shape[1], keys.shape[3]):
                raise ValueError(f"{self.name}: deltas of {tuple(self.key_deltas.shape[1:])} for a cache of "
                                 f"{keys.shape[1]} kv heads of {keys.shape[3]}")
            keys, values = keys.clone(), values.clone()
            keys[..., -1, :] += (self.alpha * self.key_weight * self.key_deltas[i]).to(keys.device, keys.dtype)
            values[..., -1, :] += (self.alpha * self.value_weight * self.value_deltas[i]).to(values.device,
                                                                                             values.dtype)
            keys_values[layer] = (keys, values)
        return self, keys_values

    @classmethod
    def decoder(cls, model: torch.nn.Module) -> NothingWhileDecoding:
        return NothingWhileDecoding()

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return ({"key_deltas": self.key_deltas, "value_deltas": self.value_deltas},
                {"name": self.name, "layers": list(self.layers), "alpha": self.alpha, "key_weight": self.key_weight,
                 "value_weight": self.value_weight, "provenance": self.provenance})

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> KVCacheEdit:
        return cls(metadata["name"], tuple(int(layer) for layer in metadata["layers"]), tensors["key_deltas"],
                   tensors["value_deltas"], float(metadata["alpha"]), float(metadata["key_weight"]),
                   float(metadata["value_weight"]), metadata["provenance"])


class NothingWhileDecoding:
    """The decode-step applier of a kind that acts only after the prefill."""
    active = False

    def update(self, rows: Sequence[Any]) -> None:
        pass

    def __enter__(self) -> NothingWhileDecoding:
        return self

    def __exit__(self, *exc) -> None:
        pass
