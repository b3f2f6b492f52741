"""Phase 2.7: directions from contrastive pairs (seed 003), on the sae split.

Per task, pairs of a passing and a failing program (phase2_7/pairs.py): the reference against mutants of it that
fail the tests (`mutant`: minimal pairs), and the model's own passing against its own failing programs where phase 1
has both (`own`); `equivalent` pairs (reference against a mutant that still passes) are a control, never fitted
on. One teacher-forced pass (common/program_pass.py) reads every code position: the last token, the mean over the
program, and the mean over its last `position_k` tokens (seed 003: 6). The last prompt token is the same on both
sides of a pair, so it gives nothing here.

Per code position, layer and fitted kind (mutant, own: they point different ways, and pooled the own pairs, with
their larger differences, would dominate), every aggregator of `contrastive_aggregators` (common/aggregators.py)
gives a direction from "fails" to "passes", saved as `directions.safetensors` (source
`contrastive_<kind>_<aggregator>`) and as unit residual additions in `interventions.safetensors`; phase 3.8 scores
them beside the others, and the registered contrastive methods steer with them in 4.5 and 4.8.

How far each generalises: refitted without a held-out fifth of the tasks, the share of those tasks' pairs it orders
correctly, for each kind (task-bootstrap intervals), beside what the model's own mean log-probability and the
programs' lengths order; on `equivalent` pairs a direction about correctness should be near 0.5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from common.aggregators import AGGREGATORS, NoDirection, ordering, pair_ordered
from common.contrastive_pairs import ContrastivePair, held_out_tasks, pair_accuracy, pair_texts, save_pairs
from common.directions import SteeringDirection, save_directions
from common.errors import PipelineError
from common.interventions import ResidualAddition, save_interventions
from common.logging import get_logger
from common.phase_run import PhaseRun
from common.positions import CODE_POSITIONS
from common.program_pass import record_programs
from common.prompt_utils import PromptBuilder, resolve_prompt_style
from common.utils import save_json
from common_simplified.model_loader import load_model_and_tokenizer
from phase2_7.pairs import mutant_pairs, own_pairs
from phase2_7.plots import plot_pair_accuracy

logger = get_logger("phase2_7")

FITTED_KINDS = ("mutant", "own")
MIN_PAIRS = 10  # of a kind, to fit its directions


def run(phase: PhaseRun) -> Path:
    config = phase.config
    positions = [p for p in config.activation_positions if p in CODE_POSITIONS]
    if not positions:
        raise PipelineError("phase 2.7 reads code positions, and activation_positions has none of "
                            f"{', '.join(CODE_POSITIONS)}")
    problems = pd.read_parquet(phase.upstream("0.1") / "sae.parquet")
    own_programs = pd.read_parquet(phase.upstream("1") / "dataset_sae.parquet")
    model, tokenizer = load_model_and_tokenizer(config.model_name, config.device, config.dtype)
    builder = PromptBuilder(resolve_prompt_style(config.prompt_style, tokenizer), tokenizer)

    pairs, skipped = mutant_pairs(problems, builder, config.contrastive_mutants_per_task, config.seed,
                                  config.exec_timeout)
    pairs += own_pairs(own_programs, problems, builder, config.contrastive_own_pairs_per_task, config.seed)
    kept, recorded = (_recorded_pairs(model, tokenizer, builder, problems, pairs, config) if pairs
                      else ([], {"activations": {}, "columns": {}}))
    tasks = np.array([pair.task_id for pair in kept], dtype=object)
    kinds = np.array([pair.kind for pair in kept], dtype=object)
    held_out = held_out_tasks(tasks, config.seed) if len(set(tasks)) > 1 else np.zeros(len(kept), dtype=bool)
    fitted_kinds = [k for k in FITTED_KINDS if held_out.any() and (~held_out & (kinds == k)).sum() >= MIN_PAIRS]
    no_direction_reason = None
    if not fitted_kinds:  # a dataset without reference code, or too small: the other phases go on without these
        no_direction_reason = (f"{len(kept)} usable pairs over {len(set(tasks))} tasks: a direction needs two tasks "
                               f"or more, and {MIN_PAIRS} pairs of one kind outside the held-out tasks")
        logger.warning("phase 2.7: no direction (%s)", no_direction_reason)
    counts = _counts(kept, problems, skipped, held_out)
    logger.info("contrastive pairs: %s over %d tasks; fitted kinds: %s", ", ".join(
        f"{n} {kind}" for kind, n in counts["pairs_by_kind"].items()), counts["tasks_with_pairs"],
        ", ".join(fitted_kinds))
    error_types = np.array([str(pair.provenance.get("negative_error_type")) for pair in kept])
    baselines = _baselines(recorded["columns"], kinds, tasks, held_out, config.seed) if fitted_kinds else {}

    directions: list[SteeringDirection] = []
    accuracy: dict[str, Any] = {}
    skipped_aggregators: list[dict[str, Any]] = []
    if fitted_kinds:
        for position in positions:
            accuracy[position] = {}
            for layer in config.layers:
                positive, negative = recorded["activations"][position][layer]
                found, figures = _layer_directions(positive, negative, tasks, kinds, error_types, held_out,
                                                   position, layer, fitted_kinds, config.contrastive_aggregators,
                                                   config.seed, skipped_aggregators)
                directions += found
                accuracy[position][str(layer)] = figures

    out_dir = phase.out_dir
    pairs_path = out_dir / "datasets" / "contrastive_pairs.jsonl"
    save_pairs(pairs_path, kept)
    directions_path, interventions_path = out_dir / "directions.safetensors", out_dir / "interventions.safetensors"
    save_directions(directions_path, directions)
    save_interventions(interventions_path, [ResidualAddition(d, 1.0, "all") for d in directions])
    plot_path = out_dir / "pair_accuracy.png"
    plot_path.unlink(missing_ok=True)  # a figure of an earlier run must not outlive it
    plot_paths = [plot_path] if directions else []
    for path in plot_paths:
        plot_pair_accuracy(accuracy, baselines, path)
    summary_path = out_dir / "phase_2_7_summary.json"
    save_json({**counts, "fitted_kinds": fitted_kinds, "aggregators": list(config.contrastive_aggregators),
               "position_k": config.position_k, "no_direction_reason": no_direction_reason,
               "skipped_aggregators": skipped_aggregators, "baselines": baselines,
               "directions": [d.name for d in directions], "by_position": accuracy}, summary_path)
    return phase.finish([pairs_path, directions_path, interventions_path, *plot_paths, summary_path])


def _recorded_pairs(model, tokenizer, builder: PromptBuilder, problems: pd.DataFrame, pairs: list[ContrastivePair],
                    config) -> tuple[list[ContrastivePair], dict[str, Any]]:
    """The pairs whose both sides hold a program the pass can locate, and per position and layer their (positive,
    negative) activations, plus per side the pass's columns (mean log-probability, program tokens). Each distinct
    text is read once: a reference recurs in every pair of its task."""
    texts, rows = pair_texts(pairs, problems, builder)
    recorded = record_programs(model, tokenizer, texts, config.layers, config.position_k, builder.adds_special_tokens)
    located = np.array([error is None for error in recorded.columns["program_error"]])
    usable = located[rows].all(1)
    if not usable.all():
        logger.warning("%d pairs left out: a side holds no program the pass could locate", int((~usable).sum()))
    rows = rows[usable]
    columns = {name: np.asarray([np.nan if v is None else v for v in values], dtype=float)[rows]
               for name, values in recorded.columns.items() if name in ("program_mean_logprob", "program_tokens")}
    activations = {position: {layer: (stacked[torch.from_numpy(rows[:, 0])], stacked[torch.from_numpy(rows[:, 1])])
                              for layer, stacked in by_layer.items()}
                   for position, by_layer in recorded.activations.items()}
    return [pair for pair, ok in zip(pairs, usable) if ok], {"activations": activations, "columns": columns}


def _counts(pairs: list[ContrastivePair], problems: pd.DataFrame, skipped: dict[str, int], held_out: np.ndarray
            ) -> dict[str, Any]:
    kinds = pd.Series([p.kind for p in pairs])
    held_out_kinds = kinds[held_out].value_counts().sort_index()
    return {"n_tasks": len(problems), "tasks_with_pairs": len({p.task_id for p in pairs}),
            "pairs_by_kind": {str(k): int(n) for k, n in kinds.value_counts().sort_index().items()},
            "held_out": {"tasks": len({p.task_id for p, h in zip(pairs, held_out) if h}),
                         "pairs_by_kind": {str(k): int(n) for k, n in held_out_kinds.items()}},
            "mutant_pairs_skipped": skipped}


def _baselines(columns: dict[str, np.ndarray], kinds: np.ndarray, tasks: np.ndarray, held_out: np.ndarray,
               seed: int) -> dict[str, Any]:
    """What orders the held-out pairs without any activation: the model's mean log-probability of each side
    (higher passes), and the programs' lengths in tokens (the sign, shorter or longer passes, set on the fitted
    pairs of the kind). A tie counts half: most mutants are as long as their reference."""
    logprob, length = columns["program_mean_logprob"], columns["program_tokens"]
    out: dict[str, Any] = {}
    for kind in sorted(set(kinds[held_out])):
        test = held_out & (kinds == kind)
        fit = ~held_out & (kinds == kind)
        shorter_passes = (bool((length[fit, 0] < length[fit, 1]).mean() >= (length[fit, 0] > length[fit, 1]).mean())
                          if fit.any() else None)
        sign = 1.0 if shorter_passes is False else -1.0  # with no fitted pairs of the kind: shorter passes
        out[kind] = {"mean_logprob": pair_accuracy(ordering(logprob[test, 0], logprob[test, 1]), tasks[test], seed),
                     "length": {**pair_accuracy(ordering(sign * length[test, 0], sign * length[test, 1]), tasks[test],
                                            seed), "shorter_passes": shorter_passes}}
    return out


def _layer_directions(positive: torch.Tensor, negative: torch.Tensor, tasks: np.ndarray, kinds: np.ndarray,
                      error_types: np.ndarray, held_out: np.ndarray, position: str, layer: int,
                      fitted_kinds: list[str], aggregators: list[str], seed: int, skipped: list[dict[str, Any]]
                      ) -> tuple[list[SteeringDirection], dict[str, Any]]:
    """Per fitted kind and aggregator: the direction from all pairs of that kind, and the held-out accuracy of the
    one refitted without the held-out tasks, on every kind of held-out pair (own pairs also split by how the failing
    side fails: an assertion, or a crash, syntax or name error)."""
    directions, by_direction = [], {}
    own_test = held_out & (kinds == "own")
    for kind in fitted_kinds:
        fit, every = torch.from_numpy(~held_out & (kinds == kind)), torch.from_numpy(kinds == kind)
        for name in aggregators:
            aggregate = AGGREGATORS[name]
            try:
                trial, vector = aggregate(positive[fit], negative[fit]), aggregate(positive[every], negative[every])
            except NoDirection as exc:  # e.g. a probe whose weights all vanish
                logger.warning("%s layer %d, %s pairs, %s: %s", position, layer, kind, name, exc)
                skipped.append({"position": position, "layer": layer, "pairs": kind, "aggregator": name,
                                "reason": str(exc)})
                continue
            ordered = pair_ordered(trial, positive, negative)
            result = {"held_out": {k: pair_accuracy(ordered[held_out & (kinds == k)], tasks[held_out & (kinds == k)],
                                                    seed) for k in sorted(set(kinds[held_out]))}}
            if own_test.any():
                assertion = own_test & (error_types == "assertion")
                result["held_out_own_by_failure"] = {
                    "assertion": pair_accuracy(ordered[assertion], tasks[assertion], seed),
                    "other": pair_accuracy(ordered[own_test & ~assertion], tasks[own_test & ~assertion], seed)}
            result["fit_pair_accuracy"] = float(pair_ordered(vector, positive[every], negative[every]).mean())
            by_direction[f"{kind}/{name}"] = result
            directions.append(SteeringDirection(
                f"{position}/contrastive_{kind}_{name}/layer_{layer}", layer, vector, f"contrastive_{kind}_{name}",
                {"phase": "2.7", "split": "sae", "pairs": kind, "aggregator": name, "n_pairs": int(every.sum()),
                 "held_out_pair_accuracy_of_refit": result["held_out"].get(kind, {}).get("accuracy"),
                 "raw_mean_difference_norm": float((positive[every] - negative[every]).mean(0).norm())}, position))
    figures: dict[str, Any] = {"directions": by_direction}
    if {"mutant/mean_difference", "own/mean_difference"} <= set(by_direction):
        by_kind = {kind: AGGREGATORS["mean_difference"](positive[torch.from_numpy(kinds == kind)],
                                                        negative[torch.from_numpy(kinds == kind)])
                   for kind in ("mutant", "own")}
        figures["cosine_mutant_vs_own_mean_difference"] = float(by_kind["mutant"] @ by_kind["own"])
    return directions, figures
