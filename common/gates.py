"""Gates for selective steering: steer a program only when a detector flags it as likely to fail.

Phase 3.8 chooses each gate on the hyperparams split (the detector by AUROC, the threshold by Youden's J on its
fail-oriented score) and writes which validation greedy programs it flags; phase 4.8 reads the flags and derives the
selective arm from the full arm's rows: a flagged task gets its steered program, an unflagged one keeps its baseline.
Greedy, padding-correct batched generation makes a task's steered program independent of the other rows (4.8's
alpha-0 arm checks the steered path reproduces the baseline), so nothing is generated twice. A gate read over the
code needs the unsteered program first (generate, score, regenerate the flagged); one read at the last prompt token
decides before anything is generated. A program without a score (nothing was generated) is flagged: it cannot pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.classification import auroc, youden_threshold
from common.errors import PipelineError
from common.utils import atomic_path, load_json, save_json

FLAGS_FILE = "gate_flags.parquet"
GATES_FILE = "gates.json"


@dataclass(frozen=True)
class Gate:
    name: str  # "detector" (the best internal score) or "baseline" (the best baseline)
    score: str
    position: str  # "-" for a baseline
    predicts: str  # what a high raw score says: "pass" or "fail"
    needs_program: bool
    hyperparams_auroc: float  # of the fail-oriented score, where the gate was chosen (optimistic: a maximum)
    threshold: float  # flag when the fail-oriented score is at least this
    hyperparams_flag_rate: float
    validation_greedy_auroc: dict[str, Any] | None = None  # reported only, never used to choose


def fail_oriented(scores: np.ndarray, predicts: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=float)
    return scores if predicts == "fail" else -scores


def flags(scores: np.ndarray, gate: Gate) -> np.ndarray:
    oriented = fail_oriented(scores, gate.predicts)
    return np.isnan(oriented) | (np.nan_to_num(oriented, nan=-np.inf) >= gate.threshold)


def choose_gate(name: str, score: str, position: str, predicts: str, needs_program: bool, choose_scores: np.ndarray,
                choose_failed: np.ndarray) -> Gate:
    """A gate fitted on the hyperparams split only: its fail-oriented AUROC and Youden threshold there."""
    oriented = fail_oriented(choose_scores, predicts)
    known = ~np.isnan(oriented)
    gate = Gate(name, score, position, predicts, needs_program, auroc(oriented[known], choose_failed[known]),
                youden_threshold(oriented[known], choose_failed[known]), 0.0)
    return replace(gate, hyperparams_flag_rate=float(flags(choose_scores, gate).mean()))


def save_gates(folder: Path, gates: list[Gate], task_ids: np.ndarray, flagged: dict[str, np.ndarray]) -> list[Path]:
    """The gates' description, and one flag column per gate over the validation greedy programs."""
    gates_path, flags_path = folder / GATES_FILE, folder / FLAGS_FILE
    save_json({"chosen_on": "hyperparams split (phase 3.6): detector by AUROC, threshold by Youden's J",
               "gates": [asdict(g) for g in gates]}, gates_path)
    with atomic_path(flags_path) as tmp:
        pd.DataFrame({"task_id": task_ids, **{f"flag:{name}": values for name, values in flagged.items()}}
                     ).to_parquet(tmp, index=False)
    return [gates_path, flags_path]


def load_gates(folder: Path) -> tuple[list[Gate], pd.DataFrame]:
    """The gates and a task_id-indexed frame of their flags (one greedy program per task)."""
    gates = [Gate(**g) for g in load_json(folder / GATES_FILE)["gates"]]
    table = pd.read_parquet(folder / FLAGS_FILE).set_index("task_id")
    if not table.index.is_unique:
        raise PipelineError(f"{folder / FLAGS_FILE} flags some task twice: selective steering needs one greedy "
                            "program per task")
    return gates, table.rename(columns=lambda c: c.removeprefix("flag:"))
