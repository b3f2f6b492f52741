"""Phase 2.9: seed 004's SVD-rotation adapter (InnerPiSSA) and its LoRA baseline, trained on phase 2.7's pairs.

On the chosen modules of the chosen layers (default: the attention's q and v and the MLP's gate and up projections at
1/2 and 2/3 of the depth) the adapter rotates the top-r singular vectors and rescales the singular values by an
amount its coefficient c sets (common/svd_adapter.py); the LoRA baseline (PEFT) adapts the same modules with the
same rank. Both are trained with seed 004's objective (phase2_9/training.py) on the pairs of `adapter_pair_kinds`
outside phase 2.7's held-out fifth of the tasks (drawn over all its pairs, as 2.7 draws it), `adapter_max_steps`
steps each (`adapter_time_budget_s` is a guard). The control is an SVD adapter with random generators of the trained
one's norms: one control, so what it shows is descriptive.

Written: the three adapters as interventions at c = 1 (`adapters.safetensors`, loadable by kind), each one's
separation of the held-out pairs at c = -1, 0, 1 (the spread sep(+1) - sep(-1) with a task-bootstrap interval) and
the rise of their NLL, the training curves and wall times.
Phase 4.9 measures what they do to generated code.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, ContextManager

import numpy as np
import pandas as pd
import torch

from common.config import Config
from common.contrastive_pairs import ContrastivePair, held_out_tasks, load_pairs, pair_texts
from common.errors import PipelineError
from common.hooks import decoder_layers
from common.interventions import save_interventions
from common.logging import get_logger
from common.phase_run import PhaseRun
from common.prompt_utils import PromptBuilder, resolve_prompt_style
from common.svd_adapter import linear_at
from common.utils import save_json
from common_simplified.model_loader import load_model_and_tokenizer
from phase2_9.plots import plot_training
from phase2_9.trainables import LoRATrainable, SVDTrainable, same_norm_random
from phase2_9.training import AdapterTraining, held_out, held_out_summary, reference, sides, train

logger = get_logger("phase2_9")

MIN_PAIRS = 10  # to train on
REFERENCE_PAIRS = 128  # of the training pairs, whose unadapted states give the frozen direction


def run(phase: PhaseRun) -> Path:
    config = phase.config
    pairs, fit, test = split_pairs(load_pairs(phase.upstream("2.7") / "datasets" / "contrastive_pairs.jsonl"), config)
    tasks = np.array([p.task_id for p in pairs], dtype=object)
    problems = pd.read_parquet(phase.upstream("0.1") / "sae.parquet")
    model, tokenizer = load_model_and_tokenizer(config.model_name, config.device, config.dtype)
    model.requires_grad_(False)
    builder = PromptBuilder(resolve_prompt_style(config.prompt_style, tokenizer), tokenizer)
    texts, rows = pair_texts(pairs, problems, builder) if pairs else ([], np.empty((0, 2), dtype=int))
    all_sides = sides(tokenizer, texts, builder.adds_special_tokens)
    readable = np.array([all(len(all_sides[i].program) for i in row) for row in rows], dtype=bool)
    fit, test = fit[readable[fit]], test[readable[test]]
    out_dir = phase.out_dir
    adapters_path, plot_path, summary_path = (out_dir / "adapters.safetensors", out_dir / "training.png",
                                              out_dir / "phase_2_9_summary.json")
    if len(fit) < MIN_PAIRS or not len(test):  # a dataset without enough pairs: phase 4.9 says so when it runs
        reason = (f"{len(fit)} usable {'/'.join(config.adapter_pair_kinds)} pairs outside phase 2.7's held-out tasks "
                  f"and {len(test)} inside: training needs {MIN_PAIRS} and 1")
        logger.warning("phase 2.9: no adapter (%s)", reason)
        save_interventions(adapters_path, [])
        plot_path.unlink(missing_ok=True)
        save_json({"no_adapter_reason": reason, "adapters": {}}, summary_path)
        return phase.finish([adapters_path, summary_path])
    sites = adapter_sites(config, model)
    training = training_config(config, model, sites)
    logger.info("training on %d pairs (%d tasks), held out %d pairs; %d modules: %s; loss at layer %d", len(fit),
                len(set(tasks[fit])), len(test), len(sites), ", ".join(f"{l}.{p}" for l, p in sites),
                training.loss_layer)

    some_fit = _capped(fit, REFERENCE_PAIRS, np.random.default_rng(config.seed + 1))
    direction, scale = reference(model, rows[some_fit], all_sides, training)
    provenance = {"phase": "2.9", "split": "sae", "model_name": config.model_name,
                  "pair_kinds": list(config.adapter_pair_kinds), "n_pairs": len(fit), "rank": config.adapter_rank,
                  "loss_layer": training.loss_layer}
    unadapted = held_out(model, contextlib.nullcontext(), rows[test], all_sides, direction, scale, training)

    def measured(applied_at: Callable[[float], ContextManager[None]]) -> dict[str, Any]:
        at = {c: held_out(model, applied_at(c), rows[test], all_sides, direction, scale, training) for c in (-1., 1.)}
        return held_out_summary({0.0: unadapted, **at}, tasks[test], config.seed)

    svd = SVDTrainable(model, sites, config.adapter_rank, config.adapter_rotate_u, config.seed)
    log = train(model, svd, rows[fit], all_sides, direction, scale, training, "training the SVD adapter")
    trained = svd.export("adapter/svd_rotation", {**provenance, "source": "svd_rotation_adapter"})
    control = same_norm_random(trained, "adapter/random_same_norm", config.seed + 1)
    results = {"svd_rotation": _result(log, measured(svd.applied)),
               "random_same_norm": {"held_out": measured(lambda c: control.at(c).prefill_applied(model))}}
    lora = LoRATrainable(model, sites, config.adapter_rank, config.seed)
    try:
        log = train(model, lora, rows[fit], all_sides, direction, scale, training, "training the LoRA baseline")
        baseline = lora.export("adapter/lora", {**provenance, "source": "low_rank_adapter"})
        results["lora"] = _result(log, measured(lora.applied))
    finally:
        lora.close()
    adapters = {"svd_rotation": trained, "random_same_norm": control, "lora": baseline}

    save_interventions(adapters_path, list(adapters.values()))
    plot_training(results, plot_path)
    for name, adapter in adapters.items():
        results[name]["label"] = adapter.label
    save_json({"no_adapter_reason": None, "training": asdict(training), "sites": [f"{l}.{p}" for l, p in sites],
               "pairs": {"fit": len(fit), "fit_tasks": len(set(tasks[fit])), "held_out": len(test),
                         "held_out_tasks": len(set(tasks[test]))},
               "reference_separation_rms": scale, "adapters": results}, summary_path)
    return phase.finish([adapters_path, plot_path, summary_path])


def split_pairs(every_pair: list[ContrastivePair], config: Config
                ) -> tuple[list[ContrastivePair], np.ndarray, np.ndarray]:
    """The pairs of `adapter_pair_kinds`, and the indices among them to train on and to hold out: phase 2.7's
    held-out tasks, drawn over all of its pairs as 2.7 draws them, so no adapter trains on a task 2.7 held out."""
    every_task = np.array([p.task_id for p in every_pair], dtype=object)
    held_out = (held_out_tasks(every_task, config.seed) if len(set(every_task)) > 1
                else np.zeros(len(every_pair), dtype=bool))
    kept = [i for i, p in enumerate(every_pair) if p.kind in config.adapter_pair_kinds]
    rng = np.random.default_rng(config.seed)
    return ([every_pair[i] for i in kept], _capped(np.flatnonzero(~held_out[kept]), config.adapter_max_pairs, rng),
            _capped(np.flatnonzero(held_out[kept]), config.adapter_held_out_pairs, rng))


def _capped(indices: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(indices, cap, replace=False)) if len(indices) > cap else indices


def _result(log, held_out: dict[str, Any]) -> dict[str, Any]:
    return {"training_s": round(log.wall_s, 1), "steps": len(log.steps), "stopped_by": log.stopped_by,
            "curve": log.steps, "held_out": held_out}


def adapter_sites(config: Config, model: torch.nn.Module) -> list[tuple[int, str]]:
    """Every module of `adapter_modules` in every layer of `adapter_layers` (default: 1/2 and 2/3 of the depth)."""
    n_layers = len(decoder_layers(model))
    layers = config.adapter_layers or sorted({n_layers // 2, (2 * n_layers) // 3})
    if max(layers) >= n_layers:
        raise PipelineError(f"adapter_layers {layers}: the model has {n_layers} layers")
    sites = [(layer, path) for layer in layers for path in config.adapter_modules]
    for layer, path in sites:
        try:
            linear_at(model, layer, path)
        except (AttributeError, ValueError) as exc:
            raise PipelineError(f"adapter_modules: layer {layer} has no linear module {path!r} ({exc})") from None
    return sites


def training_config(config: Config, model: torch.nn.Module, sites: list[tuple[int, str]]) -> AdapterTraining:
    n_layers = len(decoder_layers(model))
    loss_layer = config.adapter_loss_layer if config.adapter_loss_layer is not None else (5 * n_layers) // 6
    highest = max(layer for layer, _ in sites)
    if not highest <= loss_layer < n_layers:
        raise PipelineError(f"adapter_loss_layer {loss_layer}: expected a layer from the highest adapted one "
                            f"({highest}) to {n_layers - 1}")
    return AdapterTraining(loss_layer, config.position_k, config.adapter_coherence_nats,
                           config.adapter_coherence_weight, config.adapter_lr, config.adapter_batch_pairs,
                           config.adapter_max_steps, config.adapter_time_budget_s, config.seed)
