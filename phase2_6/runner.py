"""Phase 2.6: mean-difference directions, the baseline the SAE latents have to beat.

Per recorded position and layer, from phase 1's sae-split activations (the selection split):
- `mean_difference`: unit(mean(passing rows) - mean(failing rows));
- `paired_pca` (code positions only): the first principal component of per-task differences (mean
  passing row minus mean failing row of the same task), for tasks that have both classes (needs
  samples_per_task >= 1); its sign is chosen so that the differences project positively on it. At
  the last prompt token every program of a task shares one activation, so the differences are
  numerical noise and no paired_pca is made there.
Both point from "will fail" towards "will pass". A class with fewer than 20 rows gives a direction
that is reported as unreliable; an empty class gives none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from common.activations import load_position
from common.aggregators import first_component
from common.phase_run import PhaseRun
from common.directions import SteeringDirection, save_directions
from common.logging import get_logger
from common.positions import SHARED_BY_TASK, is_code_position, recorded_positions, usable_rows
from common.utils import save_json, write_manifest

logger = get_logger("phase2_6")

THIN_CLASS_ROWS = 20
MIN_PAIRS = 10  # tasks with both classes: fewer, and the first component of their differences is noise


def mean_difference(activations: torch.Tensor, passed: np.ndarray) -> tuple[torch.Tensor, float] | None:
    """(unit direction, norm of the raw difference), or None when a class is empty."""
    passed_t = torch.tensor(passed, dtype=torch.bool)
    if passed_t.all() or not passed_t.any():
        return None
    difference = activations[passed_t].mean(0) - activations[~passed_t].mean(0)
    norm = float(difference.norm())
    return difference / norm, norm


def paired_differences(activations: torch.Tensor, passed: np.ndarray, task_ids: np.ndarray) -> torch.Tensor:
    """One row per task with both classes: its mean passing activation minus its mean failing one."""
    frame = pd.DataFrame({"task": task_ids, "passed": passed, "row": np.arange(len(task_ids))})
    rows = []
    for _, group in frame.groupby("task", sort=False):
        good, bad = group.loc[group["passed"], "row"].to_numpy(), group.loc[~group["passed"], "row"].to_numpy()
        if len(good) and len(bad):
            rows.append(activations[torch.tensor(good)].mean(0) - activations[torch.tensor(bad)].mean(0))
    return torch.stack(rows) if rows else torch.empty(0, activations.shape[1])


def paired_pca(differences: torch.Tensor) -> tuple[torch.Tensor, float] | None:
    """(unit first principal component, share of variance it explains), or None with too few pairs."""
    if len(differences) < MIN_PAIRS:
        return None
    return first_component(differences)


def run(phase: PhaseRun) -> Path:
    config = phase.config
    spec = phase.spec
    inputs = phase.inputs
    phase1 = phase.upstream("1")
    table = pd.read_parquet(phase1 / "dataset_sae.parquet")
    warnings: list[str] = []
    directions: list[SteeringDirection] = []
    per_position: dict[str, Any] = {}
    for position in recorded_positions(phase1 / "activations"):
        usable = usable_rows(table, position)
        passed = table["test_passed"].to_numpy(dtype=bool)[usable]
        task_ids = table["task_id"].to_numpy()[usable]
        n_passed, n_failed = int(passed.sum()), int((~passed).sum())
        for name, n in (("passing", n_passed), ("failing", n_failed)):
            if n < THIN_CLASS_ROWS:
                warnings.append(f"{position}: only {n} {name} rows (< {THIN_CLASS_ROWS}): these directions are "
                                "unreliable")
                logger.warning(warnings[-1])
        if not is_code_position(position):
            logger.info("%s: no paired_pca (%s: its paired differences are numerical noise)", position, SHARED_BY_TASK)
        per_layer: dict[str, Any] = {}
        for layer in config.layers:
            activations = load_position(phase1 / "activations", position, layer)[torch.tensor(usable)]
            found, stats = _layer_directions(activations, passed, task_ids, position, layer, is_code_position(position))
            directions += found
            per_layer[str(layer)] = stats
        per_position[position] = {"n_passing": n_passed, "n_failing": n_failed, "n_rows_left_out": int((~usable).sum()),
                                  "layers": per_layer}
    if not directions:
        logger.warning("one class is empty: no direction at all")
    out_dir = phase.out_dir
    directions_path = out_dir / "directions.safetensors"
    save_directions(directions_path, directions)
    summary_path = out_dir / "phase_2_6_summary.json"
    save_json({"directions": [d.name for d in directions], "positions": per_position, "warnings": warnings},
              summary_path)
    return write_manifest(config, spec, inputs, [directions_path, summary_path])


def _layer_directions(activations: torch.Tensor, passed: np.ndarray, task_ids: np.ndarray, position: str, layer: int,
                      paired: bool) -> tuple[list[SteeringDirection], dict[str, Any]]:
    """A layer's mean-difference direction and, at a code position, its paired-PCA direction, with their figures."""
    n_passed, n_failed = int(passed.sum()), int((~passed).sum())
    common = {"phase": "2.6", "split": "sae", "n_passing": n_passed, "n_failing": n_failed,
              "mean_residual_norm": float(activations.norm(dim=1).mean())}
    stats: dict[str, Any] = {"mean_residual_norm": common["mean_residual_norm"]}
    directions = []
    found = mean_difference(activations, passed)
    if found is not None:
        vector, raw_norm = found
        directions.append(SteeringDirection(f"{position}/mean_difference/layer_{layer}", layer, vector,
                                            "mean_difference", {**common, "raw_difference_norm": raw_norm}, position))
        stats["mean_difference_raw_norm"] = raw_norm
    if not paired:
        return directions, stats
    differences = paired_differences(activations, passed, task_ids)
    stats["n_pairs"] = len(differences)
    pca = paired_pca(differences)
    if pca is None:
        logger.warning("%s layer %d: %d tasks with both a passing and a failing program (< %d): no paired_pca",
                       position, layer, len(differences), MIN_PAIRS)
        return directions, stats
    vector, explained = pca
    directions.append(SteeringDirection(f"{position}/paired_pca/layer_{layer}", layer, vector, "paired_pca",
                                        {**common, "n_pairs": len(differences), "explained_variance": explained},
                                        position))
    stats["paired_pca_explained_variance"] = explained
    if found is not None:
        stats["cosine_pca_vs_mean_difference"] = float(vector @ found[0])
    return directions, stats
