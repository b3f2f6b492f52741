"""The list of phases: id, package, what each reads, and which config keys change its output.

`config_keys` decides staleness: a phase is stale when one of its keys differs from the value
recorded in its manifest, or when an upstream manifest changed since it ran. Keys that only change
speed (batch_size, exec_workers) are in no list, so changing them never forces a rerun.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from common.errors import PipelineError

_GENERATION_KEYS = ("model_name", "prompt_style", "max_new_tokens", "max_prompt_tokens", "seed", "exec_timeout",
                    "stop_repeat_tokens", "stop_repeat_copies", "stop_repeat_period", "stop_no_code_tokens",
                    "stop_code_tokens")

# Which positions the teacher-forced pass reads after generation: they change the outputs, not the generations.
_POSITION_KEYS = ("activation_positions", "position_k")

# What phase 4.5 steers with, how it calibrates and how it chooses. Choice keys all: its checkpoint is keyed by
# each intervention's label (direction, alpha), so a changed key regenerates only the arms it changes.
_STEERING_KEYS = ("steering_direction_position", "steering_layer", "methods", "disruption_levels", "calibration_alphas",
                  "disruption_programs", "disruption_max_tokens", "controls_per_type", "selection_controls_per_type",
                  "preregistered_level", "min_problems_per_level", "max_break_rate", "chosen_level")

_ADAPTER_KEYS = ("adapter_pair_kinds", "adapter_max_pairs", "adapter_held_out_pairs", "adapter_layers",
                 "adapter_modules", "adapter_rank", "adapter_rotate_u", "adapter_loss_layer", "adapter_coherence_nats",
                 "adapter_coherence_weight", "adapter_lr", "adapter_batch_pairs", "adapter_max_steps",
                 "adapter_time_budget_s")

# What phase 5's table and report read: every phase but 2.8s (style vectors of answers to questions, not code).
_REPORTED = ("0", "0.1", "1", "2.0", "2.5", "2.6", "2.7", "2.8", "2.9", "3.5", "3.6", "3.8", "3.9", "4.5", "4.8", "4.9")

_SAE_KEYS = ("sae_source", "sae_id_template", "sae_width", "sae_k", "sae_epochs", "sae_train_tokens", "sae_eval_tokens",
             "sae_delta_ce_tokens", "sae_context_tokens", "sae_batch_tokens", "sae_lr")


@dataclass(frozen=True)
class PhaseSpec:
    id: str
    package: str
    title: str
    upstream: tuple[str, ...]
    config_keys: tuple[str, ...]
    choice_keys: tuple[str, ...] = ()  # of config_keys: change what is made of the generations, not them
    shards: bool = False  # generates: under a distributed launch every process takes part (common/distributed.py)

    @property
    def generation_keys(self) -> tuple[str, ...]:
        """The config keys a phase's checkpointed generations depend on."""
        return tuple(key for key in self.config_keys if key not in self.choice_keys)

    @property
    def folder(self) -> str:
        """Data folder name: phase 0.1 writes to <data_dir>/phase0_1."""
        return "phase" + self.id.replace(".", "_")

    @property
    def command(self) -> str:
        return f"python run.py phase {self.id}"

    def runner(self):
        return importlib.import_module(f"{self.package}.runner")


PHASES: tuple[PhaseSpec, ...] = (
    PhaseSpec("0", "phase0", "problems and their difficulty", (),
              ("dataset", "data_file", "mbpp_variant", "n_tasks", "synthetic_seed", "synthetic_level_weights")),
    PhaseSpec("0.1", "phase0_1", "sae / hyperparams / validation split", ("0",),
              ("split_fractions", "split_by", "seed")),
    PhaseSpec("1", "phase1", "generation, execution and activations on the sae split", ("0.1",),
              _GENERATION_KEYS + ("layers", "temperature", "samples_per_task") + _POSITION_KEYS,
              choice_keys=_POSITION_KEYS, shards=True),
    PhaseSpec("2.0", "phase2_0", "SAE per layer: trained (or loaded) and measured on held-out code", ("1",),
              ("model_name", "layers", "seed") + _SAE_KEYS),
    PhaseSpec("2.5", "phase2_5_simplified", "SAE latents that separate passing from failing code", ("1", "2.0"),
              ("general_freq_max", "bootstrap_samples", "seed")),
    PhaseSpec("2.6", "phase2_6", "mean-difference directions (baseline)", ("1",), ()),
    PhaseSpec("2.7", "phase2_7", "contrastive pairs (reference vs failing mutant, own passing vs failing) and "
              "their directions", ("0.1", "1"),
              ("model_name", "prompt_style", "layers", "seed", "exec_timeout", "contrastive_mutants_per_task",
               "contrastive_own_pairs_per_task", "contrastive_aggregators") + _POSITION_KEYS),
    PhaseSpec("2.8", "phase2_8", "KV-cache steering vectors from the contrastive pairs (seed 002)", ("0.1", "2.7"),
              ("model_name", "prompt_style", "seed", "kv_pair_kinds", "kv_layers", "kv_aggregation", "kv_clusters",
               "kv_key_weight")),
    PhaseSpec("2.8s", "phase2_8s", "style vectors (seed 002's own use) and whether they steer held-out answers", (),
              ("model_name", "seed", "kv_layers", "kv_aggregation", "kv_clusters", "kv_key_weight", "style_names",
               "teacher_url", "teacher_model", "style_max_tokens", "style_disruption", "calibration_alphas",
               "disruption_max_tokens")),
    PhaseSpec("2.9", "phase2_9", "seed 004's SVD-rotation adapter and its LoRA baseline, trained on the pairs",
              ("0.1", "2.7"), ("model_name", "prompt_style", "seed", "position_k") + _ADAPTER_KEYS),
    PhaseSpec("3.5", "phase3_5", "greedy and sampled generations on the validation split", ("0.1",),
              _GENERATION_KEYS + ("layers", "temperatures", "samples_per_temperature") + _POSITION_KEYS,
              choice_keys=_POSITION_KEYS, shards=True),
    PhaseSpec("3.6", "phase3_6", "greedy generations on the hyperparams split", ("0.1",),
              _GENERATION_KEYS + ("layers",) + _POSITION_KEYS, choice_keys=_POSITION_KEYS, shards=True),
    PhaseSpec("3.8", "phase3_8", "scores at every position on held-out problems, beside the baselines",
              ("1", "2.0", "2.5", "2.6", "2.7", "3.5", "3.6"), ("seed",)),
    PhaseSpec("3.9", "phase3_9", "multi-cluster steering dictionary and its calibrated confidence (seed 000)",
              ("0.1", "1", "2.5", "2.7", "3.5", "3.6", "3.8"),
              ("model_name", "prompt_style", "seed", "steering_direction_position", "steering_layer", "position_k",
               "dictionary_clusters", "dictionary_taus", "projection_lrs", "projection_weight_decay",
               "projection_batch_size", "projection_max_epochs")),
    PhaseSpec("4.5", "phase4_5", "every method calibrated at matched disruption against controls, hyperparams split",
              ("0.1", "1", "2.0", "2.5", "2.6", "2.7", "2.8", "3.6", "3.9"),
              _GENERATION_KEYS + _STEERING_KEYS,
              choice_keys=_STEERING_KEYS, shards=True),
    PhaseSpec("4.8", "phase4_8", "steering effects on the validation split, against disruption-matched controls",
              ("0.1", "3.5", "3.8", "4.5"), _GENERATION_KEYS + ("control_tasks", "primary_endpoints"),
              choice_keys=("primary_endpoints",), shards=True),
    PhaseSpec("4.9", "phase4_9", "the adapters swept over their coefficient on the validation split, against "
              "mean-difference steering at matched NLL, prompting and a random adapter", ("0.1", "2.6", "2.9", "3.6"),
              _GENERATION_KEYS + ("adapter_coefficients", "adapter_eval_tasks", "calibration_alphas",
                                  "disruption_programs", "steering_direction_position")),
    PhaseSpec("5", "phase5", "every method head to head, and the report", _REPORTED, ()),
)

_BY_ID = {spec.id: spec for spec in PHASES}


def get_phase(phase_id: str) -> PhaseSpec:
    try:
        return _BY_ID[str(phase_id).strip()]
    except KeyError:
        known = ", ".join(spec.id for spec in PHASES)
        raise PipelineError(f"unknown phase '{phase_id}' (known phases: {known})") from None
