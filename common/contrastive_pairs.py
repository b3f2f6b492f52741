"""Contrastive pairs, the data contract between phase 2.7 (which makes and verifies them) and the phases that read
them (2.8's KV-cache vectors): one JSON line per pair with its provenance, and the held-out share of tasks that
every reader leaves out of fitting the same way."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from common.classification import group_bootstrap_counts
from common.program_pass import ProgramText, answer_text
from common.prompt_utils import PromptBuilder
from common.utils import atomic_path

HELD_OUT_SHARE = 0.2  # of the tasks, for the held-out pair accuracy
ACCURACY_RESAMPLES = 1000


@dataclass(frozen=True)
class ContrastivePair:
    task_id: str
    kind: str  # "mutant" | "own" | "equivalent" (a control: both sides pass)
    positive_code: str  # passes the task's tests
    negative_code: str  # fails them (for `equivalent`: a mutant that passes them too)
    positive_output: str  # what the model would have answered: the teacher-forced text after the prompt
    negative_output: str
    provenance: dict[str, Any] = field(default_factory=dict)


def save_pairs(path: Path, pairs: Sequence[ContrastivePair]) -> None:
    """JSON lines, one pair each, with its provenance."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(asdict(p), sort_keys=True) + "\n" for p in pairs))


def load_pairs(path: Path) -> list[ContrastivePair]:
    return [ContrastivePair(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def held_out_tasks(tasks: np.ndarray, seed: int) -> np.ndarray:
    """Rows whose task is in the held-out share: whole tasks, so no task sits on both sides."""
    unique = np.array(sorted(set(tasks)))
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(unique, min(len(unique) - 1, max(1, round(HELD_OUT_SHARE * len(unique)))), replace=False))
    return np.array([t in chosen for t in tasks])


def pair_accuracy(ordered: np.ndarray, tasks: np.ndarray, seed: int) -> dict[str, Any]:
    """The share of pairs ordered correctly (`ordered`: 1, 0, or 0.5 for a tie), with a 95% interval resampling
    tasks (a task's pairs share its reference or its programs, so they are not independent)."""
    if not len(ordered):
        return {"accuracy": None, "low": None, "high": None, "n_pairs": 0, "n_tasks": 0}
    counts = group_bootstrap_counts(tasks, ACCURACY_RESAMPLES, seed)
    draws = counts @ ordered.astype(float) / counts.sum(1)
    low, high = np.percentile(draws, [2.5, 97.5])
    return {"accuracy": float(ordered.mean()), "low": float(low), "high": float(high), "n_pairs": len(ordered),
            "n_tasks": len(set(tasks))}


def pair_texts(pairs: Sequence[ContrastivePair], problems: pd.DataFrame, builder: PromptBuilder
               ) -> tuple[list[ProgramText], np.ndarray]:
    """Each distinct side of the pairs once, as the text a teacher-forced pass reads (a reference recurs in every
    pair of its task), and [n_pairs, 2]: the index of each pair's passing and failing side among them."""
    by_task = {str(p["task_id"]): p for p in problems.to_dict("records")}
    sides = [(pair.task_id, output) for pair in pairs for output in (pair.positive_output, pair.negative_output)]
    distinct = list(dict.fromkeys(sides))
    index = {side: i for i, side in enumerate(distinct)}
    texts = [answer_text(builder.build(by_task[task_id]), output, by_task[task_id]) for task_id, output in distinct]
    return texts, np.array([index[side] for side in sides], dtype=int).reshape(-1, 2)
