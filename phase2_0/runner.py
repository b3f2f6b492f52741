"""Phase 2.0: one SAE per configured layer, and how good each is on held-out code.

With `sae_source=train` (the default: no SAEs are published for the default model) it trains a
TopK SAE per layer with sae-lens on the local code corpus (standard-library source plus the
phase 1 prompts, so the SAE has seen the chat template the analysed activations come from) and
saves it in sae-lens format as `sae_layer_{L}/`. With a release or a directory it loads those
SAEs instead. Either way it measures, on held-out standard-library windows: fraction of variance
unexplained (FVU), mean L0, dead-latent fraction, ΔCE, and the FVU on phase 1's own analysed
activations; and it writes each latent's firing frequency on held-out code, which phase 2.5 uses
to drop latents that fire on everything.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import save_file

from common.activation_cache import record_windows
from common.activations import load_position
from common.checkpoint import phase_checkpoint
from common.code_corpus import corpus_windows
from common.config import Config
from common.phase_run import PhaseRun
from common.errors import PipelineError
from common.hooks import check_layers, decoder_layers
from common.logging import get_logger
from common.positions import recorded_positions
from common.saes import layer_source, load_sae, massive_norm_threshold, reconstruction_stats, source_kind
from common.utils import (atomic_path, load_json, save_json, write_manifest)
from common_simplified.model_loader import load_model_and_tokenizer
from phase2_0.quality import delta_cross_entropy, mean_next_token_loss
from phase2_0.training import SaeTrainingSettings, train_sae

logger = get_logger("phase2_0")

FREQUENCY_FILE = "general_frequency.safetensors"
SOURCES_FILE = "sae_sources.json"


def run(phase: PhaseRun) -> Path:
    config = phase.config
    spec = phase.spec
    inputs = phase.inputs
    out_dir = phase.out_dir
    phase1 = phase.upstream("1")
    training = source_kind(config.sae_source) == "trained"
    checkpoint = phase_checkpoint(out_dir / "checkpoint", {k: getattr(config, k) for k in spec.config_keys}, inputs,
                                  config.force)

    model, tokenizer = load_model_and_tokenizer(config.model_name, config.device, config.dtype)
    check_layers(model, config.layers)
    prompts = pd.read_parquet(phase1 / "dataset_sae.parquet", columns=["prompt"])["prompt"].drop_duplicates().tolist()
    train_windows, held_windows = corpus_windows(tokenizer, config.sae_context_tokens,
                                                 config.sae_train_tokens if training else config.sae_context_tokens,
                                                 config.sae_eval_tokens, extra_train_texts=prompts)
    held_out = record_windows(model, held_windows, config.layers, desc="held-out code activations")
    delta_ce_windows = held_windows[:max(1, -(-config.sae_delta_ce_tokens // (config.sae_context_tokens - 2)))]
    clean_loss = mean_next_token_loss(model, delta_ce_windows, desc="clean next-token loss")

    to_train = [layer for layer in config.layers if not (checkpoint.folder / f"sae_layer_{layer}").is_dir()]
    training_records: dict[int, dict[str, Any]] = {}
    if training and to_train:
        logger.info("recording layers %s on %d training windows (%d tokens) once for all epochs",
                    to_train, len(train_windows), train_windows[:, 1:].numel())
        started = time.perf_counter()
        cached = record_windows(model, train_windows, to_train, desc="training activations")
        record_time_s = time.perf_counter() - started
        for layer in to_train:
            training_records[layer] = _train_layer(config, model, layer, cached.pop(layer),
                                                   record_time_s / len(to_train), checkpoint.folder)
    if training:
        for layer in config.layers:
            training_records.setdefault(layer, load_json(checkpoint.folder / f"sae_layer_{layer}" / "training.json"))

    sources, quality, frequencies = {}, {}, {}
    for layer in config.layers:
        source = layer_source(config.sae_source, config.sae_id_template, layer, checkpoint.folder)
        sae = load_sae(source)
        if sae.cfg.d_in != held_out[layer].shape[1]:
            raise PipelineError(f"the SAE of layer {layer} reads {sae.cfg.d_in} dimensions, the model has "
                             f"{held_out[layer].shape[1]}")
        quality[str(layer)], frequencies[f"layer_{layer}"] = _quality(model, sae, layer, held_out[layer],
                                                                       delta_ce_windows, clean_loss, phase1)
        if layer in training_records:
            quality[str(layer)]["training"] = training_records[layer]
        logger.info("layer %d: FVU %.3f, L0 %.1f, dead %.1f%%, ΔCE %+.3f nats", layer, quality[str(layer)]["fvu"],
                    quality[str(layer)]["mean_l0"], 100 * quality[str(layer)]["dead_fraction"],
                    quality[str(layer)]["delta_ce_nats"])
        sources[str(layer)] = source

    outputs: list[Path] = []
    if training:
        for layer in config.layers:
            final = out_dir / f"sae_layer_{layer}"
            if final.exists():
                shutil.rmtree(final)
            shutil.move(str(checkpoint.folder / f"sae_layer_{layer}"), final)
            sources[str(layer)]["path"] = str(final)
            outputs.extend(sorted(final.iterdir()))
    frequency_path = out_dir / FREQUENCY_FILE
    with atomic_path(frequency_path) as tmp:
        save_file(frequencies, str(tmp))
    sources_path = out_dir / SOURCES_FILE
    save_json(sources, sources_path)
    summary_path = out_dir / "phase_2_0_summary.json"
    save_json({"sae_source": config.sae_source, "hook_site": "output of decoder layer L",
               "corpus": {"training": "Python standard library (training files) + phase 1 sae-split prompts",
                          "held_out": "Python standard library (held-out files, never trained on)",
                          "training_tokens": int(train_windows[:, 1:].numel()) if training else 0,
                          "held_out_tokens": int(held_windows[:, 1:].numel()),
                          "delta_ce_tokens": int(delta_ce_windows[:, 2:].numel()),
                          "context_tokens": config.sae_context_tokens},
               "clean_loss_nats": clean_loss, "layers": quality}, summary_path)
    manifest = write_manifest(config, spec, inputs, outputs + [frequency_path, sources_path, summary_path])
    checkpoint.clear()
    return manifest


def _train_layer(config: Config, model: torch.nn.Module, layer: int, activations: torch.Tensor,
                 record_time_s: float, folder: Path) -> dict[str, Any]:
    settings = SaeTrainingSettings(config.sae_width, config.sae_k, config.sae_epochs, config.sae_batch_tokens,
                                   config.sae_lr, config.seed + layer)
    metadata = {"model_name": config.model_name, "hook_name": _module_name(model, layer),
                "context_size": config.sae_context_tokens, "prepend_bos": True, "seqpos_slice": (1, None),
                "dataset_path": "python-stdlib+phase1-prompts"}
    typical = activations.norm(dim=1) <= massive_norm_threshold(activations)
    logger.info("training the layer %d SAE (d_sae %d, k %d, %.1f epochs of %d tokens; %d massive-norm tokens left out)",
                layer, settings.width, settings.k, settings.epochs, int(typical.sum()), int((~typical).sum()))
    sae, record = train_sae(activations[typical], settings, metadata)
    record["record_activations_time_s"] = record_time_s
    record["massive_tokens_dropped"] = int((~typical).sum())
    final = folder / f"sae_layer_{layer}"
    staging = folder / f"sae_layer_{layer}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    sae.save_inference_model(staging)
    save_json(record, staging / "training.json")
    staging.rename(final)
    return record


def _quality(model, sae, layer: int, held_out: torch.Tensor, delta_ce_windows: torch.Tensor, clean_loss: float,
             phase1: Path) -> tuple[dict[str, Any], torch.Tensor]:
    """Quality figures on held-out code (massive-norm tokens left out), and each latent's firing frequency there."""
    max_norm = massive_norm_threshold(held_out)
    typical = held_out[held_out.norm(dim=1) <= max_norm]
    stats = reconstruction_stats(sae, typical)
    fire_counts = stats.pop("fire_counts")
    started = time.perf_counter()
    result = {**stats, "dead_fraction": float((fire_counts == 0).float().mean()), "d_sae": int(sae.cfg.d_sae),
              "massive_tokens_left_out": len(held_out) - len(typical),
              "delta_ce_nats": delta_cross_entropy(model, delta_ce_windows, layer, sae, clean_loss, max_norm),
              "architecture": sae.cfg.architecture()}
    result["phase1_by_position"] = {}
    for position in recorded_positions(phase1 / "activations"):
        analysed = load_position(phase1 / "activations", position, layer)
        rows = reconstruction_stats(sae, analysed[~analysed.isnan().any(1)])
        result["phase1_by_position"][position] = {"fvu": rows["fvu"], "relative_error": rows["relative_error"],
                                                  "n_rows": rows["n_rows"],
                                                  "distinct_latents_active": int((rows["fire_counts"] > 0).sum())}
    result["evaluation_time_s"] = time.perf_counter() - started
    return result, fire_counts.to(torch.float32) / max(len(typical), 1)


def _module_name(model: torch.nn.Module, layer: int) -> str:
    block = decoder_layers(model)[layer]
    return next(name for name, module in model.named_modules() if module is block)
