"""Phase 4.5's interventions: every method's per-class direction and the controls, each calibrated to every
disruption level on the hyperparams baseline programs (saved for phase 4.8 by common/calibrated_arms.py)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from common.activations import load_position
from common.config import Config
from common.controls import ControlSources, control_directions
from common.disruption import TeacherText, disruption, matched_alphas
from common.calibrated_arms import CalibratedArm
from common.interventions import ResidualAddition
from common.methods import SteeringSite
from common.positions import usable_rows
from common.saes import load_sae
from common.utils import load_json

ACTIVE_LATENT_MIN_FREQ = 0.05  # a control latent fires on at least this share of each class's programs


CONTROL_ROLES = ("selection_control", "control")  # 4.5's rule compares with the first, 4.8 with the second: two
#                                                   independent draws, so 4.8 never reuses what the level was chosen
#                                                   against (a control's effect belongs to the direction)


def arm_name(group: str, kind_or_index: str, level: float, role: str) -> str:
    prefix = f"{role}/" if role in CONTROL_ROLES else ""
    return f"{prefix}{group}/{kind_or_index}@{level:g}"


def control_sources(where: SteeringSite, exclude_latents: Sequence[int]) -> ControlSources:
    """Phase 1's recorded activations at the steering site (labels and tasks with them) and the decoder rows of
    SAE latents that fire on both classes there but are not the ones chosen."""
    table = pd.read_parquet(where.folder("1") / "dataset_sae.parquet")
    usable = usable_rows(table, where.position)
    activations = load_position(where.folder("1") / "activations", where.position, where.layer)[torch.from_numpy(usable)]
    scores_path = where.folder("2.5") / where.position / f"layer_{where.layer}_latent_scores.parquet"
    active = None
    if scores_path.is_file():
        scores = pd.read_parquet(scores_path)
        pool = scores[scores["eligible"] & (scores["f_correct"] >= ACTIVE_LATENT_MIN_FREQ)
                      & (scores["f_incorrect"] >= ACTIVE_LATENT_MIN_FREQ) & ~scores["feature_idx"].isin(exclude_latents)]
        record = load_json(where.folder("2.0") / "sae_sources.json").get(str(where.layer))
        if record is not None and len(pool):
            decoder = load_sae(record).W_dec.detach().cpu().float()
            active = decoder[torch.as_tensor(pool["feature_idx"].to_numpy(copy=True))]
    return ControlSources(activations, table.loc[usable, "test_passed"].to_numpy(dtype=bool),
                          table.loc[usable, "task_id"].astype(str).to_numpy(), active)


def make_controls(where: SteeringSite, exclude_latents: Sequence[int], per_type: int, d_model: int, seed: int
                  ) -> tuple[list[ResidualAddition], list[str]]:
    """`per_type` unit controls of each type at the steering site, with the site's position policy."""
    directions, missing = control_directions(where.layer, where.position, d_model,
                                             control_sources(where, exclude_latents), per_type, seed)
    return [ResidualAddition(d, 1.0, where.policy) for d in directions], missing


def calibrate(model, texts: Sequence[TeacherText], targets: dict[tuple[str, str], ResidualAddition],
              controls: dict[str, list[ResidualAddition]], levels: Sequence[float], config: Config
              ) -> tuple[list[tuple[CalibratedArm, ResidualAddition]], dict[str, Any]]:
    """Every target and control (by role) at every level: (arm, intervention) pairs, and the measured disruption
    curves. A level a direction cannot reach with the grid's largest alpha gives no arm (reported)."""
    units = list(targets.values()) + [c for role in CONTROL_ROLES for c in controls[role]]
    alphas, measured = matched_alphas(model, texts, units, levels, config.calibration_alphas)
    arms, unreachable = [], []
    names = ([("target", method, kind) for method, kind in targets]
             + [(role, c.direction.source, c.direction.name.rsplit("/", 1)[-1])
                for role in CONTROL_ROLES for c in controls[role]])
    for unit, (role, group, kind), row in zip(units, names, alphas):
        for level, alpha in zip(levels, row):
            name = arm_name(group, kind, level, role)
            if np.isnan(alpha):
                unreachable.append(name)
                continue
            addition = unit.at(float(alpha))
            kind_of_arm = kind if role == "target" else "control"  # a control has no class
            arms.append((CalibratedArm(name, role, group, kind_of_arm, float(level), float(alpha), addition.label),
                         addition))
    curves = {"alpha_grid": sorted(config.calibration_alphas), "levels": list(levels),
              "curves": {f"{role}/{group}/{kind}": [float(v) for v in row]
                         for (role, group, kind), row in zip(names, measured)},
              "unreachable": unreachable}
    return arms, curves


def achieved_disruption(model, texts: Sequence[TeacherText], arms: Sequence[tuple[CalibratedArm, ResidualAddition]]
                        ) -> dict[str, float]:
    """The disruption measured again at each arm's calibrated alpha: the check that calibration hit its level."""
    values = disruption(model, texts, [addition for _, addition in arms])
    return {arm.name: float(v) for (arm, _), v in zip(arms, values)}
