"""One split's judged programs as the evaluation phases read them: the table, its verdicts and tasks, and the
activations of its rows, each position and layer read from disk once.

A generating phase may write a split in parts (phase 3.5: one table and activations folder per temperature); the
parts are concatenated in order. `restricted` keeps some rows and shares what was already read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common.activations import load_position
from common.errors import PipelineError


@dataclass
class Split:
    name: str
    table: pd.DataFrame
    folders: list[Path]  # the parts' activations folders, in table order
    rows: np.ndarray | None = None  # which rows of the parts' activations the table holds; None: all of them
    _loaded: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)

    def activations(self, position: str, layer: int) -> torch.Tensor:
        """[rows of the table, d_model]."""
        if (position, layer) not in self._loaded:
            self._loaded[position, layer] = torch.cat([load_position(folder, position, layer)
                                                       for folder in self.folders])
        every = self._loaded[position, layer]
        chosen = every if self.rows is None else every[torch.from_numpy(self.rows)]
        if len(chosen) != len(self.table):
            raise PipelineError(f"the {self.name} split's activations at {position}, layer {layer} hold {len(chosen)} "
                                f"rows for a table of {len(self.table)}: rerun the phase that wrote them")
        return chosen

    def restricted(self, keep: np.ndarray) -> Split:
        """The rows where `keep` is True, sharing the activations already read."""
        rows = np.flatnonzero(keep) if self.rows is None else self.rows[keep]
        return Split(self.name, self.table[keep].reset_index(drop=True), self.folders, rows, self._loaded)

    @property
    def passed(self) -> np.ndarray:
        return self.table["test_passed"].to_numpy(dtype=bool)

    @property
    def tasks(self) -> np.ndarray:
        return self.table["task_id"].astype(str).to_numpy()


def read_split(name: str, folder: Path, parts: list[tuple[str, str]]) -> Split:
    """The split a phase wrote in `folder` as (table file, activations folder) parts."""
    tables = [pd.read_parquet(folder / table) for table, _ in parts]
    return Split(name, pd.concat(tables, ignore_index=True), [folder / activations for _, activations in parts])
