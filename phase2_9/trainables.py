"""What phase 2.9 trains, each with the same three verbs: its parameters, the model with it applied at a
coefficient, and the intervention it exports (common/interventions/adapters.py).

- `SVDTrainable`: seed 004's adapter, built on the PiSSA split of each chosen linear layer (common/svd_adapter.py).
- `LoRATrainable`: the baseline, a LoRA adapter on the same layers through PEFT; the coefficient sets PEFT's scale,
  so c * alpha / r multiplies B A and c = 0 is the base model, as for the SVD adapter.
- `same_norm_random`: the control, an SVD adapter whose generators are random with the trained ones' norms.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any, Iterator, Sequence

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer

from common.hooks import decoder_layers
from common.interventions import LowRankAdapter, SVDRotationAdapter
from common.svd_adapter import AdaptedWeight, LowRankWeight, adapted, split_weight

Site = tuple[int, str]  # (decoder layer, linear module within it)


class SVDTrainable:
    def __init__(self, model: torch.nn.Module, sites: Sequence[Site], rank: int, rotate_u: bool, seed: int):
        generator = torch.Generator().manual_seed(seed)
        device = next(model.parameters()).device
        self.model = model
        self.weights = []
        for layer, path in sites:
            split = split_weight(model, layer, path, rank, rotate_u=rotate_u, generator=generator)
            tensors = {name: getattr(split, name) for name in ("u", "s", "v", "skew_v", "skew_u", "log_scale")}
            moved = {name: None if t is None else t.to(device) for name, t in tensors.items()}
            for name in ("skew_v", "skew_u", "log_scale"):
                if moved[name] is not None:
                    moved[name].requires_grad_(True)
            self.weights.append(AdaptedWeight(layer, path, **moved))

    def parameters(self) -> list[torch.Tensor]:
        return [t for w in self.weights for t in (w.skew_v, w.skew_u, w.log_scale) if t is not None]

    def applied(self, coefficient: float) -> contextlib.AbstractContextManager[None]:
        return adapted(self.model, self.weights, torch.tensor([coefficient]))

    def export(self, name: str, provenance: dict[str, Any]) -> SVDRotationAdapter:
        frozen = tuple(replace(w, **{f: None if getattr(w, f) is None else getattr(w, f).detach().cpu().clone()
                                     for f in SVDRotationAdapter.factors}) for w in self.weights)
        return SVDRotationAdapter(name, frozen, 1.0, provenance)

    def close(self) -> None:
        """Nothing to undo: the adapter lives in hooks that come off after each use."""


class LoRATrainable:
    """PEFT injects LoRA layers into the model in place; `close` takes them out again (unmerged), leaving the base
    model as it was."""

    def __init__(self, model: torch.nn.Module, sites: Sequence[Site], rank: int, seed: int):
        layers = sorted({layer for layer, _ in sites})
        paths = sorted({path for _, path in sites})
        if {(layer, path) for layer in layers for path in paths} != set(sites):
            raise ValueError("the LoRA baseline adapts every chosen module in every chosen layer")
        self.sites, self.rank, self.alpha = list(sites), rank, float(rank)
        with torch.random.fork_rng():  # PEFT draws lora_A from the global generator
            torch.manual_seed(seed)
            self.peft_model = get_peft_model(model, LoraConfig(
                r=rank, lora_alpha=self.alpha, lora_dropout=0.0, target_modules=paths, layers_to_transform=layers,
                bias="none"))
        self.model = model
        for _, module in self._layers():
            module.set_scale("default", 0.0)  # the base model until `applied` says otherwise

    def _layers(self) -> Iterator[tuple[Site, LoraLayer]]:
        for layer, path in self.sites:
            yield (layer, path), decoder_layers(self.model)[layer].get_submodule(path)

    def parameters(self) -> list[torch.Tensor]:
        return [p for _, module in self._layers() for p in (module.lora_A["default"].weight,
                                                            module.lora_B["default"].weight)]

    @contextlib.contextmanager
    def applied(self, coefficient: float) -> Iterator[None]:
        for _, module in self._layers():
            module.set_scale("default", coefficient)
        try:
            yield
        finally:
            for _, module in self._layers():
                module.set_scale("default", 0.0)

    def export(self, name: str, provenance: dict[str, Any]) -> LowRankAdapter:
        weights = tuple(LowRankWeight(layer, path, module.lora_A["default"].weight.detach().cpu().T.contiguous(),
                                      module.lora_B["default"].weight.detach().cpu().clone(), self.alpha / self.rank)
                        for (layer, path), module in self._layers())
        return LowRankAdapter(name, weights, 1.0, provenance)

    def close(self) -> None:
        self.peft_model.unload()


def same_norm_random(adapter: SVDRotationAdapter, name: str, seed: int) -> SVDRotationAdapter:
    """Per adapted layer, random generators (skew-symmetric parts) and log-scales with the trained ones' Frobenius
    norms: as far from the base model in parameter norm, in no learned direction."""
    generator = torch.Generator().manual_seed(seed)

    def like(tensor: torch.Tensor | None, skew_part: bool) -> torch.Tensor | None:
        if tensor is None:
            return None
        target = tensor - tensor.T if skew_part else tensor
        drawn = torch.randn(tensor.shape, generator=generator)
        drawn_part = drawn - drawn.T if skew_part else drawn
        factor = float(target.norm()) / max(float(drawn_part.norm()), 1e-12)
        return drawn * factor

    weights = tuple(replace(w, skew_v=like(w.skew_v, True), skew_u=like(w.skew_u, True),
                            log_scale=like(w.log_scale, False)) for w in adapter.weights)
    return SVDRotationAdapter(name, weights, 1.0, {**adapter.provenance, "source": "random_same_norm",
                                                   "matched_to": adapter.label})
