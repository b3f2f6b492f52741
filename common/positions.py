"""Where activations are read, and where each position's files live.

A generating phase writes, for its table `T` and activations folder `A` (rows aligned with `T`):
`A/<position>/layer_<L>.safetensors`. `last_prompt` is read in the generation's own prefill, before
any code exists; the code positions come from a teacher-forced pass over prompt + program
(common/program_pass.py) and hold NaN rows where a row has no program (its `program_error` says why).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

LAST_PROMPT = "last_prompt"
CODE_POSITIONS = ("code_last", "code_mean", "code_last_k")
POSITIONS = (LAST_PROMPT, *CODE_POSITIONS)
SHARED_BY_TASK = "every program of a task shares this position's activation, so it cannot separate them"


def is_code_position(position: str) -> bool:
    return position in CODE_POSITIONS


def activation_path(folder: Path, position: str, layer: int) -> Path:
    return folder / position / f"layer_{layer}.safetensors"


def usable_rows(table: pd.DataFrame, position: str) -> np.ndarray:
    """Rows with a label and an activation at `position`. A program whose tests the sandbox could not
    evaluate (error_type "unsupported") has no label; an empty output has no activation at a code position."""
    usable = np.ones(len(table), dtype=bool)
    if "error_type" in table:
        usable &= (table["error_type"] != "unsupported").to_numpy()
    if is_code_position(position) and "program_error" in table:
        usable &= table["program_error"].isna().to_numpy()
    return usable


def recorded_positions(folder: Path) -> list[str]:
    """The positions a generating phase wrote into its activations folder, in POSITIONS order."""
    return [position for position in POSITIONS if (folder / position).is_dir()]
