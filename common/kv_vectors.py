"""KV-cache steering vectors (seed 002): the layers they edit, how paired keys and values become one, and the
seed's layout, which phases 2.8 and 2.8s write and the method registry reads, one set of files per vector `name`:

    datasets/<name>_pairs.jsonl               the contrastive pairs it was extracted from, one JSON object a line
    steering_vectors/<name>.safetensors       the vector as a `kv_cache` intervention (common/interventions): the raw
                                              deltas at alpha 1; `load_interventions` rebuilds it
    steering_vectors/<name>.json              what it is: layers, pairs, aggregation, per-layer norms, checks
    steering_vectors/<name>_template.json     the prompt pair it stands for (seed 002's prompt-based approximation)

The seed saves `.pt` pickles; safetensors holds the same tensors without running code on load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.cluster import KMeans

from common.errors import PipelineError
from common.interventions import KVCacheEdit, load_interventions, save_interventions
from common.utils import atomic_path, save_json

SEED_BAND = (8, 15, 28)  # seed 002 steers layers 8-15 of a 28-layer model


def default_layers(n_layers: int) -> list[int]:
    """Seed 002's band of layers, scaled to a model of `n_layers`."""
    first, last, depth = SEED_BAND
    return list(range(round(first * n_layers / depth), round(last * n_layers / depth) + 1))


def kv_layers(config, model) -> list[int]:
    """The configured `kv_layers`, checked against the model's depth, or seed 002's band scaled to it."""
    n_layers = model.config.num_hidden_layers
    if config.kv_layers is None:
        return default_layers(n_layers)
    if max(config.kv_layers) >= n_layers:
        raise PipelineError(f"kv_layers {config.kv_layers}: the model has layers 0-{n_layers - 1}")
    return list(config.kv_layers)


def extract_deltas(positive: dict[str, torch.Tensor], negative: dict[str, torch.Tensor], rows: np.ndarray,
                   aggregation: str, n_clusters: int, seed: int
                   ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any] | None]:
    """Key and value deltas [layers, kv_heads, head_dim] over the pairs in `rows` (`positive` and `negative`: per
    side, "keys" and "values" of [n_pairs, layers, kv_heads, head_dim]): the mean of the paired differences, or
    (`aggregation` "kmeans") the mean over the largest of `n_clusters` k-means clusters of the value differences;
    and the k-means record."""
    mask = torch.from_numpy(rows)
    key_differences = (positive["keys"][mask] - negative["keys"][mask]).double()
    value_differences = (positive["values"][mask] - negative["values"][mask]).double()
    if aggregation == "mean":
        return key_differences.mean(0).float(), value_differences.mean(0).float(), None
    n_clusters = min(n_clusters, len(value_differences))
    labels = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(
        value_differences.flatten(1).numpy())
    sizes = np.bincount(labels, minlength=n_clusters)
    largest = torch.from_numpy(labels == int(sizes.argmax()))
    return (key_differences[largest].mean(0).float(), value_differences[largest].mean(0).float(),
            {"sizes": sizes.tolist(), "used": int(sizes.argmax())})


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
