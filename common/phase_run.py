"""What a phase runner receives: its config, its upstream folders (checked and hashed) and its output folder.

Built once by `run.py` for the phase it runs, so no runner repeats the discovery of its inputs; `finish`
writes the manifest that records them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import Config
from common.phases import PhaseSpec
from common.utils import phase_dir, upstream_inputs, write_manifest


@dataclass(frozen=True)
class PhaseRun:
    config: Config
    spec: PhaseSpec
    inputs: dict[str, dict[str, str]]  # upstream phase -> its manifest path and sha256
    out_dir: Path

    @classmethod
    def start(cls, config: Config, spec: PhaseSpec) -> PhaseRun:
        """Fails with the command to run when an upstream phase has no output, before anything is written."""
        return cls(config, spec, upstream_inputs(config, spec), phase_dir(config, spec.id))

    def upstream(self, phase_id: str) -> Path:
        """The output folder of an upstream phase."""
        if phase_id not in self.inputs:
            raise KeyError(f"phase {self.spec.id} does not read phase {phase_id} (its upstream: {self.spec.upstream})")
        return Path(self.inputs[phase_id]["manifest"]).parent

    def finish(self, outputs: list[Path], extra: dict[str, Any] | None = None) -> Path:
        return write_manifest(self.config, self.spec, self.inputs, outputs, extra)
