"""Phase 0.1: split problems into sae / hyperparams / validation (50/10/40 by default).

Stratified by cyclomatic complexity: problems are grouped by complexity (values above 10 merged),
shuffled within each group with the configured seed, and dealt out in that order to whichever split
is furthest below its share. Every run of consecutive problems, and so every complexity level, is
split in the configured proportions, and the overall sizes are as close to them as integers allow.
Selection happens on sae/hyperparams only; validation is only ever reported on.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from common.config import Config
from common.logging import get_logger
from common.phases import get_phase
from common.utils import (atomic_path, discover_latest_phase_output, phase_dir, save_json, upstream_inputs,
                          write_manifest)

logger = get_logger("phase0_1")

SPLIT_NAMES = ("sae", "hyperparams", "validation")
MAX_STRATUM_COMPLEXITY = 10


def assign_splits(complexity: np.ndarray, fractions: list[float], seed: int) -> np.ndarray:
    """Index into SPLIT_NAMES for each problem (see the module docstring for the rule)."""
    rng = np.random.default_rng(seed)
    strata = np.minimum(complexity, MAX_STRATUM_COMPLEXITY)
    order = np.concatenate([rng.permutation(np.flatnonzero(strata == s)) for s in np.unique(strata)])
    targets = np.asarray(fractions, dtype=float)
    counts = np.zeros(len(fractions))
    assignment = np.empty(len(complexity), dtype=int)
    for dealt, index in enumerate(order, start=1):
        split = int(np.argmax(targets * dealt - counts))  # the split furthest below its share
        assignment[index] = split
        counts[split] += 1
    return assignment


def run(config: Config) -> Path:
    spec = get_phase("0.1")
    inputs = upstream_inputs(config, spec)
    problems = pd.read_parquet(discover_latest_phase_output("0", config.data_dir).parent / "problems.parquet")
    assignment = assign_splits(problems["cyclomatic_complexity"].to_numpy(), config.split_fractions, config.seed)
    out_dir = phase_dir(config, spec.id)
    outputs, metadata = [], {"seed": config.seed, "fractions": dict(zip(SPLIT_NAMES, config.split_fractions)),
                             "stratified_by": "cyclomatic_complexity", "splits": {}}
    for index, name in enumerate(SPLIT_NAMES):
        split = problems[assignment == index].reset_index(drop=True)
        path = out_dir / f"{name}.parquet"
        with atomic_path(path) as tmp:
            split.to_parquet(tmp, index=False)
        outputs.append(path)
        histogram = Counter(int(c) for c in split["cyclomatic_complexity"])
        metadata["splits"][name] = {"n_problems": len(split),
                                    "complexity_histogram": {str(k): histogram[k] for k in sorted(histogram)},
                                    "mean_complexity": float(split["cyclomatic_complexity"].mean()) if len(split) else None}
        logger.info("%-11s %4d problems, mean complexity %.2f", name, len(split),
                    metadata["splits"][name]["mean_complexity"] or 0.0)
    metadata_path = out_dir / "split_metadata.json"
    save_json(metadata, metadata_path)
    return write_manifest(config, spec, inputs, outputs + [metadata_path])
