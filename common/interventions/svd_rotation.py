"""The trained SVD-rotation adapter (seed 004, common/svd_adapter.py) as an intervention whose strength is its
coefficient c: c = 0 is the base model, -c the opposite push.

The adapter changes linear layers inside the decoder, so it steers the prompt's prefill (a prompt alone) and every
generated token. Decode steps give each row its own coefficient, and rows of other adapters (a trained one beside a
random one of the same norm) share a step: the correction of each layer is computed per adapter for its rows only.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, ClassVar, Sequence

import torch

from common.interventions.base import register
from common.svd_adapter import AdaptedWeight, adapted, linear_at

_FACTORS = ("u", "s", "v", "skew_v", "skew_u", "log_scale")


@register
@dataclass(frozen=True)
class SVDRotationAdapter:
    kind: ClassVar[str] = "svd_rotation_adapter"
    name: str
    weights: tuple[AdaptedWeight, ...]
    coefficient: float = 1.0
    provenance: dict[str, Any] = field(default_factory=dict, compare=False)

    steers_prefill: ClassVar[bool] = True

    @cached_property
    def label(self) -> str:
        """Name, digest of every factor and generator, and the coefficient."""
        digest = hashlib.sha256()
        for weight in self.weights:
            for factor in _FACTORS:
                tensor = getattr(weight, factor)
                if tensor is not None:
                    digest.update(tensor.detach().cpu().float().numpy().tobytes())
        return f"{self.name}#{digest.hexdigest()[:8]}@c{self.coefficient:g}"

    @property
    def lowest_layer(self) -> int:
        return min(weight.layer for weight in self.weights)

    @property
    def first_layer(self) -> int | None:
        """The prefill replays layers up to this one, whose outputs are hooked; the adapter changes the lowest
        adapted layer from inside, so only the layers below it may be replayed (none below layer 0)."""
        return self.lowest_layer - 1 if self.lowest_layer > 0 else None

    def columns(self) -> dict[str, Any]:
        return {"kind": self.kind, "intervention": self.label, "direction": self.name,
                "source": self.provenance.get("source", self.kind), "layer": self.lowest_layer,
                "alpha": self.coefficient, "positions": "all"}

    def at(self, strength: float) -> SVDRotationAdapter:
        return replace(self, coefficient=strength)

    def negated(self) -> SVDRotationAdapter:
        return replace(self, coefficient=-self.coefficient)

    def prefill_applied(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
        return adapted(model, self.weights, torch.tensor([self.coefficient]))

    def after_prefill(self, prefill: Any) -> tuple[SVDRotationAdapter, list[tuple[torch.Tensor, torch.Tensor]]]:
        return self, prefill.keys_values

    @classmethod
    def decoder(cls, model: torch.nn.Module) -> RowCoefficients:
        return RowCoefficients(model)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"{weight.name}/{factor}": getattr(weight, factor).detach() for weight in self.weights
                   for factor in _FACTORS if getattr(weight, factor) is not None}
        modules = [{"layer": w.layer, "path": w.path, "rotate_v": w.skew_v is not None,
                    "rotate_u": w.skew_u is not None} for w in self.weights]
        return tensors, {"name": self.name, "coefficient": self.coefficient, "modules": modules,
                         "provenance": self.provenance}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> SVDRotationAdapter:
        weights = []
        for module in metadata["modules"]:
            prefix = f"layer_{module['layer']}.{module['path']}"
            weights.append(AdaptedWeight(int(module["layer"]), module["path"], *(
                tensors.get(f"{prefix}/{factor}") for factor in _FACTORS)))
        return cls(metadata["name"], tuple(weights), float(metadata["coefficient"]), metadata.get("provenance", {}))


class RowCoefficients:
    """Decode steps where row i carries its own adapter and coefficient (or none): per adapted layer, one hook adds
    each adapter's correction to its own rows."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.active = False
        self.groups: dict[tuple[int, str], list[tuple[AdaptedWeight, torch.Tensor, torch.Tensor]]] = {}  # site ->
        #                                             (weight, its adapter's rows, their mixing matrices)
        self._handles: dict[tuple[int, str], torch.utils.hooks.RemovableHandle] = {}

    def __enter__(self) -> RowCoefficients:
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()

    def update(self, rows: Sequence[SVDRotationAdapter | None]) -> None:
        """Per adapted layer: (its weight in one adapter, that adapter's rows, their mixing matrices), computed once
        here rather than in every decode step's hook."""
        by_adapter: dict[str, tuple[SVDRotationAdapter, list[int]]] = {}
        for i, row in enumerate(rows):
            if row is not None:
                key = row.label.rsplit("@", 1)[0]  # the adapter, whatever its coefficient
                by_adapter.setdefault(key, (row, []))[1].append(i)
        self.groups = {}
        for adapter, members in by_adapter.values():
            coefficients = torch.tensor([rows[i].coefficient for i in members])
            for weight in adapter.weights:
                self.groups.setdefault((weight.layer, weight.path), []).append(
                    (weight, torch.tensor(members), weight.mixing(coefficients)))
        for site in self.groups:
            if site not in self._handles:
                self._handles[site] = linear_at(self.model, *site).register_forward_hook(self._hook(site))

    def _hook(self, site: tuple[int, str]):
        def hook(_module, inputs, output):
            if not self.active or site not in self.groups:
                return output
            x, corrected = inputs[0], output.clone()
            for weight, members, mixing in self.groups[site]:
                index = members.to(x.device)
                corrected[index] += weight.correction(x[index], mixing)
            return corrected
        return hook
