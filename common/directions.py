"""One record for every steering direction, whatever made it, and its file format.

Sources: SAE decoder rows, mean differences of correct vs incorrect activations, the first principal
component of paired differences, and controls (random unit vectors, zero-discrimination latents).
A file holds any number of directions: one tensor per direction plus a sorted-JSON list of their
descriptions (see common/activations.py for why the JSON is a single metadata key).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from common.positions import LAST_PROMPT
from common.utils import atomic_path

_INDEX = "pva_directions"


@dataclass(frozen=True)
class SteeringDirection:
    name: str  # unique within a file, e.g. "mean_difference/layer_15"
    layer: int  # adds to the output of this decoder layer
    vector: torch.Tensor  # [d_model] float32
    source: str  # sae_latent | mean_difference | paired_pca | random | zero_discrimination
    provenance: dict[str, Any] = field(default_factory=dict)
    position: str = LAST_PROMPT  # where the activations it was found in were read (common/positions.py)

    def unit(self) -> SteeringDirection:
        norm = float(self.vector.norm())
        if norm == 0.0:
            raise ValueError(f"direction {self.name} is the zero vector")
        return replace(self, vector=self.vector / norm)


def save_directions(path: str | Path, directions: list[SteeringDirection]) -> None:
    names = [d.name for d in directions]
    if len(set(names)) != len(names):
        raise ValueError(f"direction names repeat: {names}")
    index = [{"name": d.name, "layer": d.layer, "source": d.source, "provenance": d.provenance, "position": d.position}
             for d in directions]
    with atomic_path(path) as tmp:
        save_file({d.name: d.vector.detach().to(torch.float32).contiguous() for d in directions}, str(tmp),
                  metadata={_INDEX: json.dumps(index, sort_keys=True)})


def load_directions(path: str | Path) -> list[SteeringDirection]:
    with safe_open(str(path), framework="pt") as handle:
        index = json.loads((handle.metadata() or {}).get(_INDEX, "[]"))
        return [SteeringDirection(entry["name"], int(entry["layer"]), handle.get_tensor(entry["name"]),
                                  entry["source"], entry["provenance"], entry.get("position", LAST_PROMPT))
                for entry in index]


def random_directions(layer: int, d_model: int, count: int, seed: int) -> list[SteeringDirection]:
    """Unit vectors drawn uniformly from the sphere: the control for 'any push of this size at this layer'."""
    generator = torch.Generator().manual_seed(seed * 1009 + layer)
    return [SteeringDirection(f"random/control/layer_{layer}/seed_{seed}_{i}", layer,
                              torch.randn(d_model, generator=generator), "random",
                              {"seed": seed, "index": i}).unit() for i in range(count)]
