"""What a phase cost: its wall time and the peak memory of the process while it ran, for its manifest.

One pipeline process runs many phases, so the process-wide peak would charge every phase with the largest
before it. On Linux the resident set's high-water mark can be reset (writing 5 to /proc/self/clear_refs), so
each phase's figure is its own; elsewhere the figure is the process's peak so far and says so. Subprocesses
(the sandbox's workers) are not counted: they hold programs under test, not the model.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _reset_resident_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _resident_peak_mib() -> float:
    if _STATUS.is_file():
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


@dataclass
class CostMeter:
    """Started when a phase starts; `record()` when it finishes."""
    started_s: float = field(default_factory=time.perf_counter)
    per_phase: bool = field(init=False)

    def __post_init__(self):
        self.per_phase = _reset_resident_peak()
        if torch.cuda.is_initialized():  # an earlier phase of this process used CUDA; a fresh one starts at zero
            torch.cuda.reset_peak_memory_stats()

    def record(self) -> dict[str, Any]:
        cost: dict[str, Any] = {"wall_s": round(time.perf_counter() - self.started_s, 1),
                                "peak_resident_mib": round(_resident_peak_mib(), 1),
                                "peak_resident_scope": "phase" if self.per_phase else "process so far"}
        if torch.cuda.is_initialized():  # never starts CUDA for a phase that did not use it
            cost["peak_cuda_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
        return cost
