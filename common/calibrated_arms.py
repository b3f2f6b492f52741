"""The calibrated arms phase 4.5 hands to phase 4.8: interventions at disruption levels, with what each one is.

An arm is one intervention at one level; `arms.json` describes each (role, method or control type,
class, level, alpha, control set) and names its entry in `interventions.safetensors` (common/interventions/).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from common.controls import SHARED_CONTROLS
from common.interventions import Intervention, load_interventions, save_interventions
from common.utils import load_json, save_json


@dataclass(frozen=True)
class CalibratedArm:
    name: str  # e.g. "sae_latent/correct@0.1" or "control/random_isotropic/3@0.1"
    role: str  # target | control
    group: str  # the method, or the control type
    kind: str  # correct | incorrect | control
    level: float  # disruption it is calibrated to (nats per token)
    alpha: float
    label: str  # the intervention's label
    index: int = -1  # in interventions.safetensors
    control_set: str = SHARED_CONTROLS  # a control's set, or the set a target is compared with (common/controls.py)


def save_arms(folder: Path, arms: Sequence[tuple[CalibratedArm, Intervention]]) -> list[Path]:
    interventions_path, arms_path = folder / "interventions.safetensors", folder / "arms.json"
    save_interventions(interventions_path, [addition for _, addition in arms])
    save_json([{**asdict(arm), "index": i} for i, (arm, _) in enumerate(arms)], arms_path)
    return [interventions_path, arms_path]


def load_arms(folder: Path) -> list[tuple[CalibratedArm, Intervention]]:
    interventions = load_interventions(folder / "interventions.safetensors")
    return [(CalibratedArm(**entry), interventions[entry["index"]]) for entry in load_json(folder / "arms.json")]
