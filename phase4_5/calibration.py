"""Phase 4.5's interventions: every method's per-class intervention and the controls, each calibrated to every
disruption level on the hyperparams baseline programs (saved for phase 4.8 by common/calibrated_arms.py).

Controls come in sets: the shared residual controls of the steering site, and the own controls of each method
registered with `controls=` (common/methods.py); a target is compared only with its set."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from common.activations import load_position
from common.config import Config
from common.controls import SHARED_CONTROLS, Control, ControlSources, control_directions
from common.disruption import TeacherText, disruption, matched_alphas
from common.calibrated_arms import CalibratedArm
from common.interventions import Intervention, ResidualAddition
from common.methods import SteeringSite
from common.positions import usable_rows
from common.saes import load_sae
from common.utils import load_json

ACTIVE_LATENT_MIN_FREQ = 0.05  # a control latent fires on at least this share of each class's programs


CONTROL_ROLES = ("selection_control", "control")  # 4.5's rule compares with the first, 4.8 with the second: two
#                                                   independent draws, so 4.8 never reuses what the level was chosen
#                                                   against (a control's effect belongs to the direction)


def arm_name(group: str, kind_or_index: str, level: float, role: str, control_set: str = SHARED_CONTROLS) -> str:
    """e.g. "sae_latent/correct@0.1", "control/random_isotropic/3@0.1", and for a method's own controls its name:
    "control/kv_cache_mutant/random_kv_norms/3@0.1"."""
    prefix = f"{role}/" if role in CONTROL_ROLES else ""
    if role in CONTROL_ROLES and control_set != SHARED_CONTROLS:
        prefix += f"{control_set}/"
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
                  ) -> tuple[list[Control], list[str]]:
    """`per_type` unit controls of each type at the steering site, with the site's position policy."""
    directions, missing = control_directions(where.layer, where.position, d_model,
                                             control_sources(where, exclude_latents), per_type, seed)
    return [Control(d.source, int(d.name.rsplit("/", 1)[-1]), ResidualAddition(d, 1.0, where.policy))
            for d in directions], missing


def calibrate(model, texts: Sequence[TeacherText], targets: dict[tuple[str, str], Intervention],
              target_sets: dict[str, str], controls: dict[str, list[tuple[str, Control]]], levels: Sequence[float],
              config: Config) -> tuple[list[tuple[CalibratedArm, Intervention]], dict[str, Any]]:
    """Every target (compared with the control set `target_sets[method]`) and every control (per role: its set and
    itself) at every level: (arm, intervention) pairs, and the measured disruption curves. A level an intervention
    cannot reach with the grid's largest alpha gives no arm (reported)."""
    units = list(targets.values()) + [c.unit for role in CONTROL_ROLES for _, c in controls[role]]
    alphas, measured = matched_alphas(model, texts, units, levels, config.calibration_alphas)
    arms, unreachable = [], []
    names = ([("target", method, kind, target_sets[method]) for method, kind in targets]
             + [(role, c.type, str(c.index), control_set)
                for role in CONTROL_ROLES for control_set, c in controls[role]])
    for unit, (role, group, kind, control_set), row in zip(units, names, alphas):
        for level, alpha in zip(levels, row):
            name = arm_name(group, kind, level, role, control_set)
            if np.isnan(alpha):
                unreachable.append(name)
                continue
            calibrated = unit.at(float(alpha))
            kind_of_arm = kind if role == "target" else "control"  # a control has no class
            arms.append((CalibratedArm(name, role, group, kind_of_arm, float(level), float(alpha), calibrated.label,
                                       control_set=control_set), calibrated))
    curves = {"alpha_grid": sorted(config.calibration_alphas), "levels": list(levels),
              "curves": {("target/" if role == "target" else "") + arm_name(group, kind, 0, role, control_set)
                         .rsplit("@", 1)[0]: [float(v) for v in row]
                         for (role, group, kind, control_set), row in zip(names, measured)},
              "unreachable": unreachable}
    return arms, curves


def achieved_disruption(model, texts: Sequence[TeacherText], arms: Sequence[tuple[CalibratedArm, Intervention]]
                        ) -> dict[str, float]:
    """The disruption measured again at each arm's calibrated alpha: the check that calibration hit its level."""
    values = disruption(model, texts, [addition for _, addition in arms])
    return {arm.name: float(v) for (arm, _), v in zip(arms, values)}
