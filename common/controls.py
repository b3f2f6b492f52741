"""Control directions: what a target direction's steering effect must beat, four kinds at one layer.

- `random_isotropic`: uniform on the sphere (any push of this size);
- `random_top_pc_span`: isotropic within the span of the top principal components of the recorded
  activations, not weighted by their variance (a push along directions the model actually uses);
- `random_active_latent`: decoder rows of SAE latents that fire on this code but were not chosen
  (a real feature, just not the one that separates passing from failing);
- `shuffled_label_mean_difference`: the mean difference of the same activations with pass/fail labels
  permuted across tasks (the extraction recipe without the signal).
Every control is a unit vector; its strength is set later (by matched disruption, common/disruption.py).

A method whose intervention is not a residual addition brings its own controls (`Method.controls`,
common/methods.py); for a KV-cache edit, `random_kv_norms`: Gaussian key and value deltas with the edit's
per-layer norms (a cache edit of the same size and layer profile, pointing nowhere in particular). For self-steering
(a dictionary routed by the row's own prompt), `random_routing_controls`: `shuffled_routing`, the same dictionary
with each row's routing weights shuffled (a permutation per row, drawn from the control's seed and the row's prompt),
and `random_dictionary`, the same router over random unit means (the router's shape, none of the dictionary's
content).
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import numpy as np
import torch

from common.directions import SteeringDirection
from common.interventions import Intervention, KVCacheEdit, SelfSteering

SHARED_CONTROLS = "shared"  # the control set of every residual method: the types below, at the steering site
KV_CONTROL_TYPE = "random_kv_norms"  # the own controls of a KV-cache method (random_kv_controls)
ROUTING_CONTROL_TYPES = ("shuffled_routing", "random_dictionary")  # of self-steering (random_routing_controls)
CONTROL_TYPES = ("random_isotropic", "random_top_pc_span", "random_active_latent", "shuffled_label_mean_difference")


@dataclass(frozen=True)
class Control:
    """One control at unit strength, named by its type and its index within the type."""
    type: str
    index: int
    unit: Intervention


@dataclass(frozen=True)
class ControlSources:
    """What the controls of one layer are drawn from; a missing source leaves its type out (and says so)."""
    activations: torch.Tensor | None = None  # [rows, d_model] recorded at the layer and position
    passed: np.ndarray | None = None  # [rows] test outcome of each row
    task_ids: np.ndarray | None = None  # [rows] labels are permuted between tasks, a task's rows together
    active_latents: torch.Tensor | None = None  # [n, d_model] decoder rows of active, unchosen latents
    top_pcs: int = 10


def control_directions(layer: int, position: str, d_model: int, sources: ControlSources, per_type: int,
                       seed: int) -> tuple[list[SteeringDirection], list[str]]:
    """`per_type` unit controls of every type the sources allow, and a note for each type left out."""
    rng = np.random.default_rng([seed, layer])
    made: list[SteeringDirection] = []
    missing: list[str] = []

    def add(kind: str, vectors: np.ndarray, provenance: list[dict]) -> None:
        for i, (vector, extra) in enumerate(zip(vectors, provenance)):
            tensor = torch.as_tensor(vector, dtype=torch.float32)
            if float(tensor.norm()) > 0:
                made.append(SteeringDirection(f"control/{kind}/layer_{layer}/{i}", layer, tensor, kind,
                                              {"control": kind, "seed": seed, **extra}, position).unit())

    add("random_isotropic", rng.standard_normal((per_type, d_model)), [{}] * per_type)
    if sources.activations is not None and len(sources.activations) > sources.top_pcs:
        activations = sources.activations.double()
        centred = activations - activations.mean(dim=0)
        components = torch.linalg.svd(centred, full_matrices=False).Vh[:sources.top_pcs].numpy()
        weights = rng.standard_normal((per_type, components.shape[0]))
        add("random_top_pc_span", weights @ components, [{"top_pcs": sources.top_pcs}] * per_type)
    else:
        missing.append("random_top_pc_span: no recorded activations at this layer")
    if sources.active_latents is not None and len(sources.active_latents):
        picked = rng.choice(len(sources.active_latents), size=min(per_type, len(sources.active_latents)), replace=False)
        add("random_active_latent", sources.active_latents[picked].numpy(), [{"pool_index": int(i)} for i in picked])
        if len(picked) < per_type:
            missing.append(f"random_active_latent: only {len(picked)} active latents (wanted {per_type})")
    else:
        missing.append("random_active_latent: no SAE latents active on this code at this layer")
    if sources.activations is not None and sources.passed is not None and 0 < sources.passed.sum() < len(sources.passed):
        add("shuffled_label_mean_difference",
            np.stack([_shuffled_mean_difference(sources, rng) for _ in range(per_type)]), [{}] * per_type)
    else:
        missing.append("shuffled_label_mean_difference: needs activations with both outcomes")
    return made, missing


def _shuffled_mean_difference(sources: ControlSources, rng: np.random.Generator) -> np.ndarray:
    """Passing minus failing mean after each task's outcome vector is given to another task with as many rows
    (a task's rows keep a task's pattern of outcomes, and the class sizes stay exactly as they were); rows are
    permuted one by one when there are no task ids."""
    passed = np.asarray(sources.passed, dtype=bool)
    if sources.task_ids is None:
        labels = rng.permutation(passed)
    else:
        labels = np.empty_like(passed)
        task_ids = np.asarray(sources.task_ids)
        rows_of = {task: np.flatnonzero(task_ids == task) for task in np.unique(task_ids)}
        by_size: dict[int, list] = {}
        for task, rows in rows_of.items():
            by_size.setdefault(len(rows), []).append(task)
        for tasks in by_size.values():
            for receiver, giver in zip(tasks, rng.permutation(len(tasks))):
                labels[rows_of[receiver]] = passed[rows_of[tasks[giver]]]
    activations = sources.activations.double().numpy()
    return activations[labels].mean(axis=0) - activations[~labels].mean(axis=0)


def random_kv_controls(edit: KVCacheEdit, n: int, seed: int) -> list[Control]:
    """`n` Gaussian cache edits, each layer's key and value deltas scaled to the norms of `edit`'s at that layer."""
    generator = torch.Generator().manual_seed(seed)
    controls = []
    for i in range(n):
        deltas = []
        for target in (edit.key_deltas, edit.value_deltas):
            noise = torch.randn(target.shape, generator=generator, dtype=torch.float64)
            scale = target.double().flatten(1).norm(dim=1) / noise.flatten(1).norm(dim=1)
            deltas.append((noise * scale[:, None, None]).float())
        controls.append(Control(KV_CONTROL_TYPE, i, KVCacheEdit(
            f"control/{KV_CONTROL_TYPE}/{i}", edit.layers, deltas[0], deltas[1], 1.0, edit.key_weight,
            edit.value_weight, {"source": KV_CONTROL_TYPE, "control": KV_CONTROL_TYPE, "seed": seed,
                                "norms_of": edit.name})))
    return controls


def random_routing_controls(steering: SelfSteering, n: int, seed: int) -> list[Control]:
    """Half of `n` (rounded up) shuffled-routing controls, each with a seed of its own, and random-dictionary controls
    for the rest."""
    shuffled, random_means = ROUTING_CONTROL_TYPES
    dictionary = steering.dictionary
    controls = [Control(shuffled, i, SelfSteering(f"control/{shuffled}/{i}", dictionary.randomly_routed(seed + i),
                                                  1.0, steering.position))
                for i in range(math.ceil(n / 2))]
    generator = torch.Generator().manual_seed(seed)
    for i in range(n - len(controls)):
        means = torch.randn(dictionary.means.shape, generator=generator, dtype=torch.float64)
        controls.append(Control(random_means, i, SelfSteering(
            f"control/{random_means}/{i}", dictionary.with_means(means), 1.0, steering.position)))
    return controls
