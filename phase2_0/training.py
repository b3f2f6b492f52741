"""Training one SAE on cached activations with sae-lens's own trainer.

sae-lens's language-model runner would run the LM once per SAE and per epoch; here the
activations of all layers are recorded once (`common.activation_cache`) and sae-lens's
`SAETrainer` consumes them through a plain iterator, several shuffled epochs over the cache.
The SAE, its optimiser, learning-rate schedule, TopK auxiliary loss, activation normalisation
and save format are all sae-lens's; only the decoder's arithmetic is ours (`SparseDecoderTopKSAE`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from sae_lens import TopKTrainingSAE


class SparseDecoderTopKSAE(TopKTrainingSAE):
    """sae-lens's TopK training SAE, with a decoder that reads only the latents each token uses.

    A TopK code has k of d_sae latents active; sae-lens multiplies the whole code by W_dec (its sparse-
    tensor option fails in the backward pass on CPU: no `aten::view` for SparseCPU). `embedding_bag`
    sums the k active decoder rows instead, forward and backward, for the reconstruction and for the
    auxiliary loss on dead latents. Same function and gradients up to float rounding; a training step
    on 1024 tokens (d_sae 4608, k 32) goes from ~360 to ~220 ms on 2 CPU cores (README, phase 2.0)."""

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        flat = feature_acts.reshape(-1, feature_acts.shape[-1])
        active = flat.topk(min(self.cfg.k, flat.shape[-1]), dim=-1, sorted=False)  # the TopK code's nonzeros
        out = self._decode_active(active.values, active.indices).reshape(*feature_acts.shape[:-1], -1) + self.b_dec
        out = self.run_time_activation_norm_fn_out(self.hook_sae_recons(out))
        return self.reshape_fn_out(out, self.d_head)

    def calculate_topk_aux_loss(self, sae_in: torch.Tensor, sae_out: torch.Tensor, hidden_pre: torch.Tensor,
                                dead_neuron_mask: torch.Tensor | None) -> torch.Tensor:
        """sae-lens's auxiliary loss (the top d_in / 2 dead latents reconstruct the residual of the live ones,
        scaled down while few latents are dead), decoded sparsely."""
        if dead_neuron_mask is None or (n_dead := int(dead_neuron_mask.sum())) == 0:
            return sae_out.new_tensor(0.0)
        if self.cfg.normalize_activations in ("constant_norm_rescale", "layer_norm"):
            raise ValueError(f"the TopK auxiliary loss cannot use normalize_activations="
                             f"{self.cfg.normalize_activations!r}: its residual would be in another space")
        residual = (sae_in - sae_out).detach()
        k_aux = sae_in.shape[-1] // 2
        scale = min(n_dead / k_aux, 1.0)
        dead = torch.where(dead_neuron_mask[None], hidden_pre, -torch.inf).topk(min(k_aux, n_dead), sorted=False)
        reconstruction = self._decode_active(dead.values, dead.indices)
        return self.cfg.aux_loss_coefficient * scale * (reconstruction - residual).pow(2).sum(dim=-1).mean()

    def _decode_active(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """sum_j values[:, j] * W_dec[indices[:, j]], with sae-lens's rescaling by the decoder row norms."""
        if self.cfg.rescale_acts_by_decoder_norm:
            values = values / self.W_dec.norm(dim=-1)[indices]
        return F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum")


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


def train_sae(activations: torch.Tensor, settings: SaeTrainingSettings, metadata: dict,
              sae_class: type[TopKTrainingSAE] = SparseDecoderTopKSAE) -> tuple[object, dict]:
    """(trained sae-lens TopK SAE with normalisation folded in, training record). `sae_class`: sae-lens's
    own `TopKTrainingSAE` gives the same SAE, slower (benchmarks/sae_decoder.py)."""
    from sae_lens import TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(settings.seed)
    sae_config = TopKTrainingSAEConfig(
        d_in=activations.shape[1], d_sae=settings.width, k=settings.k, dtype="float32", device="cpu",
        normalize_activations="expected_average_only_in", metadata=SAEMetadata(**metadata))
    sae = sae_class(sae_config)
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
