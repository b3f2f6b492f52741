"""Phase 2.5: rank every SAE latent of every layer by how well it separates passing from failing code.

Reads phase 1's sae-split activations (output of layer L at every recorded position: the last
prompt token and the code positions) and phase 2.0's SAEs and general-corpus firing frequencies;
each position is analysed on its own and written under `<position>/`. Latents that fire on more than `general_freq_max` of
held-out standard-library tokens are not eligible (they fire on code in general, not on this
code's fate). Ranking is global over layers, ties broken by (layer, index). Outputs:
- `top_20_features.json`: the 20 best eligible latents for each class with their scores and
  their bootstrap stability (rank across task resamples), and the chance level: the best
  separation reached when whole tasks trade labels within a difficulty level (with ~20k latents,
  some separate by luck; rows of one task are not independent, and difficulty alone separates);
- `layer_{L}_latent_scores.parquet`: every latent's scores;
- `latent_directions.safetensors` (all positions): decoder rows of the listed latents and of
  zero-discrimination control latents, as `SteeringDirection`s for phase 4.x;
- plots of the scores by layer and of the top latents' activations per class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from common.activations import load_position
from common.classification import group_bootstrap_counts
from common.config import Config
from common.phase_run import PhaseRun
from common.directions import SteeringDirection, save_directions
from common.logging import get_logger
from common.positions import is_code_position, recorded_positions, usable_rows
from common.saes import encode_rows, load_sae
from common.utils import (atomic_path, load_json, save_json, write_manifest)
from phase2_5_simplified.plots import plot_scores_by_layer, plot_top_latent_activations
from phase2_5_simplified.sae_analyzer import (LatentScores, bootstrap_ranks, bootstrap_separation,
    permutation_max_separation, separation_scores, task_label_permutations, within_task_label_permutations)

logger = get_logger("phase2_5")

TOP_N = 20
THIN_CLASS_ROWS = 20
N_ZERO_DISCRIMINATION = 5  # per layer
ZERO_DISCRIMINATION_MIN_FREQ = 0.1  # a control latent must fire on at least this fraction of each class


def run(phase: PhaseRun) -> Path:
    config = phase.config
    spec = phase.spec
    inputs = phase.inputs
    phase1 = phase.upstream("1")
    phase2_0 = phase.upstream("2.0")
    out_dir = phase.out_dir
    table = pd.read_parquet(phase1 / "dataset_sae.parquet")
    sources = load_json(phase2_0 / "sae_sources.json")
    general = load_file(str(phase2_0 / "general_frequency.safetensors"))
    layers = sorted(int(layer) for layer in sources)
    saes = {layer: load_sae(sources[str(layer)]) for layer in layers}
    outputs, directions, summary = [], [], {}
    for position in recorded_positions(phase1 / "activations"):
        usable = usable_rows(table, position)
        analysis = _analyse_position(config, position, table[usable].reset_index(drop=True), usable, phase1, saes,
                                     general, out_dir / position)
        outputs += analysis.outputs
        directions += analysis.directions
        summary[position] = analysis.summary
    directions_path = out_dir / "latent_directions.safetensors"
    save_directions(directions_path, directions)
    summary_path = out_dir / "phase_2_5_summary.json"
    save_json({"positions": summary, "n_latents_per_position": sum(int(s.cfg.d_sae) for s in saes.values()),
               "chance_level": "labels permuted by whole tasks, within difficulty level and number of samples"},
              summary_path)
    return write_manifest(config, spec, inputs, outputs + [directions_path, summary_path])


@dataclass
class _PositionAnalysis:
    outputs: list[Path]
    directions: list[SteeringDirection]
    summary: dict[str, Any]


def _analyse_position(config: Config, position: str, table: pd.DataFrame, usable: np.ndarray, phase1: Path,
                      saes: dict[int, Any], general: dict[str, torch.Tensor], out_dir: Path) -> _PositionAnalysis:
    """Every latent's scores at one position, the top latents of each class with their stability and the chance
    level, written under `out_dir`."""
    passed = table["test_passed"].to_numpy(dtype=bool)
    n_correct, n_incorrect = int(passed.sum()), int((~passed).sum())
    warnings = _class_warnings(position, n_correct, n_incorrect)
    for warning in warnings:
        logger.warning(warning)
    frames, latents_by_layer, decoders = [], {}, {}
    for layer, sae in saes.items():
        activations = load_position(phase1 / "activations", position, layer)[torch.tensor(usable)]
        latents_by_layer[layer] = encode_rows(sae, activations)
        decoders[layer] = sae.W_dec.detach().cpu()
        frames.append(_layer_frame(layer, latents_by_layer[layer], passed, general[f"layer_{layer}"].numpy(),
                                   config.general_freq_max))
    scores = pd.concat(frames, ignore_index=True)
    outputs = []
    for layer, frame in zip(saes, frames):
        path = out_dir / f"layer_{layer}_latent_scores.parquet"
        with atomic_path(path) as tmp:
            frame.to_parquet(tmp, index=False)
        outputs.append(path)

    both_classes = n_correct > 0 and n_incorrect > 0
    chosen = {"correct": _top(scores, +1), "incorrect": _top(scores, -1)} if both_classes else {"correct": [],
                                                                                                "incorrect": []}
    stability, chance = {}, {}
    if both_classes and config.bootstrap_samples:
        fires = torch.cat([(latents > 0).float() for _, latents in sorted(latents_by_layer.items())], dim=1)
        eligible = torch.tensor(scores["eligible"].to_numpy(dtype=bool))
        stability = _stability(scores, chosen, fires, eligible, passed, table["task_id"].to_numpy(), config)
        chance = _chance_level(scores, chosen, fires, eligible, table, config, is_code_position(position))
    listed = {name: [_entry(scores.loc[i], stability.get(name, {}).get(rank)) for rank, i in enumerate(rows)]
              for name, rows in chosen.items()}
    for name, rows in listed.items():
        if len(rows) < TOP_N:
            warnings.append(f"{position}: only {len(rows)} eligible {name}-preferring latents (wanted {TOP_N})")
            logger.warning(warnings[-1])

    top_path = out_dir / "top_20_features.json"
    reliable = min(n_correct, n_incorrect) >= THIN_CLASS_ROWS
    save_json({**listed, "position": position, "chance_level": chance, "n_correct": n_correct,
               "n_incorrect": n_incorrect, "reliable": reliable, "warnings": warnings,
               "general_freq_max": config.general_freq_max,
               "mean_activation": "mean activation over the rows of the class the latent prefers",
               "layer_distribution": {name: pd.Series([r["layer"] for r in rows]).value_counts().sort_index()
                                      .to_dict() for name, rows in listed.items()}}, top_path)
    plot_paths = [out_dir / "separation_scores_by_layer.png", out_dir / "top_latent_activations.png"]
    plot_scores_by_layer(scores, listed, plot_paths[0])
    plot_top_latent_activations(listed, latents_by_layer, passed, plot_paths[1])
    for name, rows in listed.items():
        if rows:
            best = rows[0]
            logger.info("%s: best %s-preferring latent: layer %d #%d, separation %+.3f (f_correct %.2f, "
                        "f_incorrect %.2f)", position, name, best["layer"], best["feature_idx"],
                        best["separation_score"], best["f_correct"], best["f_incorrect"])
            for null_name in ("between_tasks", "within_tasks"):
                if null_name in chance:
                    null = chance[null_name][name]
                    logger.info("  labels shuffled %s: the best reaches %.3f (95th percentile of %d permutations), "
                                "p = %.3f", null_name.replace("_", " "), null["null_95th_percentile"],
                                chance["n_permutations"], null["p_value"])
    summary = {"n_correct": n_correct, "n_incorrect": n_incorrect, "n_rows_left_out": int((~usable).sum()),
               "reliable": reliable, "warnings": warnings, "n_eligible": int(scores["eligible"].sum()),
               "best": {name: rows[0] if rows else None for name, rows in listed.items()}, "chance_level": chance,
               "stability": {name: _stability_summary(rows) for name, rows in listed.items()}}
    directions = _directions(position, listed, _zero_discrimination(scores), decoders, n_correct, n_incorrect)
    return _PositionAnalysis(outputs + [top_path, *plot_paths], directions, summary)


def _class_warnings(position: str, n_correct: int, n_incorrect: int) -> list[str]:
    return [f"{position}: UNRELIABLE RANKING: only {n} {name} rows (< {THIN_CLASS_ROWS}); latent scores are mostly noise"
            for name, n in (("passing", n_correct), ("failing", n_incorrect)) if n < THIN_CLASS_ROWS]


def _layer_frame(layer: int, latents: torch.Tensor, passed: np.ndarray, general_frequency: np.ndarray,
                 general_freq_max: float) -> pd.DataFrame:
    d_sae = latents.shape[1]
    if passed.all() or not passed.any():
        empty = np.full(d_sae, np.nan)
        scores = LatentScores(empty, empty, empty, empty, empty, empty)
    else:
        scores = separation_scores(latents, passed)
    return pd.DataFrame({"layer": layer, "feature_idx": np.arange(d_sae), "f_correct": scores.f_correct,
                         "f_incorrect": scores.f_incorrect, "separation_score": scores.separation,
                         "t_statistic": scores.t_statistic, "mean_activation_correct": scores.mean_correct,
                         "mean_activation_incorrect": scores.mean_incorrect, "general_frequency": general_frequency,
                         "eligible": general_frequency <= general_freq_max})


def _top(scores: pd.DataFrame, sign: int) -> list[int]:
    """Row labels of the best eligible latents preferring one class (separation of the right sign)."""
    keyed = scores.assign(key=sign * scores["separation_score"])
    keyed = keyed[keyed["eligible"] & (keyed["key"] > 0)]
    return keyed.sort_values(["key", "layer", "feature_idx"], ascending=[False, True, True]).index[:TOP_N].tolist()


def _entry(row: pd.Series, stability: dict[str, Any] | None) -> dict[str, Any]:
    prefers_correct = row["separation_score"] > 0
    entry = {"layer": int(row["layer"]), "feature_idx": int(row["feature_idx"]),
             "separation_score": float(row["separation_score"] if prefers_correct else -row["separation_score"]),
             "f_correct": float(row["f_correct"]), "f_incorrect": float(row["f_incorrect"]),
             "t_statistic": float(row["t_statistic"]),
             "mean_activation": float(row["mean_activation_correct" if prefers_correct else "mean_activation_incorrect"]),
             "general_frequency": float(row["general_frequency"])}
    if stability is not None:
        entry["bootstrap"] = stability
    return entry


def _stability(scores: pd.DataFrame, chosen: dict[str, list[int]], fires: torch.Tensor, eligible: torch.Tensor,
               passed: np.ndarray, task_ids: np.ndarray, config: Config) -> dict[str, dict[int, dict[str, Any]]]:
    """For each listed latent: its rank among eligible latents of its class in every task resample.

    `fires` is [n_rows, all latents of all layers in score order], 1 where the latent fires."""
    weights = torch.as_tensor(group_bootstrap_counts(task_ids, config.bootstrap_samples, config.seed),
                              dtype=torch.float32)
    resampled = bootstrap_separation(fires, passed, weights)
    lost_class = int(torch.isnan(resampled).any(1).sum())  # a resample without one class has no separation
    resampled = resampled[~torch.isnan(resampled).any(1)]
    result: dict[str, dict[int, dict[str, Any]]] = {}
    for name, sign in (("correct", 1), ("incorrect", -1)):
        if not chosen[name]:
            continue
        ranks = bootstrap_ranks(sign * resampled, eligible, chosen[name]).numpy()
        result[name] = {position: {"median_rank": float(np.median(ranks[:, position])),
                                   "rank_95": [float(np.percentile(ranks[:, position], 2.5)),
                                               float(np.percentile(ranks[:, position], 97.5))],
                                   "top20_fraction": float((ranks[:, position] <= TOP_N).mean()),
                                   "n_resamples": int(len(ranks)), "resamples_lost_class": lost_class}
                        for position in range(len(chosen[name]))}
    return result


def _chance_level(scores: pd.DataFrame, chosen: dict[str, list[int]], fires: torch.Tensor, eligible: torch.Tensor,
                  table: pd.DataFrame, config: Config, within_task: bool) -> dict[str, Any]:
    """The best separation reached under shuffled labels, and the permutation p-value of the observed best: labels
    traded between whole tasks of one difficulty level (the null of "nothing the task's difficulty does not
    explain"), and at a code position also shuffled within each task (the null of "nothing beyond the task")."""
    passed, task_ids = table["test_passed"].to_numpy(dtype=bool), table["task_id"].to_numpy()
    strata = table["difficulty"].to_numpy() if "difficulty" in table else np.zeros(len(table))
    nulls = {"between_tasks": task_label_permutations(passed, task_ids, strata, config.bootstrap_samples, config.seed)}
    if within_task:
        nulls["within_tasks"] = within_task_label_permutations(passed, task_ids, config.bootstrap_samples, config.seed)
    result: dict[str, Any] = {"n_permutations": config.bootstrap_samples,
                              "permuted": "between_tasks: whole tasks, within difficulty level"
                                          + ("; within_tasks: rows of each task" if within_task else "")}
    for null_name, shuffled in nulls.items():
        null = dict(zip(("correct", "incorrect"), permutation_max_separation(fires, shuffled, eligible)))
        result[null_name] = {}
        for name, sign in (("correct", 1), ("incorrect", -1)):
            observed = float(sign * scores.loc[chosen[name][0], "separation_score"]) if chosen[name] else 0.0
            result[null_name][name] = {"observed_best": observed, "null_median": float(np.median(null[name])),
                                       "null_95th_percentile": float(np.percentile(null[name], 95)),
                                       "p_value": float((1 + (null[name] >= observed).sum()) / (1 + len(null[name])))}
    return result


def _stability_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    with_boot = [r["bootstrap"] for r in rows if "bootstrap" in r]
    if not with_boot:
        return {}
    return {"best_latent_median_rank": with_boot[0]["median_rank"], "best_latent_rank_95": with_boot[0]["rank_95"],
            "best_latent_top20_fraction": with_boot[0]["top20_fraction"],
            "mean_top20_fraction_of_listed": float(np.mean([b["top20_fraction"] for b in with_boot]))}


def _zero_discrimination(scores: pd.DataFrame) -> list[dict[str, Any]]:
    """Per layer, eligible latents that fire often in both classes and equally often: layer-matched
    controls for steering."""
    pool = scores[scores["eligible"] & (scores["f_correct"] >= ZERO_DISCRIMINATION_MIN_FREQ)
                  & (scores["f_incorrect"] >= ZERO_DISCRIMINATION_MIN_FREQ)]
    pool = pool.assign(gap=pool["separation_score"].abs()).sort_values(["layer", "gap", "feature_idx"])
    return [_entry(row, None) for _, row in pool.groupby("layer").head(N_ZERO_DISCRIMINATION).iterrows()]


def _directions(position: str, listed: dict[str, list[dict[str, Any]]], controls: list[dict[str, Any]],
                decoders: dict[int, torch.Tensor], n_correct: int, n_incorrect: int) -> list[SteeringDirection]:
    directions = []
    groups = ([("sae_latent", name, rows) for name, rows in listed.items()]
              + [("zero_discrimination", "control", controls)])
    for source, group, rows in groups:
        for rank, row in enumerate(rows):
            vector = decoders[row["layer"]][row["feature_idx"]]
            provenance = {"phase": "2.5", "split": "sae", "prefers": group, "rank": rank + 1,
                          "decoder_norm": float(vector.norm()), "n_correct": n_correct, "n_incorrect": n_incorrect,
                          **{k: v for k, v in row.items() if k != "bootstrap"}}
            name = f"{position}/{source}/{group}/layer_{row['layer']}/latent_{row['feature_idx']}"
            directions.append(SteeringDirection(name, row["layer"], vector.clone(), source, provenance,
                                                position).unit())
    return directions
