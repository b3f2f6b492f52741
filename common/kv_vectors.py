"""Seed 002's layout for KV-cache steering vectors (phase 2.8 writes it, the method registry reads it), one set of files
per vector `name`:

    datasets/<name>_pairs.jsonl               the contrastive pairs it was extracted from, one JSON object a line
    steering_vectors/<name>.safetensors       the vector as a `kv_cache` intervention (common/interventions), unit
                                              strength: `load_interventions` rebuilds it
    steering_vectors/<name>.json              what it is: layers, pairs, aggregation, per-layer norms, checks
    steering_vectors/<name>_template.json     the prompt pair it stands for (seed 002's prompt-based approximation)

The seed saves `.pt` pickles; safetensors holds the same tensors without running code on load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from common.interventions import KVCacheEdit, load_interventions, save_interventions
from common.utils import atomic_path, save_json


def vector_path(folder: Path, name: str) -> Path:
    return folder / "steering_vectors" / f"{name}.safetensors"


def save_vector(folder: Path, edit: KVCacheEdit, pairs: Sequence[dict[str, Any]], metadata: dict[str, Any],
                template: dict[str, Any]) -> list[Path]:
    name = edit.name
    pairs_path = folder / "datasets" / f"{name}_pairs.jsonl"
    with atomic_path(pairs_path) as tmp:
        tmp.write_text("".join(json.dumps(pair, sort_keys=True) + "\n" for pair in pairs))
    paths = [pairs_path, vector_path(folder, name), folder / "steering_vectors" / f"{name}.json",
             folder / "steering_vectors" / f"{name}_template.json"]
    save_interventions(paths[1], [edit])
    save_json({"name": name, "kind": edit.kind, "layers": list(edit.layers), "key_weight": edit.key_weight,
               "value_weight": edit.value_weight, **metadata}, paths[2])
    save_json({"name": name, **template}, paths[3])
    return paths


def load_vector(folder: Path, name: str) -> KVCacheEdit | None:
    """The saved vector, or None when the phase wrote none of that name."""
    path = vector_path(folder, name)
    return load_interventions(path)[0] if path.is_file() else None
