"""Residual directions as llama.cpp control vectors: portable beyond this project.

llama.cpp reads a GGUF file of architecture `controlvector` holding one float32 tensor `direction.N` of the
model's width per steered layer, and adds it (times the scale given with `--control-vector-scaled`) to the output
of decoder layer N, the site where this project's residual additions act (common/hooks.py). llama.cpp has no
tensor for layer 0, so a direction there cannot be exported. Several additions at one layer are summed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from gguf import GGUFReader, GGUFWriter

from common.errors import PipelineError
from common.interventions import ResidualAddition
from common.utils import atomic_path

ARCHITECTURE = "controlvector"
logging.getLogger("gguf").setLevel(logging.WARNING)  # its writer logs every file it writes at INFO


def save_control_vector(path: Path, additions: Sequence[ResidualAddition], model_hint: str) -> Path:
    """One GGUF control vector holding alpha times each addition's unit direction at its layer. Only additions
    applied at every position carry over: llama.cpp adds a control vector to every token."""
    by_layer: dict[int, np.ndarray] = {}
    for addition in additions:
        if addition.positions != "all":
            raise PipelineError(f"{addition.label}: a control vector applies at every token; this addition is "
                                f"applied at '{addition.positions}' only")
        if addition.direction.layer < 1:
            raise PipelineError(f"{addition.label}: llama.cpp control vectors start at layer 1")
        vector = addition.added.detach().to("cpu").numpy().astype(np.float32)
        by_layer[addition.direction.layer] = by_layer.get(addition.direction.layer, 0) + vector
    if not by_layer:
        raise PipelineError("no addition to export")
    with atomic_path(path) as tmp:
        writer = GGUFWriter(str(tmp), ARCHITECTURE)
        writer.add_string(f"{ARCHITECTURE}.model_hint", model_hint)
        writer.add_uint32(f"{ARCHITECTURE}.layer_count", len(by_layer))
        for layer, vector in sorted(by_layer.items()):
            writer.add_tensor(f"direction.{layer}", vector)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def read_control_vector(path: Path) -> tuple[str, dict[int, np.ndarray]]:
    """(model hint, layer -> vector) of a control-vector GGUF file."""
    reader = GGUFReader(str(path))
    field = reader.fields[f"{ARCHITECTURE}.model_hint"]
    hint = bytes(field.parts[field.data[0]]).decode()
    return hint, {int(t.name.split(".")[1]): np.array(t.data, dtype=np.float32) for t in reader.tensors
                  if t.name.startswith("direction.")}
