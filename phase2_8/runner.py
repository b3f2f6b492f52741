"""Phase 2.8: KV-cache steering vectors (seed 002) from phase 2.7's contrastive pairs, in the seed's layout.

For each kind of pair in `kv_pair_kinds` (mutant: reference against a failing mutant; own: the model's passing
against its failing program), the keys and values the KV cache holds at each side's last program token, read by one
teacher-forced pass per distinct text (common/program_pass.py). Per layer of `kv_layers` (default: seed 002's band,
layers 8-15 of a 28-layer model, scaled to this model's depth), the vector is the mean over pairs of (passing side
minus failing side), or with `kv_aggregation: kmeans` the mean of the largest of `kv_clusters` k-means clusters of
the pairs' value differences (an option the public implementation offers). It is saved as a `kv_cache`
intervention holding the raw mean deltas at alpha 1 (values only unless `kv_key_weight` is set: seed 002's usual
best) in the layout of common/kv_vectors.py; the registered `kv_cache_<kind>` methods steer with its unit edit in
4.5 and 4.8.

How far it generalises, per layer, for keys and values: refitted without phase 2.7's held-out fifth of the tasks,
the share of held-out pairs whose difference projects positively on it (task-bootstrap intervals; 0.5 is chance),
and the same on `equivalent` pairs (both sides pass), where a vector about correctness should sit near 0.5.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from common.aggregators import pair_ordered
from common.contrastive_pairs import ContrastivePair, held_out_tasks, load_pairs, pair_accuracy, pair_texts
from common.interventions import KVCacheEdit
from common.kv_vectors import extract_deltas, kv_layers, save_vector
from common.logging import get_logger
from common.phase_run import PhaseRun
from common.program_pass import record_last_keys_values
from common.prompt_utils import PromptBuilder, resolve_prompt_style
from common.utils import save_json
from common_simplified.model_loader import load_model_and_tokenizer
from phase2_8.plots import plot_held_out

logger = get_logger("phase2_8")

MIN_PAIRS = 10  # of a kind outside the held-out tasks, to extract its vector


def run(phase: PhaseRun) -> Path:
    config = phase.config
    pairs = load_pairs(phase.upstream("2.7") / "datasets" / "contrastive_pairs.jsonl")
    problems = pd.read_parquet(phase.upstream("0.1") / "sae.parquet")
    model, tokenizer = load_model_and_tokenizer(config.model_name, config.device, config.dtype)
    builder = PromptBuilder(resolve_prompt_style(config.prompt_style, tokenizer), tokenizer)
    layers = kv_layers(config, model)
    tasks = np.array([p.task_id for p in pairs], dtype=object)
    held_out = held_out_tasks(tasks, config.seed) if len(set(tasks)) > 1 else np.zeros(len(pairs), dtype=bool)
    positive, negative, usable = _read_pairs(model, tokenizer, builder, problems, pairs, layers)
    kinds = np.array([p.kind for p in pairs], dtype=object)

    out_dir = phase.out_dir
    outputs, summary = [], {"layers": layers, "aggregation": config.kv_aggregation, "key_weight": config.kv_key_weight,
                            "n_pairs_unreadable": int((~usable).sum()), "vectors": {}, "skipped": {}}
    for kind in config.kv_pair_kinds:
        every = usable & (kinds == kind)
        fit = every & ~held_out
        if fit.sum() < MIN_PAIRS:
            reason = f"{int(fit.sum())} {kind} pairs outside the held-out tasks (needs {MIN_PAIRS})"
            logger.warning("phase 2.8: no kv_%s vector (%s)", kind, reason)
            summary["skipped"][kind] = reason
            continue
        key_delta, value_delta, clusters = extract_deltas(positive, negative, every, config.kv_aggregation,
                                                             config.kv_clusters, config.seed)
        refit_key, refit_value, _ = extract_deltas(positive, negative, fit, config.kv_aggregation,
                                                   config.kv_clusters, config.seed)
        checks = {side: _held_out(refit, positive[side], negative[side], held_out & usable, kinds, tasks, layers,
                                  config.seed) for side, refit in (("keys", refit_key), ("values", refit_value))}
        edit = KVCacheEdit(f"kv_{kind}", tuple(layers), key_delta, value_delta, 1.0, config.kv_key_weight, 1.0,
                           {"source": f"kv_cache_{kind}", "phase": "2.8", "pairs": kind, "n_pairs": int(every.sum())})
        metadata = {"pairs": kind, "n_pairs": int(every.sum()), "n_tasks": len(set(tasks[every])),
                    "aggregation": config.kv_aggregation, "clusters": clusters,
                    "key_delta_norms": key_delta.flatten(1).norm(dim=1).tolist(),
                    "value_delta_norms": value_delta.flatten(1).norm(dim=1).tolist(),
                    "value_consistency": _consistency(positive["values"][every] - negative["values"][every]),
                    "held_out": checks, "model": config.model_name, "read_at": "code_last (the program's last token)"}
        template = {"positive": "a program that passes the task's tests" + (
                        " (the task's reference)" if kind == "mutant" else " (the model's own)"),
                    "negative": "a failing " + ("single-point mutant of the reference" if kind == "mutant"
                                                else "program the model wrote for the same task"),
                    "prompt_style": builder.style, "example_prompt": builder.build(problems.iloc[0].to_dict())}
        outputs += save_vector(out_dir, edit, [asdict(p) for p, keep in zip(pairs, every) if keep], metadata, template)
        summary["vectors"][edit.name] = metadata
        values = checks["values"]["by_layer"]
        logger.info("kv_%s: %d pairs; held-out %s pairs ordered by values at layers %s: %s", kind, int(every.sum()),
                    kind, layers, ", ".join(f"{values[str(layer)].get(kind, {}).get('accuracy', float('nan')):.2f}"
                                            for layer in layers))
    plot_path = out_dir / "held_out_ordering.png"
    plot_path.unlink(missing_ok=True)  # a figure of an earlier run must not outlive it
    if summary["vectors"]:
        plot_held_out(summary["vectors"], plot_path)
        outputs.append(plot_path)
    summary_path = out_dir / "phase_2_8_summary.json"
    save_json(summary, summary_path)
    return phase.finish([*outputs, summary_path])


def _read_pairs(model, tokenizer, builder: PromptBuilder, problems: pd.DataFrame, pairs: list[ContrastivePair],
                layers: list[int]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], np.ndarray]:
    """Per side ("keys", "values"): [n_pairs, layers, kv_heads, head_dim] of the passing and the failing sides, and
    the mask of pairs whose both sides were read. Each distinct text once: a reference recurs in its task's pairs."""
    texts, rows = pair_texts(pairs, problems, builder)  # no pairs: empty arrays all the way through
    keys, values, read = record_last_keys_values(model, tokenizer, texts, layers, builder.adds_special_tokens)
    take = [torch.from_numpy(rows[:, side]) for side in (0, 1)]
    positive, negative = ({"keys": keys[rows_of_side], "values": values[rows_of_side]} for rows_of_side in take)
    return positive, negative, read[rows].all(1)


def _held_out(refit: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, held_out: np.ndarray,
              kinds: np.ndarray, tasks: np.ndarray, layers: list[int], seed: int) -> dict[str, Any]:
    """Per layer and kind of held-out pair: the share whose difference projects positively on the refitted delta."""
    by_layer = {}
    for j, layer in enumerate(layers):
        ordered = pair_ordered(refit[j].flatten(), positive[:, j].flatten(1), negative[:, j].flatten(1))
        by_layer[str(layer)] = {kind: pair_accuracy(ordered[held_out & (kinds == kind)],
                                                    tasks[held_out & (kinds == kind)], seed)
                                for kind in sorted(set(kinds[held_out]))}
    return {"by_layer": by_layer}


def _consistency(differences: torch.Tensor) -> list[float]:
    """Per layer: the mean difference's norm over the pairs' mean norm (1: every pair moves the same way; near 0:
    they cancel, and the mean is mostly noise)."""
    flat = differences.double().flatten(2)
    return (flat.mean(0).norm(dim=-1) / flat.norm(dim=-1).mean(0).clamp_min(1e-12)).tolist()
