"""Resumable work: results are saved batch by batch, each file written atomically.

A checkpoint folder belongs to one identity (the phase's config values and upstream hashes); a
folder left by a different identity is discarded, never mixed in. Work is keyed by item, so a run
killed at any point resumes with exactly the items that have no saved batch.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from common.logging import get_logger
from common.utils import atomic_path, load_json, save_json

logger = get_logger("checkpoint")


def phase_checkpoint(folder: Path, config_values: dict[str, Any], inputs: dict[str, dict[str, str]],
                     discard: bool) -> "BatchCheckpoint":
    """The checkpoint of a phase: its identity is the phase's config values and its upstream manifest hashes."""
    return BatchCheckpoint(folder, {"config": config_values, "inputs": {k: v["sha256"] for k, v in inputs.items()}},
                           discard=discard)


class BatchCheckpoint:
    def __init__(self, folder: Path, identity: dict[str, Any], discard: bool = False):
        self.folder = Path(folder)
        identity_path = self.folder / "identity.json"
        if self.folder.exists() and (discard or not identity_path.is_file() or load_json(identity_path) != identity):
            if not discard:
                logger.warning("discarding checkpoint %s: it was made with another config or upstream", self.folder)
            shutil.rmtree(self.folder)
        if not identity_path.is_file():
            save_json(identity, identity_path)

    def _batch_files(self) -> list[Path]:
        return sorted(self.folder.glob("batch_*.pt"))

    def save(self, batch_id: str, keys: list[str], records: list[dict[str, Any]],
             tensors: dict[str, torch.Tensor] | None = None) -> None:
        with atomic_path(self.folder / f"batch_{batch_id}.pt") as tmp:
            torch.save({"keys": keys, "records": records, "tensors": tensors or {}}, tmp)

    def load(self) -> dict[str, tuple[dict[str, Any], dict[str, torch.Tensor]]]:
        """item key -> (record, {tensor name: this item's row})"""
        done = {}
        for path in self._batch_files():
            batch = torch.load(path, weights_only=True)
            for row, (key, record) in enumerate(zip(batch["keys"], batch["records"])):
                done[key] = (record, {name: tensor[row] for name, tensor in batch["tensors"].items()})
        return done

    def done_keys(self) -> set[str]:
        return {key for path in self._batch_files() for key in torch.load(path, weights_only=True)["keys"]}

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
