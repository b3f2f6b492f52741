"""Phase 3.8: which score, read at which position, predicts on new problems beyond what a sceptic already knows?

Three splits, three jobs: directions, latents and baselines are fitted on the sae split (phase 1);
every choice (which latent or layer, the F1 threshold, the best baseline, the weights that combine
a score with it) is made on the hyperparams split (phase 3.6); the validation split (phase 3.5, all
temperatures) is only reported on. Per position (common/positions.py) the score families are the
top 5 correct- and incorrect-preferring SAE latents of phase 2.5, phase 2.6's mean-difference and
paired-PCA projections, and phase 2.7's contrastive directions (one family per aggregator), one
candidate per layer. Each chosen score, and each baseline
(common/baselines.py), is reported on validation with:
- AUROC over all rows, its interval resampling tasks (the samples of one task are not independent);
- within-task AUROC: only pairs of a passing and a failing program of the same task, the test a score
  read before any code exists cannot pass (such scores get a reason instead of a number);
- over the best baseline: AUROC of a logistic model on (best baseline, score) minus that of the best
  baseline alone, with a task-bootstrap interval of the difference;
- precision / recall / F1 at the chosen threshold beside the trivial classifiers, greedy-only AUROC
  and AUROC per temperature (exploratory).
It also chooses selective steering's gates for phase 4.8 (common/gates.py), on hyperparams like everything else.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import pandas as pd
import torch

from common.baselines import BASELINES, CLEAN_STOPS, STRONGEST_DECLARED, applicable, fitted_scorer
from common.classification import (auroc, auroc_with_interval, best_f1_threshold, binary_metrics, incremental_auroc,
    within_task_auroc, within_task_difference)
from common.config import Config
from common.phase_run import PhaseRun
from common.split_tables import Split, read_split
from common.directions import load_directions
from common.errors import PipelineError
from common.gates import choose_gate, fail_oriented, flags, save_gates
from common.logging import get_logger
from common.positions import SHARED_BY_TASK, is_code_position, recorded_positions, usable_rows
from common.saes import encode_rows, load_sae
from common.utils import load_json, save_json, write_manifest
from phase3_8.plots import plot_forest, plot_roc_by_position
from phase3_8.table import markdown_table

logger = get_logger("phase3_8")

CANDIDATES_PER_CLASS = 5
AUROC_RESAMPLES = 1000
THIN_CLASS_ROWS = 10


Scorer = Callable[[Split], np.ndarray]  # one score per row of the split, NaN where the row has none


class Detector(NamedTuple):
    """A chosen score (or baseline) with its values on both splits: a candidate gate for selective steering."""
    score: str
    position: str
    predicts: str
    needs_program: bool
    hyperparams_auroc: float  # where it was chosen; NaN when the split lacks a class
    choose_scores: np.ndarray
    report_scores: np.ndarray


@dataclass(frozen=True)
class Family:
    predicts: str  # "pass" or "fail": what a high score says
    candidates: dict[str, Scorer]


def run(phase: PhaseRun) -> Path:
    config = phase.config
    spec = phase.spec
    inputs = phase.inputs
    folder = {upstream: phase.upstream(upstream) for upstream in spec.upstream}
    fit = read_split("sae", folder["1"], [("dataset_sae.parquet", "activations")])
    choose = read_split("hyperparams", folder["3.6"], [("dataset_hyperparams_temp_0_0.parquet", "activations")])
    temperatures = load_json(folder["3.5"] / "phase_3_5_summary.json")["by_temperature"]
    report = read_split("validation", folder["3.5"], [(info["table"], info["activations"])
                                                      for info in temperatures.values()])
    warnings = _class_warnings(choose, report)
    counts = {split.name: {"rows": len(split.table), "tasks": int(pd.Series(split.tasks).nunique()),
                           "passing": int(split.passed.sum()), "failing": int((~split.passed).sum()),
                           "tasks_with_both_classes": _tasks_with_both(split)} for split in (fit, choose, report)}
    logger.info("tasks with both a passing and a failing program: %s",
                ", ".join(f"{name} {c['tasks_with_both_classes']} of {c['tasks']}" for name, c in counts.items()))

    baselines, best_name = _baselines(fit, choose, report, config)
    compared = {name: baselines[name] for name in dict.fromkeys([best_name, STRONGEST_DECLARED])
                if name in baselines and "skipped" not in baselines[name]}
    best = compared.get(best_name)
    confidence = baselines.get("program_mean_logprob", {}).get("validation_scores")
    positions: dict[str, Any] = {}
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    detectors: list[Detector] = []
    for position in recorded_positions(folder["1"] / "activations"):
        families = _families(position, folder["2.0"], folder["2.5"], [folder["2.6"], folder["2.7"]])
        positions[position], curves[position] = {}, {}
        for family_name, family in families.items():
            if not family.candidates:
                continue
            result, choose_scores, validation_scores = _evaluate_family(position, family, choose, report, compared,
                                                                        best_name, confidence, config)
            positions[position][family_name] = result
            detectors.append(Detector(f"{family_name}: {result['chosen']}", position, family.predicts,
                                      is_code_position(position), result["hyperparams_auroc"], choose_scores,
                                      validation_scores))
            target = report.passed if family.predicts == "pass" else ~report.passed
            known = ~np.isnan(validation_scores)
            curves[position][f"{family_name}: {result['chosen']}"] = (validation_scores[known], target[known])
            _log(position, family_name, result)
        if best is not None:
            known = ~np.isnan(best["validation_scores"])
            curves[position][f"best baseline: {best_name}"] = (best["validation_scores"][known], report.passed[known])

    out_dir = phase.out_dir
    rows = _table_rows(baselines, best_name, positions)
    results_path, table_path = out_dir / "evaluation_results.json", out_dir / "evaluation_table.md"
    save_json({"splits": {"fit": "sae (phase 1)", "choose": "hyperparams (phase 3.6)",
                          "report": "validation (phase 3.5), every temperature"},
               "counts": counts, "best_baseline": best_name,
               "baselines": {name: {k: v for k, v in b.items() if k not in ("choose_scores", "validation_scores")}
                             for name, b in baselines.items()},
               "positions": positions, "table": rows, "warnings": warnings}, results_path)
    table_path.write_text(markdown_table(rows, best_name, counts))
    plot_paths = [out_dir / "auroc_forest.png", out_dir / "roc_curves.png"]
    plot_forest(rows, plot_paths[0])
    plot_roc_by_position(curves, plot_paths[1])
    gate_paths = _save_gates(out_dir, detectors, baselines, best_name, choose, report, config)
    return write_manifest(config, spec, inputs, [results_path, table_path, *plot_paths, *gate_paths])


def _save_gates(out_dir: Path, detectors: list[Detector], baselines: dict[str, Any], best_name: str | None,
                choose: Split, report: Split, config: Config) -> list[Path]:
    """Selective steering's gates (common/gates.py), chosen on hyperparams: the internal score with the highest
    AUROC there, and the best baseline; their flags on the validation greedy programs phase 4.8 steers."""
    greedy = report.table["temperature"].to_numpy() == 0
    candidates = []
    scored = [d for d in detectors if np.isfinite(d.hyperparams_auroc)]
    if scored:
        candidates.append(("detector", max(scored, key=lambda d: (d.hyperparams_auroc, d.score))))
    else:
        logger.warning("no score has an AUROC on hyperparams (one class, or no programs): no detector gate")
    if best_name is not None:
        best = baselines[best_name]
        candidates.append(("baseline", Detector(best_name, "-", best["predicts"], best["level"] == "program",
                                                best["hyperparams_auroc"], best["choose_scores"],
                                                best["validation_scores"])))
    gates, flagged = [], {}
    for name, d in candidates:
        gate = choose_gate(name, d.score, d.position, d.predicts, d.needs_program, d.choose_scores, ~choose.passed)
        oriented, failed = fail_oriented(d.report_scores[greedy], d.predicts), ~report.passed[greedy]
        known = ~np.isnan(oriented)
        gate = replace(gate, validation_greedy_auroc=auroc_with_interval(oriented[known], failed[known],
                                                                         AUROC_RESAMPLES, config.seed))
        gates.append(gate)
        flagged[name] = flags(d.report_scores[greedy], gate)
        logger.info("selective-steering gate %s: %s at %s (AUROC for failing: %.3f on hyperparams, where it was "
                    "chosen; %.3f on validation greedy); flags %d of %d validation greedy programs", name, d.score,
                    d.position, gate.hyperparams_auroc, gate.validation_greedy_auroc["auroc"],
                    int(flagged[name].sum()), int(greedy.sum()))
    return save_gates(out_dir, gates, report.tasks[greedy], flagged)


def _tasks_with_both(split: Split) -> int:
    flags = pd.Series(split.passed).groupby(split.tasks).agg(["any", "all"])
    return int((flags["any"] & ~flags["all"]).sum())


def _class_warnings(*splits: Split) -> list[str]:
    warnings = [f"only {n} {name} rows on the {split.name} split (< {THIN_CLASS_ROWS}): wide intervals, "
                "unstable choices" for split in splits
                for name, n in (("passing", int(split.passed.sum())), ("failing", int((~split.passed).sum())))
                if n < THIN_CLASS_ROWS]
    for warning in warnings:
        logger.warning(warning)
    return warnings


def _baselines(fit: Split, choose: Split, report: Split, config: Config) -> tuple[dict[str, Any], str | None]:
    """Every applicable baseline fitted on the sae split and reported like a score; the best by hyperparams AUROC."""
    results: dict[str, Any] = {}
    for baseline in BASELINES:
        reason = applicable(baseline, fit.table) or next(
            (f"the {split.name} table has no {column} column" for split in (choose, report) for column in baseline.needs
             if column not in split.table), None)
        if reason is not None:
            results[baseline.name] = {"level": baseline.level, "description": baseline.description, "skipped": reason}
            continue
        scorer = fitted_scorer(baseline, fit.table)
        choose_scores, report_scores = scorer(choose.table), scorer(report.table)
        results[baseline.name] = {"description": baseline.description,
                                  **_report(baseline.level, "pass", choose_scores, report_scores, choose, report,
                                            config, reference=None),
                                  "choose_scores": choose_scores, "validation_scores": report_scores}
    fitted = {name: r for name, r in results.items() if "skipped" not in r and not np.isnan(r["hyperparams_auroc"])}
    best = max(fitted, key=lambda name: (fitted[name]["hyperparams_auroc"], name)) if fitted else None
    if best:
        logger.info("best baseline on hyperparams: %s (AUROC %.3f there; validation %.3f [%.3f-%.3f])", best,
                    fitted[best]["hyperparams_auroc"], fitted[best]["validation"]["auroc"],
                    fitted[best]["validation"]["low"], fitted[best]["validation"]["high"])
    return results, best


def _families(position: str, sae_folder: Path, latent_folder: Path, direction_folders: list[Path]
              ) -> dict[str, Family]:
    """The score families at one position, each with one candidate per latent or layer: SAE latents, and one family
    per source of direction in the phases' `directions.safetensors` (2.6: mean difference, paired PCA; 2.7: the
    contrastive aggregators)."""
    families: dict[str, Family] = {}
    top_path = latent_folder / position / "top_20_features.json"
    if top_path.is_file():
        top, sources = load_json(top_path), load_json(sae_folder / "sae_sources.json")
        saes: dict[int, Any] = {}
        encoded: dict[tuple[str, int], torch.Tensor] = {}  # every candidate of a layer shares one encoding per split

        def latent_scorer(layer: int, index: int) -> Scorer:
            def score(split: Split) -> np.ndarray:
                if (split.name, layer) not in encoded:
                    saes.setdefault(layer, load_sae(sources[str(layer)]))
                    encoded[split.name, layer] = encode_rows(saes[layer],
                                                             torch.nan_to_num(split.activations(position, layer)))
                return _masked(encoded[split.name, layer][:, index].numpy(), split, position)
            return score

        for family, predicts in (("sae_correct_latent", "pass"), ("sae_incorrect_latent", "fail")):
            rows = top["correct" if predicts == "pass" else "incorrect"][:CANDIDATES_PER_CLASS]
            families[family] = Family(predicts, {f"layer_{r['layer']}/latent_{r['feature_idx']}":
                                                 latent_scorer(r["layer"], r["feature_idx"]) for r in rows})

    def projection_scorer(layer: int, vector: torch.Tensor) -> Scorer:
        return lambda split: _masked((split.activations(position, layer) @ vector).numpy(), split, position)

    missing = [folder for folder in direction_folders if not (folder / "directions.safetensors").is_file()]
    if missing:
        raise PipelineError(f"no directions.safetensors in {missing[0]}: rerun that phase")
    directions = [d for folder in direction_folders for d in load_directions(folder / "directions.safetensors")
                  if d.position == position]
    for source in dict.fromkeys(d.source for d in directions):
        families[source] = Family("pass", {d.name: projection_scorer(d.layer, d.unit().vector)
                                           for d in directions if d.source == source})
    return families


def _masked(scores: np.ndarray, split: Split, position: str) -> np.ndarray:
    """NaN for the rows without an activation at this position (no program)."""
    out = np.asarray(scores, dtype=float).copy()
    out[~usable_rows(split.table, position)] = np.nan
    return out


def _evaluate_family(position: str, family: Family, choose: Split, report: Split, compared: dict[str, Any],
                     best_name: str | None, confidence: np.ndarray | None, config: Config
                     ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Choose the family's candidate on hyperparams; report it on validation, alone, over the best baseline and
    over the strongest declared one, and within tasks against the model's own confidence."""
    target = choose.passed if family.predicts == "pass" else ~choose.passed
    choose_scores = {name: scorer(choose) for name, scorer in family.candidates.items()}
    choose_auroc = {name: _known_auroc(scores, target) for name, scores in choose_scores.items()}
    chosen = max(choose_auroc, key=lambda name: (np.nan_to_num(choose_auroc[name], nan=-1), name))
    report_scores = family.candidates[chosen](report)
    level = "program" if is_code_position(position) else "task"
    result = {"chosen": chosen, "chosen_on": "hyperparams split (phase 3.6), by AUROC",
              "hyperparams_auroc_by_candidate": choose_auroc,
              **_report(level, family.predicts, choose_scores[chosen], report_scores, choose, report, config,
                        reference=confidence)}
    for name, baseline in compared.items():
        key = "over_best_baseline" if name == best_name else f"over_{name}"
        result[key] = {"baseline": name, **_over_baseline(baseline, choose_scores[chosen], report_scores, choose,
                                                          report, config)}
    return result, choose_scores[chosen], report_scores


def _known_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    known = ~np.isnan(scores)
    return auroc(scores[known], positive[known])


def _report(level: str, predicts: str, choose_scores: np.ndarray, report_scores: np.ndarray, choose: Split,
            report: Split, config: Config, reference: np.ndarray | None) -> dict[str, Any]:
    """A score's figures: AUROC on hyperparams (where it was chosen) and on validation, with intervals. Within tasks
    (program-level scores only): over every pair, over pairs of programs the model ended itself (no stop rule or
    budget cut), and the difference from `reference` (the model's mean log-probability) on the same pairs."""
    choose_target = choose.passed if predicts == "pass" else ~choose.passed
    target = report.passed if predicts == "pass" else ~report.passed
    known_choose, known = ~np.isnan(choose_scores), ~np.isnan(report_scores)
    scores, positive, tasks = report_scores[known], target[known], report.tasks[known]
    temperature = report.table["temperature"].to_numpy()[known]
    threshold = best_f1_threshold(choose_scores[known_choose], choose_target[known_choose]) if known_choose.any() else 0.0
    by_temperature = {f"{t:g}": auroc_with_interval(scores[temperature == t], positive[temperature == t],
                                                    AUROC_RESAMPLES, config.seed, groups=tasks[temperature == t])
                      for t in sorted(set(temperature))}
    result = {"predicts": predicts, "level": level, "hyperparams_auroc": _known_auroc(choose_scores, choose_target),
              "validation": {**auroc_with_interval(scores, positive, AUROC_RESAMPLES, config.seed, groups=tasks),
                             "rows_without_score": int((~known).sum())},
              "validation_at_threshold": binary_metrics(scores, positive, threshold),
              "validation_greedy": by_temperature.get("0"), "validation_auroc_by_temperature": by_temperature}
    if level != "program":
        return {**result, "within_task": {"auroc": None, "reason": SHARED_BY_TASK}}
    clean = report.table["stop_reason"].isin(CLEAN_STOPS).to_numpy()[known] if "stop_reason" in report.table else None
    result["within_task"] = within_task_auroc(scores, positive, tasks, AUROC_RESAMPLES, config.seed)
    if clean is not None:
        result["within_task_ended_itself"] = within_task_auroc(scores[clean], positive[clean], tasks[clean],
                                                               AUROC_RESAMPLES, config.seed)
    if reference is not None:
        both = ~np.isnan(reference[known])
        oriented = reference[known] if predicts == "pass" else -reference[known]
        result["within_task_over_logprob"] = within_task_difference(scores[both], oriented[both], positive[both],
                                                                    tasks[both], AUROC_RESAMPLES, config.seed)
    return result


def _over_baseline(best: dict[str, Any], choose_scores: np.ndarray, report_scores: np.ndarray, choose: Split,
                   report: Split, config: Config) -> dict[str, Any]:
    """Incremental AUROC of the score over the best baseline: combined on hyperparams, compared on validation."""
    base_choose, base_report = best["choose_scores"], best["validation_scores"]
    fit_rows = ~np.isnan(choose_scores) & ~np.isnan(base_choose)
    eval_rows = ~np.isnan(report_scores) & ~np.isnan(base_report)
    return {"combined_on": "hyperparams split (phase 3.6)", "n_rows": int(eval_rows.sum()),
            **incremental_auroc(base_choose[fit_rows], choose_scores[fit_rows], choose.passed[fit_rows],
                                base_report[eval_rows], report_scores[eval_rows], report.passed[eval_rows],
                                report.tasks[eval_rows], AUROC_RESAMPLES, config.seed)}


def _log(position: str, family: str, result: dict[str, Any]) -> None:
    v, w = result["validation"], result["within_task"]
    within = f"{w['auroc']:.3f} [{w['low']:.3f}-{w['high']:.3f}]" if w.get("low") is not None else "n/a"
    over = result.get("over_best_baseline", {})
    logger.info("%s %s (%s, predicts %s): validation AUROC %.3f [%.3f-%.3f], within tasks %s, over the best "
                "baseline %+.3f [%+.3f, %+.3f]", position, family, result["chosen"], result["predicts"], v["auroc"],
                v["low"], v["high"], within, over.get("difference", np.nan), over.get("low", np.nan),
                over.get("high", np.nan))


def _table_rows(baselines: dict[str, Any], best_name: str | None, positions: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per baseline and per (position, family): the validation figures a reader compares."""
    rows = []
    for name, b in baselines.items():
        if "skipped" in b:
            continue
        rows.append({"kind": "baseline", "position": "-", "score": name, "predicts": b["predicts"],
                     "validation": b["validation"], "within_task": b["within_task"],
                     "within_task_ended_itself": b.get("within_task_ended_itself"),
                     "within_task_over_logprob": None, "over_best_baseline": None, "over_declared": None,
                     "is_best_baseline": name == best_name})
    for position, families in positions.items():
        for family, r in families.items():
            rows.append({"kind": "score", "position": position, "score": f"{family}: {r['chosen']}",
                         "predicts": r["predicts"], "validation": r["validation"], "within_task": r["within_task"],
                         "within_task_ended_itself": r.get("within_task_ended_itself"),
                         "within_task_over_logprob": r.get("within_task_over_logprob"),
                         "over_best_baseline": r.get("over_best_baseline"),
                         "over_declared": r.get(f"over_{STRONGEST_DECLARED}", r.get("over_best_baseline")),
                         "is_best_baseline": False})
    return rows
