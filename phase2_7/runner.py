"""Phase 2.7: directions from contrastive pairs (seed 003), on the sae split.

Per task, pairs of a passing and a failing program (phase2_7/pairs.py): the reference against mutants of it that
fail the tests, and the model's own passing against its own failing programs where phase 1 has both. One
teacher-forced pass over prompt + program (common/program_pass.py) reads every code position: the last token, the
mean over the program, and the mean over its last `position_k` tokens (seed 003: 6). The last prompt token is the
same on both sides of a pair, so it gives nothing here. Per code position and layer, every aggregator of
`contrastive_aggregators` (common/aggregators.py) turns the pairs into a direction from "fails" to "passes",
saved as `directions.safetensors` (source `contrastive_<aggregator>`): phase 3.8 scores them beside the others
and the registered contrastive methods steer with them in 4.5 and 4.8. Held-out pair accuracy (directions fitted
on 80% of the tasks, the share of the other tasks' pairs they order correctly) says how well each generalises
across tasks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from common.aggregators import AGGREGATORS, paired_accuracy
from common.directions import SteeringDirection, save_directions
from common.errors import PipelineError
from common.logging import get_logger
from common.phase_run import PhaseRun
from common.positions import CODE_POSITIONS
from common.program_pass import ProgramText, record_programs
from common.prompt_utils import PromptBuilder, resolve_prompt_style
from common.utils import save_json
from common_simplified.model_loader import load_model_and_tokenizer
from phase2_7.pairs import ContrastivePair, mutant_pairs, own_pairs, save_pairs
from phase2_7.plots import plot_pair_accuracy

logger = get_logger("phase2_7")

HELD_OUT_SHARE = 0.2  # of the tasks, for the held-out pair accuracy
MIN_PAIRS = 10


def run(phase: PhaseRun) -> Path:
    config = phase.config
    unknown = [name for name in config.contrastive_aggregators if name not in AGGREGATORS]
    if unknown:
        raise PipelineError(f"config key 'contrastive_aggregators' names unknown aggregators {unknown} "
                            f"(registered: {', '.join(AGGREGATORS)})")
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
    if len(pairs) < MIN_PAIRS:
        raise PipelineError(f"phase 2.7 found only {len(pairs)} contrastive pairs (< {MIN_PAIRS}): too few for a "
                            "direction")
    counts = _counts(pairs, problems, skipped)
    logger.info("contrastive pairs: %d (%s) over %d tasks", len(pairs),
                ", ".join(f"{n} {kind}" for kind, n in counts["pairs_by_kind"].items()), counts["tasks_with_pairs"])

    by_task = {str(p["task_id"]): p for p in problems.to_dict("records")}
    texts = [ProgramText(builder.build(by_task[pair.task_id]), output, by_task[pair.task_id]["entry_point"])
             for pair in pairs for output in (pair.positive_output, pair.negative_output)]
    recorded = record_programs(model, tokenizer, texts, config.layers, config.position_k, builder.adds_special_tokens)
    has_program = ~np.isnan(recorded.activations[positions[0]][config.layers[0]][:, 0].numpy())
    usable = has_program[0::2] & has_program[1::2]
    kept = [pair for pair, ok in zip(pairs, usable) if ok]
    if len(kept) < len(pairs):
        logger.warning("%d pairs left out: a side holds no program the pass could locate", len(pairs) - len(kept))
    tasks = np.array([pair.task_id for pair in kept])
    kinds = np.array([pair.kind for pair in kept])
    held_out = _held_out_tasks(tasks, config.seed)

    directions: list[SteeringDirection] = []
    accuracy: dict[str, Any] = {}
    for position in positions:
        accuracy[position] = {}
        for layer in config.layers:
            stacked = recorded.activations[position][layer]
            positive, negative = stacked[0::2][torch.from_numpy(usable)], stacked[1::2][torch.from_numpy(usable)]
            found, figures = _layer_directions(positive, negative, kinds, held_out, position, layer,
                                               config.contrastive_aggregators)
            directions += found
            accuracy[position][str(layer)] = figures

    out_dir = phase.out_dir
    pairs_path = out_dir / "datasets" / "contrastive_pairs.jsonl"
    save_pairs(pairs_path, kept)
    directions_path = out_dir / "directions.safetensors"
    save_directions(directions_path, directions)
    plot_path = out_dir / "pair_accuracy.png"
    plot_pair_accuracy(accuracy, plot_path)
    summary_path = out_dir / "phase_2_7_summary.json"
    save_json({**counts, "pairs_used": len(kept), "held_out_tasks": int(len(set(tasks[held_out]))),
               "aggregators": list(config.contrastive_aggregators), "position_k": config.position_k,
               "directions": [d.name for d in directions], "by_position": accuracy}, summary_path)
    return phase.finish([pairs_path, directions_path, plot_path, summary_path])


def _counts(pairs: list[ContrastivePair], problems: pd.DataFrame, skipped: dict[str, int]) -> dict[str, Any]:
    kinds = pd.Series([p.kind for p in pairs])
    return {"n_tasks": len(problems), "tasks_with_pairs": len({p.task_id for p in pairs}),
            "pairs_by_kind": {str(k): int(n) for k, n in kinds.value_counts().sort_index().items()},
            "mutant_pairs_skipped": skipped}


def _held_out_tasks(tasks: np.ndarray, seed: int) -> np.ndarray:
    """Rows whose task is in the held-out share: whole tasks, so no task sits on both sides."""
    unique = np.array(sorted(set(tasks)))
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(unique, max(1, round(HELD_OUT_SHARE * len(unique))), replace=False))
    return np.array([t in chosen for t in tasks])


def _layer_directions(positive: torch.Tensor, negative: torch.Tensor, kinds: np.ndarray, held_out: np.ndarray,
                      position: str, layer: int, aggregators: list[str]
                      ) -> tuple[list[SteeringDirection], dict[str, Any]]:
    """Each aggregator's direction on every pair, and its held-out pair accuracy (fitted without those tasks),
    overall and by kind of pair."""
    fit, test = torch.from_numpy(~held_out), torch.from_numpy(held_out)
    directions, figures = [], {}
    for name in aggregators:
        aggregate = AGGREGATORS[name]
        trial = aggregate(positive[fit], negative[fit])
        figures[name] = {"held_out_pair_accuracy": paired_accuracy(trial, positive[test], negative[test]),
                         "held_out_pairs": int(held_out.sum()),
                         "by_kind": {str(kind): paired_accuracy(trial, positive[test & torch.from_numpy(kinds == kind)],
                                                                negative[test & torch.from_numpy(kinds == kind)])
                                     for kind in sorted(set(kinds[held_out]))}}
        vector = aggregate(positive, negative)
        figures[name]["fit_pair_accuracy"] = paired_accuracy(vector, positive, negative)
        directions.append(SteeringDirection(f"{position}/contrastive_{name}/layer_{layer}", layer, vector,
                                            f"contrastive_{name}",
                                            {"phase": "2.7", "split": "sae", "aggregator": name,
                                             "n_pairs": len(positive),
                                             "pairs_by_kind": {str(k): int((kinds == k).sum()) for k in set(kinds)},
                                             "held_out_pair_accuracy": figures[name]["held_out_pair_accuracy"],
                                             "raw_mean_difference_norm": float((positive - negative).mean(0).norm())},
                                            position))
    if "mean_difference" in aggregators and {"mutant", "own"} <= set(kinds):
        by_kind = {kind: AGGREGATORS["mean_difference"](positive[torch.from_numpy(kinds == kind)],
                                                        negative[torch.from_numpy(kinds == kind)])
                   for kind in ("mutant", "own")}
        figures["cosine_mutant_vs_own_mean_difference"] = float(by_kind["mutant"] @ by_kind["own"])
    return directions, figures
