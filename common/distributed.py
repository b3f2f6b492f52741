"""Sharding a phase's generations over the processes of a standard PyTorch distributed launch.

    torchrun --nproc_per_node 2 run.py phase 1            # CPU processes (gloo)
    accelerate launch --num_processes 4 run.py phase 1    # GPUs, one process each

Without a launcher (no WORLD_SIZE in the environment) everything runs in this one process. With
one, each process takes every n-th batch of the work still to do and saves it to the shared
checkpoint; the main process then writes the outputs, exactly those of a single process because
batches, and each batch's seed, are the same whoever runs them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class Shard:
    index: int  # this process's rank
    count: int  # processes in the launch

    @property
    def is_main(self) -> bool:
        return self.index == 0


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@lru_cache(maxsize=1)
def _state():
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def current_shard() -> Shard:
    if not launched():
        return Shard(0, 1)
    state = _state()
    return Shard(state.process_index, state.num_processes)


def shard_device(device: str) -> str:
    """Under a GPU launch each process gets its own GPU; otherwise the configured device."""
    if launched() and device in ("auto", "cuda") and _state().device.type == "cuda":
        return str(_state().device)
    return device


def wait_for_everyone() -> None:
    if launched():
        _state().wait_for_everyone()
