"""Phase 0.1: split problems into sae / hyperparams / validation (50/10/40 by default).

`split_by=complexity` (default), stratified by cyclomatic complexity: problems are grouped by
complexity (values above 10 merged), shuffled within each group with the configured seed, and dealt
out in that order to whichever split is furthest below its share. Every run of consecutive problems,
and so every complexity level, is split in the configured proportions, and the overall sizes are as
close to them as integers allow.

`split_by=family`: whole families go to one split, so no split shares a family with another (a
probe can learn a family's look on random task folds: 0.915 there, 0.800 with families held out).
Families are the synthetic tasks' own; HumanEval and MBPP have none, so blocks of
`ID_BLOCK_TASKS` consecutive tasks stand in. Families are shuffled and each is dealt to the split
furthest below its share of problems. Selection happens on sae/hyperparams only; validation is only
ever reported on.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from common.phase_run import PhaseRun
from common.errors import PipelineError
from common.logging import get_logger
from common.utils import (atomic_path, save_json, write_manifest)

logger = get_logger("phase0_1")

SPLIT_NAMES = ("sae", "hyperparams", "validation")
MAX_STRATUM_COMPLEXITY = 10
FEW_FAMILIES = 5  # a split with fewer families than this is warned about under split_by=family
ID_BLOCK_TASKS = 10  # the stand-in family of datasets without families: this many consecutive tasks


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


def assign_families(families: np.ndarray, fractions: list[float], seed: int) -> np.ndarray:
    """Index into SPLIT_NAMES for each problem, every member of a family in the same split."""
    names, family_of = np.unique(families, return_inverse=True)
    if len(names) < len(fractions):
        raise PipelineError(f"split_by=family needs at least {len(fractions)} families, the problems have "
                            f"{len(names)}: use split_by=complexity")
    sizes = np.bincount(family_of)
    targets = np.asarray(fractions, dtype=float)
    counts = np.zeros(len(fractions))
    split_of_family = np.empty(len(names), dtype=int)
    for family in np.random.default_rng(seed).permutation(len(names)):
        dealt = counts.sum() + sizes[family]
        split = int(np.argmax(targets * dealt - counts))
        split_of_family[family] = split
        counts[split] += sizes[family]
    if (counts == 0).any():
        empty = ", ".join(SPLIT_NAMES[i] for i in np.flatnonzero(counts == 0))
        raise PipelineError(f"split_by=family leaves no family for: {empty} ({len(names)} families); "
                            "use more tasks, other split_fractions or split_by=complexity")
    return split_of_family[family_of]


def problem_families(problems: pd.DataFrame) -> np.ndarray:
    """A family per problem: its own (synthetic) or its block of ID_BLOCK_TASKS consecutive tasks."""
    if "family" in problems and problems["family"].astype(str).str.len().gt(0).all():
        return problems["family"].astype(str).to_numpy()
    return np.asarray([f"block_{i // ID_BLOCK_TASKS}" for i in range(len(problems))])


def run(phase: PhaseRun) -> Path:
    config = phase.config
    spec = phase.spec
    inputs = phase.inputs
    problems = pd.read_parquet(phase.upstream("0") / "problems.parquet")
    families = problem_families(problems)
    if config.split_by == "family":
        assignment = assign_families(families, config.split_fractions, config.seed)
    else:
        assignment = assign_splits(problems["cyclomatic_complexity"].to_numpy(), config.split_fractions, config.seed)
    out_dir = phase.out_dir
    outputs, metadata = [], {"seed": config.seed, "fractions": dict(zip(SPLIT_NAMES, config.split_fractions)),
                             "split_by": config.split_by, "splits": {}}
    for index, name in enumerate(SPLIT_NAMES):
        split = problems[assignment == index].reset_index(drop=True)
        path = out_dir / f"{name}.parquet"
        with atomic_path(path) as tmp:
            split.to_parquet(tmp, index=False)
        outputs.append(path)
        histogram = Counter(int(c) for c in split["cyclomatic_complexity"])
        metadata["splits"][name] = {"n_problems": len(split),
                                    "complexity_histogram": {str(k): histogram[k] for k in sorted(histogram)},
                                    "mean_complexity": float(split["cyclomatic_complexity"].mean()) if len(split) else None,
                                    "n_families": len(set(families[assignment == index]))}
        logger.info("%-11s %4d problems, mean complexity %.2f, %d families", name, len(split),
                    metadata["splits"][name]["mean_complexity"] or 0.0, metadata["splits"][name]["n_families"])
        if config.split_by == "family" and metadata["splits"][name]["n_families"] < FEW_FAMILIES:
            logger.warning("the %s split holds %d families only: what is chosen or reported on it rests on them",
                           name, metadata["splits"][name]["n_families"])
    metadata_path = out_dir / "split_metadata.json"
    save_json(metadata, metadata_path)
    return write_manifest(config, spec, inputs, outputs + [metadata_path])
