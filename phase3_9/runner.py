"""Phase 3.9: the multi-cluster steering dictionary and its calibrated confidence (seed 000).

Fitted on the sae split (phase 1's programs, the reference programs of phase 2.7's pairs), at the steering layer and
code position (`steering_direction_position`): per task a steering vector from its failing programs to its passing
ones, a k-means dictionary of them and the projection P from the last prompt token (phase3_9/fitting.py,
common/steering_dictionary.py). Chosen on the hyperparams split (phase 3.6): K and tau, by the leave-one-task-out
Brier score of the calibrator; then the calibrator itself, a logistic regression on the seed's features

    phi = [max w, top-2 margin of w, cos(P(h), s), |s|, delta logprob]

where delta logprob is the program's mean margin between its top-1 and top-2 token log-probabilities. Reported on the
validation split (phase 3.5, every temperature) only: AUROC, Brier and ECE with task-bootstrap intervals, a
reliability diagram, beside the same calibrator without delta logprob (routing alone: read before any code exists,
it can only know the problem), and the baselines of common/baselines.py turned into probabilities (fitted on sae,
Platt-scaled on hyperparams), among them delta logprob alone (`program_mean_margin`); the model's mean
log-probability is the one to beat. Phase 3.8's scores at the steering position are listed beside them by AUROC.
The chosen dictionary is saved as a `self_steering` intervention for the method of that name (phases 4.5, 4.8).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from common.activations import load_position
from common.baselines import BASELINES, applicable, fitted_scorer
from common.calibration_metrics import calibration_metrics, paired_differences, reliability_table
from common.classification import fit_combiner, within_task_auroc
from common.contrastive_pairs import load_pairs
from common.errors import PipelineError
from common.interventions import SelfSteering, save_interventions
from common.logging import get_logger
from common.methods import steering_layer
from common.phase_run import PhaseRun
from common.positions import LAST_PROMPT, is_code_position, usable_rows
from common.program_pass import answer_text, record_programs
from common.split_tables import Split, read_split
from common.prompt_utils import PromptBuilder, resolve_prompt_style
from common.steering_dictionary import DICTIONARY_FILE, ROUTING_FEATURES, SteeringDictionary
from common.utils import load_json, save_json
from common_simplified.model_loader import load_model_and_tokenizer
from phase3_9.fitting import Projection, ProjectionTraining, cluster_means, task_vectors, train_projection
from phase3_9.plots import plot_calibration

logger = get_logger("phase3_9")

FEATURES = (*ROUTING_FEATURES, "delta_logprob")
CONFIDENCE = "dictionary_confidence"  # the seed's calibrated q
ONE_TO_BEAT = "program_mean_logprob"
DELTA_LOGPROB = "program_mean_margin"  # the baseline that is seed 000's delta logprob alone
RESAMPLES = 1000
SELF_STEERING = "self_steering"


class NoDictionary(Exception):
    """The data cannot support a dictionary (too few tasks, no steering layer, one class where choices are made):
    the phase records why, and the self-steering method proposes nothing."""


def run(phase: PhaseRun) -> Path:
    config = phase.config
    position = config.steering_direction_position
    if not is_code_position(position):
        raise PipelineError(f"phase 3.9 reads its task vectors at a code position; steering_direction_position is "
                            f"{position}")
    folders = {upstream: phase.upstream(upstream) for upstream in phase.spec.upstream}
    out_dir = phase.out_dir
    dictionary_path, figure_path, results_path = (out_dir / name for name in (
        DICTIONARY_FILE, "calibration.png", "calibration_results.json"))
    for path in (dictionary_path, figure_path, results_path):
        path.unlink(missing_ok=True)  # an earlier run's must not outlive this one
    summary_path = out_dir / "phase_3_9_summary.json"
    try:
        summary, steering, results = _fit_and_report(config, folders, position)
    except NoDictionary as reason:
        logger.warning("phase 3.9: no dictionary (%s)", reason)
        save_json({"position": position, "no_dictionary_reason": str(reason)}, summary_path)
        return phase.finish([summary_path])
    save_interventions(dictionary_path, [steering])
    plot_calibration(results["predictors"], [CONFIDENCE, "routing_only", DELTA_LOGPROB, ONE_TO_BEAT],
                     figure_path)
    save_json(results, results_path)
    save_json(summary, summary_path)
    return phase.finish([dictionary_path, figure_path, results_path, summary_path])


def _fit_and_report(config, folders: dict[str, Path], position: str
                    ) -> tuple[dict[str, Any], SelfSteering, dict[str, Any]]:
    """The dictionary fitted on sae and chosen on hyperparams, as a unit self-steering intervention; the summary;
    and the validation report."""
    layer = steering_layer(folders["2.5"], position, config.steering_layer)
    if layer is None:
        raise NoDictionary(f"phase 2.5 lists no correct-preferring latent at {position} to place the steering layer "
                           "(set steering_layer)")
    choose, choose_counts = _split("hyperparams", folders["3.6"], [("dataset_hyperparams_temp_0_0.parquet",
                                                                    "activations")], position)
    if choose.passed.all() or not choose.passed.any():
        raise NoDictionary(f"the hyperparams split, where K, tau and the calibrator are chosen, has "
                           f"{int(choose.passed.sum())} passing programs of {len(choose.passed)}")
    sae = pd.read_parquet(folders["1"] / "dataset_sae.parquet")
    sae_code = load_position(folders["1"] / "activations", position, layer)
    tasks, vectors, task_counts = task_vectors(sae, sae_code, _reference_activations(folders, position, layer, config))
    cluster_counts = [k for k in config.dictionary_clusters if 2 * k <= len(tasks)]
    if not cluster_counts:
        raise NoDictionary(f"{len(tasks)} sae tasks have a steering vector ({task_counts}): too few for "
                           f"{min(config.dictionary_clusters)} clusters of two tasks or more")
    logger.info("task steering vectors: %d tasks (%s)", len(tasks), task_counts)
    first_row = pd.Series(np.arange(len(sae))).groupby(sae["task_id"].astype(str).to_numpy()).first()
    sae_prompt = load_position(folders["1"] / "activations", LAST_PROMPT, layer)
    prompt_rows = first_row.loc[tasks].to_numpy(dtype=np.int64, copy=True)  # a task's programs share its prompt
    hidden = sae_prompt[torch.from_numpy(prompt_rows)]
    units = torch.nn.functional.normalize(vectors, dim=-1)
    settings = ProjectionTraining(tuple(config.projection_lrs), config.projection_weight_decay,
                                  config.projection_batch_size, config.projection_max_epochs, config.seed)
    projection, trial, held_out = train_projection(hidden, units, tasks, settings)
    logger.info("projection P: %d epochs; held-out mean cosine %.3f (a constant vector: %.3f)",
                projection.record["epochs"], projection.record["held_out_mean_cosine"],
                projection.record["held_out_mean_cosine_of_constant"])

    clusterings = {k: cluster_means(units, k, config.seed) for k in cluster_counts}
    dictionaries = {k: SteeringDictionary(layer, means, projection.weight, projection.bias, projection.input_mean,
                                          projection.input_scale, 1.0) for k, (means, _) in clusterings.items()}
    grid = [{"clusters": k, "tau": tau, "hyperparams_loo_brier": _loo_brier(dictionaries[k].with_tau(tau), choose)}
            for k in cluster_counts for tau in config.dictionary_taus]
    best = min(grid, key=lambda g: (g["hyperparams_loo_brier"], g["clusters"], g["tau"]))
    dictionary = dictionaries[best["clusters"]].with_tau(best["tau"])
    logger.info("chosen on hyperparams: K %d, tau %g (leave-one-task-out Brier %.4f)", best["clusters"], best["tau"],
                best["hyperparams_loo_brier"])

    by_temperature = load_json(folders["3.5"] / "phase_3_5_summary.json")["by_temperature"]
    report, report_counts = _split("validation", folders["3.5"], [(info["table"], info["activations"])
                                                                  for info in by_temperature.values()], position)
    predictions = _predictions(dictionary, sae, choose, report)
    positive, report_tasks = report.passed, report.tasks
    predictors = {name: {"level": _level(name),
                         **calibration_metrics(p, positive, report_tasks, RESAMPLES, config.seed),
                         "within_task_auroc": (within_task_auroc(p, positive, report_tasks, RESAMPLES, config.seed)
                                               if _level(name) == "program" else None),
                         "reliability": reliability_table(p, positive)}
                  for name, p in predictions.items()}
    compared = {other: paired_differences(predictions[CONFIDENCE], predictions[other], positive, report_tasks,
                                          RESAMPLES, config.seed)
                for other in (ONE_TO_BEAT, DELTA_LOGPROB, "confidence_and_length") if other in predictions}
    cluster_of = clusterings[best["clusters"]][1]
    base_rate = _loo_brier(None, choose)
    counts = {"hyperparams": choose_counts, "validation": report_counts}
    summary = {"layer": layer, "position": position, "task_vectors": {"tasks": len(tasks), **task_counts},
               "clusters": best["clusters"], "tau": best["tau"], "cluster_sizes": np.bincount(cluster_of).tolist(),
               "selection_grid": grid, "projection": projection.record,
               "held_out_routing": _routing_check(dictionary, trial, hidden, units, held_out, config.seed),
               "hyperparams_loo_brier_of_the_base_rate": base_rate,
               "features": list(FEATURES), "counts": counts,
               "headline": {name: {m: predictors[name][m] for m in ("auroc", "brier", "ece")} for name in predictors},
               "confidence_minus": compared}
    results = {"split": "validation", "position": position, "layer": layer, "counts": counts["validation"],
               "predictors": predictors, "confidence_minus": compared,
               "other_scores_by_auroc": _other_scores(folders["3.8"], position)}
    return summary, SelfSteering(SELF_STEERING, dictionary, 1.0, position), results


def _split(name: str, folder: Path, parts: list[tuple[str, str]], position: str) -> tuple[Split, dict[str, int]]:
    """The split's programs that have an activation at the code position, a verdict and a margin; and counts."""
    every = read_split(name, folder, parts)
    split = every.restricted(usable_rows(every.table, position) & every.table["program_mean_margin"].notna().to_numpy())
    return split, {"programs": len(split.table), "tasks": len(set(split.tasks)), "passing": int(split.passed.sum()),
                   "left_out_without_program_or_verdict": len(every.table) - len(split.table)}


def _reference_activations(folders: dict[str, Path], position: str, layer: int, config) -> dict[str, torch.Tensor]:
    """Per sae task with a mutant pair in phase 2.7, the code activation of its reference program (the passing side
    of those pairs, already in answer form): one teacher-forced pass each."""
    pairs_path = folders["2.7"] / "datasets" / "contrastive_pairs.jsonl"
    references = {pair.task_id: pair.positive_output for pair in load_pairs(pairs_path) if pair.kind == "mutant"}
    if not references:
        return {}
    problems = {str(p["task_id"]): p for p in pd.read_parquet(folders["0.1"] / "sae.parquet").to_dict("records")}
    model, tokenizer = load_model_and_tokenizer(config.model_name, config.device, config.dtype)
    builder = PromptBuilder(resolve_prompt_style(config.prompt_style, tokenizer), tokenizer)
    tasks = [task for task in references if task in problems]
    texts = [answer_text(builder.build(problems[task]), references[task], problems[task]) for task in tasks]
    recorded = record_programs(model, tokenizer, texts, [layer], config.position_k, builder.adds_special_tokens)
    activations = recorded.activations[position][layer]
    return {task: activations[i] for i, task in enumerate(tasks) if not torch.isnan(activations[i]).any()}


def _features(dictionary: SteeringDictionary, split: Split) -> np.ndarray:
    """[rows, 5] in FEATURES order: the routing of each row's last-prompt activation, and its delta logprob."""
    return np.c_[dictionary.features(split.activations(LAST_PROMPT, dictionary.layer)),
                 split.table["program_mean_margin"].to_numpy(dtype=float)]


def _loo_brier(dictionary: SteeringDictionary | None, split: Split) -> float:
    """Brier score of the calibrator on each hyperparams task when fitted on the others; with no dictionary, of the
    other tasks' pass rate (what any choice must beat)."""
    passed, tasks = split.passed, split.tasks
    features = _features(dictionary, split) if dictionary is not None else None
    predicted = np.empty(len(passed))
    for task in np.unique(tasks):
        out = tasks == task
        if features is None or passed[~out].all() or not passed[~out].any():
            predicted[out] = passed[~out].mean()
        else:
            predicted[out] = fit_combiner(features[~out], passed[~out]).predict_proba(features[out])[:, 1]
    return float(np.mean((predicted - passed) ** 2))


def _predictions(dictionary: SteeringDictionary, sae: pd.DataFrame, choose: Split, report: Split
                 ) -> dict[str, np.ndarray]:
    """Validation probabilities of passing: the calibrator on all features and on the routing features only, each
    fitted on hyperparams; and every applicable baseline, fitted on sae and Platt-scaled on hyperparams (delta logprob
    alone is the `program_mean_margin` baseline)."""
    choose_features, report_features = _features(dictionary, choose), _features(dictionary, report)
    columns = {CONFIDENCE: slice(None), "routing_only": slice(0, len(ROUTING_FEATURES))}
    predictions = {name: fit_combiner(choose_features[:, c], choose.passed).predict_proba(report_features[:, c])[:, 1]
                   for name, c in columns.items()}
    for baseline in BASELINES:
        if applicable(baseline, sae) or any(column not in rows.table for rows in (choose, report)
                                            for column in baseline.needs):
            continue
        scorer = fitted_scorer(baseline, sae)
        choose_scores, report_scores = scorer(choose.table), scorer(report.table)
        if np.isnan(choose_scores).any() or np.isnan(report_scores).any():
            continue
        platt = fit_combiner(choose_scores[:, None], choose.passed)
        predictions[baseline.name] = platt.predict_proba(report_scores[:, None])[:, 1]
    return predictions


def _level(name: str) -> str:
    """"program" when a predictor can tell the programs of one task apart, "task" when it sees only the problem."""
    if name == CONFIDENCE:
        return "program"
    return next((b.level for b in BASELINES if b.name == name), "task")


def _routing_check(dictionary: SteeringDictionary, trial: Projection, hidden: torch.Tensor, units: torch.Tensor,
                   held_out: np.ndarray, seed: int) -> dict[str, Any]:
    """Does P, fitted without the held-out sae tasks, route each of them to the cluster its vector is nearest, more
    often than always naming the largest cluster would? The clusters are refitted without the held-out tasks too."""
    fitted = torch.from_numpy(~held_out)
    means, labels = cluster_means(units[fitted], dictionary.n_clusters, seed)
    nearest = (units[torch.from_numpy(held_out)] @ means.T).argmax(dim=-1).numpy()
    refitted = replace(dictionary, means=means, weight=trial.weight, bias=trial.bias, input_mean=trial.input_mean,
                       input_scale=trial.input_scale)
    chosen = refitted.route(hidden[torch.from_numpy(held_out)]).weights.argmax(dim=-1).numpy()
    largest = int(np.bincount(labels, minlength=dictionary.n_clusters).argmax())
    return {"held_out_tasks": int(held_out.sum()), "routed_to_nearest_cluster": int((chosen == nearest).sum()),
            "largest_cluster_guess": int((nearest == largest).sum())}


def _other_scores(folder_3_8: Path, position: str) -> dict[str, Any]:
    """Phase 3.8's chosen score of each family at the position: validation AUROC and within-task AUROC (they are
    scores, not probabilities, so they have no Brier or ECE)."""
    families = load_json(folder_3_8 / "evaluation_results.json")["positions"].get(position, {})
    return {family: {"chosen": r["chosen"], "predicts": r["predicts"],
                     "auroc": {k: r["validation"][k] for k in ("auroc", "low", "high")},
                     "within_task_auroc": {k: r["within_task"].get(k) for k in ("auroc", "low", "high")}}
            for family, r in families.items()}
