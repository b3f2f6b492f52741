"""Phase 3.8: how well do the latents of phase 2.5 (and the mean-difference baseline) predict on new problems?

Scores: the activation of each of the top 5 correct-preferring latents (predicts "will pass"),
of the top 5 incorrect-preferring ones (predicts "will fail"), and the projection on phase 2.6's
mean-difference direction of each layer (predicts "will pass"). Within each family the score is
chosen, and its F1-maximising threshold set, on the hyperparams split (phase 3.6) only; the
validation split (phase 3.5) is read only to report: AUROC with a bootstrap 95% interval,
precision / recall / F1 at the chosen threshold next to the trivial classifiers, and AUROC at
every temperature (its interval resamples tasks, since the samples of one task are not independent).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from common.activations import load_activations
from common.classification import auroc, auroc_with_interval, best_f1_threshold, binary_metrics
from common.config import Config
from common.directions import load_directions
from common.logging import get_logger
from common.phases import get_phase
from common.saes import encode_rows, load_sae
from common.utils import (discover_latest_phase_output, load_json, phase_dir, save_json, upstream_inputs,
    write_manifest)
from phase3_8.plots import plot_auroc_by_temperature, plot_roc_curves, plot_score_histograms

logger = get_logger("phase3_8")

CANDIDATES_PER_CLASS = 5
AUROC_RESAMPLES = 1000
THIN_CLASS_ROWS = 10

Scorer = Callable[[Path], np.ndarray]  # activations folder -> one score per row


def run(config: Config) -> Path:
    spec = get_phase("3.8")
    inputs = upstream_inputs(config, spec)
    folder = {phase: discover_latest_phase_output(phase, config.data_dir).parent for phase in spec.upstream}
    families = _candidate_scorers(folder["2.0"], folder["2.5"], folder["2.6"])
    tuning_table = pd.read_parquet(folder["3.6"] / "dataset_hyperparams_temp_0_0.parquet", columns=["test_passed"])
    tuning_passed = tuning_table["test_passed"].to_numpy(dtype=bool)
    temperatures = load_json(folder["3.5"] / "phase_3_5_summary.json")["by_temperature"]
    validation = {t: (pd.read_parquet(folder["3.5"] / info["table"], columns=["task_id", "test_passed"]),
                      folder["3.5"] / info["activations"]) for t, info in temperatures.items()}
    validation_table, validation_folder = validation["0"]
    validation_passed = validation_table["test_passed"].to_numpy(dtype=bool)
    warnings = [f"only {n} {name} rows on the {split} split (< {THIN_CLASS_ROWS}): wide intervals, unstable threshold"
                for split, passed in (("hyperparams", tuning_passed), ("validation", validation_passed))
                for name, n in (("passing", int(passed.sum())), ("failing", int((~passed).sum())))
                if n < THIN_CLASS_ROWS]
    for warning in warnings:
        logger.warning(warning)

    results: dict[str, Any] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}
    for family, (predicts, candidates) in families.items():
        if not candidates:
            continue
        target = tuning_passed if predicts == "pass" else ~tuning_passed
        tuning_scores = {name: scorer(folder["3.6"] / "activations") for name, scorer in candidates.items()}
        tuning_auroc = {name: auroc(scores, target) for name, scores in tuning_scores.items()}
        chosen = max(tuning_auroc, key=lambda name: (np.nan_to_num(tuning_auroc[name], nan=-1), name))
        scorer = candidates[chosen]
        threshold = best_f1_threshold(tuning_scores[chosen], target)
        scores = scorer(validation_folder)
        positive = validation_passed if predicts == "pass" else ~validation_passed
        per_temperature = {}
        for t, (table, path) in validation.items():
            passed = table["test_passed"].to_numpy(dtype=bool)
            per_temperature[t] = auroc_with_interval(scorer(path), passed if predicts == "pass" else ~passed,
                                                     AUROC_RESAMPLES, config.seed, groups=table["task_id"].to_numpy())
        results[family] = {
            "predicts": predicts, "chosen": chosen, "chosen_on": "hyperparams split (phase 3.6), by AUROC",
            "hyperparams_auroc": tuning_auroc, "validation": auroc_with_interval(scores, positive, AUROC_RESAMPLES,
                                                                                  config.seed),
            "validation_at_threshold": binary_metrics(scores, positive, threshold),
            "validation_auroc_by_temperature": per_temperature}
        curves[f"{family}: {chosen}"] = (scores, positive, "passing" if predicts == "pass" else "failing")
        best = results[family]["validation"]
        logger.info("%s (%s, predicts %s): validation AUROC %.3f [%.3f-%.3f], F1 %.3f vs always-%s %.3f",
                    family, chosen, predicts, best["auroc"], best["low"], best["high"],
                    results[family]["validation_at_threshold"]["f1"], predicts,
                    results[family]["validation_at_threshold"]["trivial"]["always_positive"]["f1"])

    out_dir = phase_dir(config, spec.id)
    results_path = out_dir / "evaluation_results.json"
    save_json({"families": results, "n_hyperparams": len(tuning_passed), "n_validation": len(validation_passed),
               "warnings": warnings}, results_path)
    plot_paths = [out_dir / "roc_curves.png", out_dir / "score_histograms.png", out_dir / "auroc_by_temperature.png"]
    plot_roc_curves(curves, plot_paths[0])
    plot_score_histograms(curves, plot_paths[1])
    plot_auroc_by_temperature(results, plot_paths[2])
    return write_manifest(config, spec, inputs, [results_path, *plot_paths])


def _candidate_scorers(sae_folder: Path, latent_folder: Path, direction_folder: Path
                       ) -> dict[str, tuple[str, dict[str, Scorer]]]:
    """family -> (what a high score predicts, {candidate name: scorer})."""
    top = load_json(latent_folder / "top_20_features.json")
    sources = load_json(sae_folder / "sae_sources.json")
    encoded: dict[tuple[int, Path], torch.Tensor] = {}  # every candidate of a layer shares one encoding

    def latent_scorer(layer: int, index: int) -> Scorer:
        def score(activations_folder: Path) -> np.ndarray:
            if (layer, activations_folder) not in encoded:
                activations, _ = load_activations(activations_folder / f"layer_{layer}.safetensors")
                encoded[layer, activations_folder] = encode_rows(_sae(layer), activations)
            return encoded[layer, activations_folder][:, index].numpy()
        return score

    saes: dict[int, Any] = {}

    def _sae(layer: int):
        if layer not in saes:
            saes[layer] = load_sae(sources[str(layer)])
        return saes[layer]

    def projection_scorer(layer: int, vector: torch.Tensor) -> Scorer:
        def score(activations_folder: Path) -> np.ndarray:
            activations, _ = load_activations(activations_folder / f"layer_{layer}.safetensors")
            return (activations @ vector).numpy()
        return score

    families = {}
    for family, predicts in (("sae_correct_latent", "pass"), ("sae_incorrect_latent", "fail")):
        rows = top["correct" if predicts == "pass" else "incorrect"][:CANDIDATES_PER_CLASS]
        families[family] = (predicts, {f"layer_{r['layer']}/latent_{r['feature_idx']}":
                                       latent_scorer(r["layer"], r["feature_idx"]) for r in rows})
    directions = [d for d in load_directions(direction_folder / "directions.safetensors")
                  if d.source == "mean_difference"]
    families["mean_difference"] = ("pass", {d.name: projection_scorer(d.layer, d.unit().vector) for d in directions})
    return families
