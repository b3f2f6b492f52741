"""The Intervention protocol, its registry keyed by kind, and one file format for any saved intervention.

An intervention changes the model while a request is generated and always undoes itself. The
generation engine (common/generation.py) and the prefill (common/prefill.py) know only this protocol:
- `prefill_applied(model)`: a context manager for one prompt's prefill (a batch of one, no padding), skipped when
  `steers_prefill` is False; what it yields the prefill keeps as `applied` (a kind that computes something from the
  prompt, as self-steering computes its vector, hands it to `after_prefill` that way);
- `after_prefill(prefill)`: the optional step once the prompt is in the KV cache (common/prefill.py's
  `Prefill`: keys and values per layer, last-token logits and activations). It returns the intervention
  that follows this row through decoding (per-row state lives there, so it follows the row when rows
  leave and join the batch) and the keys and values the row starts from: edited copies, never the
  prefill's own tensors, which a later request of the same prompt reuses;
- `decoder(model)`: a class-level `DecodeApplier` for decode steps, where row i carries its own
  intervention (or one of another kind, or none) and rows change between steps.
A kind registers its class with `@register`; `save_interventions` records each one's kind, so
`load_interventions` dispatches on it, the way sae-lens registers its SAE classes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, ContextManager, Protocol, Sequence, runtime_checkable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from common.utils import atomic_path

_INDEX = "pva_interventions"


class DecodeApplier(Protocol):
    """Applies one kind's interventions to decode steps; `update` after the rows change; `active` is True only
    inside a decode step. Used as a context manager: its hooks come off when the block ends."""
    active: bool

    def update(self, rows: Sequence[Intervention | None]) -> None: ...

    def __enter__(self) -> DecodeApplier: ...

    def __exit__(self, *exc) -> None: ...


@runtime_checkable
class Intervention(Protocol):
    kind: ClassVar[str]

    @property
    def label(self) -> str:
        """Names one condition in checkpoints and tables; holds a digest of the content, so a changed
        intervention under the same name is a new condition."""

    @property
    def first_layer(self) -> int | None:
        """Decoder layers up to this one compute what they compute unsteered (the prefill replays them, this one
        included, and hooks its output); None when the whole model changes."""

    @property
    def steers_prefill(self) -> bool:
        """False promises the prompt's prefill is the unsteered one (the intervention acts only after it), so every
        such intervention of a prompt shares it; True is always safe."""

    def columns(self) -> dict[str, Any]:
        """What it adds to each output row: kind, label, and the kind's own description."""

    def at(self, strength: float) -> Intervention:
        """The same intervention at another strength (alpha, or an adapter's coefficient): what calibration sets."""

    def negated(self) -> Intervention:
        """The opposite push at the same strength (phase 4.8's minus-alpha arm)."""

    def prefill_applied(self, model: torch.nn.Module) -> ContextManager[Any]: ...

    def after_prefill(self, prefill: Any) -> tuple[Intervention, list[tuple[torch.Tensor, torch.Tensor]]]: ...

    @classmethod
    def decoder(cls, model: torch.nn.Module) -> DecodeApplier: ...

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and JSON metadata that `from_state` rebuilds it from."""

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Intervention: ...


REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: makes a kind loadable by name."""
    if cls.kind in REGISTRY and REGISTRY[cls.kind] is not cls:
        raise ValueError(f"intervention kind {cls.kind!r} is registered twice")
    REGISTRY[cls.kind] = cls
    return cls


def kind_class(kind: str) -> type:
    try:
        return REGISTRY[kind]
    except KeyError:
        raise ValueError(f"unknown intervention kind {kind!r} (known: {', '.join(sorted(REGISTRY))})") from None


def save_interventions(path: str | Path, interventions: Sequence[Intervention]) -> None:
    """Any mix of kinds in one safetensors file; each entry's tensors are stored as '<index>/<name>'."""
    tensors: dict[str, torch.Tensor] = {}
    index = []
    for i, intervention in enumerate(interventions):
        own, metadata = intervention.state()
        index.append({"kind": intervention.kind, "tensors": sorted(own), "metadata": metadata})
        tensors.update({f"{i}/{name}": t.detach().to(torch.float32).clone().contiguous()  # own storage each
                        for name, t in own.items()})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={_INDEX: json.dumps(index, sort_keys=True)})


def load_interventions(path: str | Path) -> list[Intervention]:
    with safe_open(str(path), framework="pt") as handle:
        index = json.loads((handle.metadata() or {}).get(_INDEX, "[]"))
        return [kind_class(entry["kind"]).from_state({name: handle.get_tensor(f"{i}/{name}")
                                                      for name in entry["tensors"]}, entry["metadata"])
                for i, entry in enumerate(index)]


class DecodeAppliers:
    """The engine's decode-step view of a batch whose rows may carry interventions of several kinds: one
    applier per kind, made when the kind first appears, all removed when the block ends."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self._appliers: dict[str, DecodeApplier] = {}

    def __enter__(self) -> DecodeAppliers:
        return self

    def __exit__(self, *exc) -> None:
        for applier in self._appliers.values():
            applier.__exit__(*exc)
        self._appliers.clear()

    def update(self, rows: Sequence[Intervention | None]) -> None:
        for row in rows:
            if row is not None and row.kind not in self._appliers:
                self._appliers[row.kind] = type(row).decoder(self.model).__enter__()
        for kind, applier in self._appliers.items():
            applier.update([row if row is not None and row.kind == kind else None for row in rows])

    def set_active(self, active: bool) -> None:
        for applier in self._appliers.values():
            applier.active = active
