"""Trained weight adapters as interventions whose strength is their coefficient c: c = 0 is the base model, -c the
opposite push. Two kinds: seed 004's SVD-rotation adapter (common/svd_adapter.py) and the LoRA baseline trained
with the same loss through PEFT.

An adapter changes linear layers inside the decoder, so it steers the prompt's prefill (a prompt alone) and every
generated token. Decode steps give each row its own coefficient, and rows of other adapters (a trained one beside a
random one of the same norm) share a step: the correction of each layer is computed per adapter for its rows only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, ClassVar, Sequence

import torch

from common.interventions.base import register
from common.svd_adapter import AdaptedWeight, LowRankWeight, adapted, linear_at

Weight = AdaptedWeight | LowRankWeight


@dataclass(frozen=True)
class _CoefficientAdapter:
    """What both kinds share; a kind names its weight class and the tensors (`factors`) that make one weight."""
    name: str
    weights: tuple[Weight, ...]
    coefficient: float = 1.0
    provenance: dict[str, Any] = field(default_factory=dict, compare=False)

    kind: ClassVar[str]
    factors: ClassVar[tuple[str, ...]]
    steers_prefill: ClassVar[bool] = True

    @cached_property
    def label(self) -> str:
        """Name, digest of every factor and of where each weight sits (and a LoRA weight's scale), and the
        coefficient."""
        digest = hashlib.sha256()
        for weight in self.weights:
            digest.update(json.dumps(self._module_metadata(weight), sort_keys=True).encode())
            for factor in self.factors:
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

    def at(self, strength: float):
        return replace(self, coefficient=strength)

    def negated(self):
        return replace(self, coefficient=-self.coefficient)

    def prefill_applied(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
        return adapted(model, self.weights, torch.tensor([self.coefficient]))

    def after_prefill(self, prefill: Any) -> tuple[Any, list[tuple[torch.Tensor, torch.Tensor]]]:
        return self, prefill.keys_values

    @classmethod
    def decoder(cls, model: torch.nn.Module) -> RowCoefficients:
        return RowCoefficients(model)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"{weight.name}/{factor}": getattr(weight, factor).detach() for weight in self.weights
                   for factor in self.factors if getattr(weight, factor) is not None}
        return tensors, {"name": self.name, "coefficient": self.coefficient,
                         "modules": [self._module_metadata(w) for w in self.weights], "provenance": self.provenance}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]):
        weights = tuple(cls._weight(module, {factor: tensors.get(f"layer_{module['layer']}.{module['path']}/{factor}")
                                             for factor in cls.factors}) for module in metadata["modules"])
        return cls(metadata["name"], weights, float(metadata["coefficient"]), metadata.get("provenance", {}))


@register
@dataclass(frozen=True)
class SVDRotationAdapter(_CoefficientAdapter):
    kind: ClassVar[str] = "svd_rotation_adapter"
    factors: ClassVar[tuple[str, ...]] = ("u", "s", "v", "skew_v", "skew_u", "log_scale")

    @staticmethod
    def _module_metadata(weight: AdaptedWeight) -> dict[str, Any]:
        return {"layer": weight.layer, "path": weight.path, "rotate_v": weight.skew_v is not None,
                "rotate_u": weight.skew_u is not None}

    @staticmethod
    def _weight(module: dict[str, Any], factors: dict[str, torch.Tensor | None]) -> AdaptedWeight:
        return AdaptedWeight(int(module["layer"]), module["path"], **factors)


@register
@dataclass(frozen=True)
class LowRankAdapter(_CoefficientAdapter):
    kind: ClassVar[str] = "low_rank_adapter"
    factors: ClassVar[tuple[str, ...]] = ("down", "up")

    @staticmethod
    def _module_metadata(weight: LowRankWeight) -> dict[str, Any]:
        return {"layer": weight.layer, "path": weight.path, "scale": weight.scale}

    @staticmethod
    def _weight(module: dict[str, Any], factors: dict[str, torch.Tensor | None]) -> LowRankWeight:
        return LowRankWeight(int(module["layer"]), module["path"], factors["down"], factors["up"],
                             float(module["scale"]))


class RowCoefficients:
    """Decode steps where row i carries its own adapter and coefficient (or none): per adapted layer, one hook adds
    each adapter's correction to its own rows."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.active = False
        self.groups: dict[tuple[int, str], list[tuple[Weight, torch.Tensor, torch.Tensor]]] = {}  # site ->
        #                                             (weight, its adapter's rows, their mixing matrices)
        self._handles: dict[tuple[int, str], torch.utils.hooks.RemovableHandle] = {}
        self._moved: dict[tuple[str, str], Weight] = {}  # (adapter, weight name) -> on the model's device

    def __enter__(self) -> RowCoefficients:
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()

    def update(self, rows: Sequence[_CoefficientAdapter | None]) -> None:
        """Per adapted layer: (its weight in one adapter, that adapter's rows, their mixing matrices), computed once
        here rather than in every decode step's hook."""
        by_adapter: dict[str, tuple[_CoefficientAdapter, list[int]]] = {}
        for i, row in enumerate(rows):
            if row is not None:
                key = row.label.rsplit("@", 1)[0]  # the adapter, whatever its coefficient
                by_adapter.setdefault(key, (row, []))[1].append(i)
        self.groups = {}
        device = next(self.model.parameters()).device
        for key, (adapter, members) in by_adapter.items():
            coefficients = torch.tensor([rows[i].coefficient for i in members])
            for weight in adapter.weights:
                self.groups.setdefault((weight.layer, weight.path), []).append(
                    (self._on(key, weight, device), torch.tensor(members, device=device),
                     weight.mixing(coefficients).to(device)))
        for site in self.groups:
            if site not in self._handles:
                self._handles[site] = linear_at(self.model, *site).register_forward_hook(self._hook(site))

    def _on(self, adapter: str, weight: Weight, device: torch.device) -> Weight:
        """The weight with its factors on the model's device, moved once per adapter rather than in every step."""
        key = (adapter, weight.name)
        if key not in self._moved:
            self._moved[key] = weight.to(device)
        return self._moved[key]

    def _hook(self, site: tuple[int, str]):
        def hook(_module, inputs, output):
            if not self.active or site not in self.groups:
                return output
            x, corrected = inputs[0], output.clone()
            for weight, members, mixing in self.groups[site]:
                corrected[members] += weight.correction(x[members], mixing)
            return corrected
        return hook
