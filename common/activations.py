"""Activation files: one [n_rows, d_model] float32 tensor per layer, rows aligned with a parquet table.

The description (layer, hook site, position, model, row table) is stored as one sorted JSON string:
safetensors writes several metadata keys in hash order, which would make identical runs differ in bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from common.errors import PipelineError
from common.positions import activation_path
from common.utils import atomic_path

_TENSOR = "activations"
_INFO = "pva"


def save_activations(path: str | Path, activations: torch.Tensor, info: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        save_file({_TENSOR: activations.contiguous()}, str(tmp), metadata={_INFO: json.dumps(info, sort_keys=True)})


def load_activations(path: str | Path) -> tuple[torch.Tensor, dict[str, Any]]:
    with safe_open(str(path), framework="pt") as handle:
        info = json.loads((handle.metadata() or {}).get(_INFO, "{}"))
        return handle.get_tensor(_TENSOR), info


def load_position(folder: Path, position: str, layer: int) -> torch.Tensor:
    """[n_rows, d_model] of one position and layer; a clear error when the upstream phase did not record it."""
    path = activation_path(folder, position, layer)
    if not path.is_file():
        raise PipelineError(f"no activations at position '{position}', layer {layer} in {folder} (rerun the "
                            "generating phase with this position in activation_positions)")
    return load_activations(path)[0]
