"""Training one SAE on cached activations with sae-lens's own trainer.

sae-lens's language-model runner would run the LM once per SAE and per epoch; here the
activations of all layers are recorded once (`common.activation_cache`) and sae-lens's
`SAETrainer` consumes them through a plain iterator, several shuffled epochs over the cache.
The SAE, its optimiser, learning-rate schedule, TopK auxiliary loss, activation normalisation
and save format are all sae-lens's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass(frozen=True)
class SaeTrainingSettings:
    width: int  # d_sae
    k: int  # active latents per token (TopK)
    epochs: float
    batch_tokens: int
    lr: float
    seed: int


def shuffled_batches(activations: torch.Tensor, batch_tokens: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless batches of rows, a fresh permutation each epoch; incomplete tail batches are skipped."""
    generator = torch.Generator().manual_seed(seed)
    n_rows = len(activations)
    if n_rows < batch_tokens:
        raise ValueError(f"{n_rows} cached tokens cannot fill one batch of {batch_tokens}")
    while True:
        order = torch.randperm(n_rows, generator=generator)
        for start in range(0, n_rows - batch_tokens + 1, batch_tokens):
            yield activations[order[start:start + batch_tokens]]


def train_sae(activations: torch.Tensor, settings: SaeTrainingSettings, metadata: dict) -> tuple[object, dict]:
    """(trained sae-lens TopK SAE with normalisation folded in, training record)."""
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(settings.seed)
    sae_config = TopKTrainingSAEConfig(
        d_in=activations.shape[1], d_sae=settings.width, k=settings.k, dtype="float32", device="cpu",
        normalize_activations="expected_average_only_in", metadata=SAEMetadata(**metadata))
    sae = TopKTrainingSAE(sae_config)
    steps_per_epoch = len(activations) // settings.batch_tokens
    total_steps = max(1, round(settings.epochs * steps_per_epoch))
    trainer_config = SAETrainerConfig(
        total_training_samples=total_steps * settings.batch_tokens,
        train_batch_size_samples=settings.batch_tokens,
        lr=settings.lr, lr_end=settings.lr / 10, lr_scheduler_name="cosineannealing",
        lr_warm_up_steps=max(1, total_steps // 20), device="cpu",
        dead_feature_window=max(1, steps_per_epoch // 2), feature_sampling_window=max(1, steps_per_epoch),
        n_batches_for_norm_estimate=min(20, steps_per_epoch),
        logger=LoggingConfig(log_to_wandb=False))
    trainer = SAETrainer(cfg=trainer_config, sae=sae,
                         data_provider=shuffled_batches(activations, settings.batch_tokens, settings.seed))
    started = time.perf_counter()
    _start_decoder_bias_at_mean(trainer, activations)
    trainer.fit()
    record = {"train_time_s": time.perf_counter() - started, "steps": total_steps,
              "tokens_seen": total_steps * settings.batch_tokens, "unique_tokens": len(activations),
              "epochs": total_steps / steps_per_epoch, "dead_at_end_of_training": int(trainer.dead_neurons.sum())}
    return sae, record


@torch.no_grad()
def _start_decoder_bias_at_mean(trainer, activations: torch.Tensor) -> None:
    """Start b_dec at the mean activation (in the trainer's normalised units).

    The residual stream has a large mean; from b_dec = 0 the first hundreds of steps only learn
    it (FVU > 1 after one epoch of 250k tokens, measured). sae-lens 6 has no b_dec initialisation
    option, so the scaling factor is estimated here (fit() keeps one that is already set).
    """
    trainer.activation_scaler.estimate_scaling_factor(
        d_in=activations.shape[1], data_provider=trainer.data_provider,
        n_batches_for_norm_estimate=trainer.cfg.n_batches_for_norm_estimate)
    sample = activations[torch.randperm(len(activations), generator=torch.Generator().manual_seed(0))[:65536]]
    trainer.sae.b_dec.copy_(trainer.activation_scaler(sample).mean(0))
