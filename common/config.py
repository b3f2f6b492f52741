"""The pipeline's single configuration: one dataclass with defaults, a YAML file and `--set` overrides.

Every key is documented where it is declared. `validate()` rejects bad values before any phase
writes anything, so a typo costs one line on the terminal and not an hour of generation.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.degeneration import DegenerationLimits
from common.errors import PipelineError
from common.positions import CODE_POSITIONS, POSITIONS

DEFAULT_MODEL_ALIAS = "smollm2-135m-instruct"
DATASETS = ("synthetic", "humaneval", "mbpp", "mcq")
PROMPT_STYLES = ("auto", "chat", "base")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
MBPP_VARIANTS = ("full", "sanitized")
SPLIT_BY = ("complexity", "family")
POSITION_POLICIES = ("all", "last_prompt")
ENDPOINTS = ("correction", "preservation", "corruption")


@dataclass
class Config:
    # --- how this run goes (part of no phase's identity)
    data_dir: str = "data"
    task_start: int = 0  # --start: first task index of the phase's input
    task_end: int | None = None  # --end: stop before this task index; None = all
    force: bool = False  # --force: discard checkpoints and current outputs

    # --- model
    model_name: str = DEFAULT_MODEL_ALIAS  # alias, HF id, local directory or .gguf file
    device: str = "auto"
    dtype: str = "auto"
    prompt_style: str = "auto"  # auto: chat template when the tokenizer has one, else the base prompt

    # --- data
    dataset: str = "synthetic"  # graded tasks the project generates: both classes in useful numbers
    data_file: str | None = None  # local MBPP (or, for mcq, MedQA-layout) JSON/JSONL; None loads it from the hub
    mbpp_variant: str = "full"  # hub config when data_file is None
    n_tasks: int = 500  # size of the synthetic task set
    synthetic_seed: int = 1234
    synthetic_level_weights: list[float] = field(default_factory=lambda: [0.7, 0.15, 0.1, 0.05])  # difficulty 1..4
    split_fractions: list[float] = field(default_factory=lambda: [0.5, 0.1, 0.4])  # sae/hyperparams/validation
    split_by: str = "complexity"  # complexity: tasks dealt out stratified by complexity | family: whole families
    #                               (synthetic) or blocks of task ids (HumanEval, MBPP) held out of all but one split

    # --- generation (phase 1 and every later generating phase)
    layers: list[int] = field(default_factory=lambda: [5, 10, 15, 20, 25])  # decoder-layer outputs to record
    max_new_tokens: int = 512
    max_prompt_tokens: int = 2048
    temperature: float = 0.8  # for the extra samples; sample 0 of every task is greedy
    samples_per_task: int = 3  # extra sampled generations per task, on top of the greedy one: 3 gives ~85 of
    #                            250 sae tasks both a passing and a failing program (within-task evaluation)
    activation_positions: list[str] = field(default_factory=lambda: list(POSITIONS))  # common/positions.py
    position_k: int = 6  # code_last_k: mean over the program's last k tokens (seed 003)
    batch_size: int = 64  # rows decoding together (continuous batching); 64 was fastest on 2 CPU cores
    seed: int = 42
    # Degenerate output stops early (common/degeneration.py; stop_repeat_copies or _period, stop_no_code_tokens,
    # stop_code_tokens at 0 turn their rule off; stop_repeat_tokens 0 sets no minimum). Set on unsteered passing
    # programs of the default model so that almost none would be cut (README, "Stopping degenerate output").
    stop_repeat_copies: int = 4  # the output ends in this many copies of one span of at most stop_repeat_period
    stop_repeat_period: int = 64  # tokens, together at least stop_repeat_tokens long
    stop_repeat_tokens: int = 64
    stop_no_code_tokens: int = 64  # this many tokens and no code begun, fenced or bare (chat prompts)
    stop_code_tokens: int = 256  # the open code block holds this many tokens and is not closed

    # --- validation generations (phase 3.5 on the validation split; 3.6 is greedy on hyperparams)
    temperatures: list[float] = field(default_factory=lambda: [0.3, 0.6, 0.9, 1.2])  # besides the greedy sample
    samples_per_temperature: int = 3

    # --- SAEs (phase 2.0 trains or loads them, phase 2.5 ranks their latents)
    sae_source: str = "train"  # train | a sae-lens release | a local directory (common/saes.py)
    sae_id_template: str = "layer_{layer}/width_16k/canonical"  # a layer's SAE id within a release
    sae_width: int = 4608  # latents per trained SAE (8 x d_model of the default model)
    sae_k: int = 32  # active latents per token (TopK)
    sae_epochs: float = 2.0  # passes over the cached training activations
    sae_train_tokens: int = 250_000  # corpus tokens recorded once for training
    sae_eval_tokens: int = 16_000  # held-out code tokens: FVU, L0, dead latents, general firing frequency
    sae_delta_ce_tokens: int = 8_000  # held-out tokens for the next-token loss with the SAE spliced in
    sae_context_tokens: int = 128  # window length; position 0 (attention sink) is never used
    sae_batch_tokens: int = 1024  # more steps per epoch: on a 250k-token cache that beats bigger batches
    sae_lr: float = 4e-3
    general_freq_max: float = 0.02  # phase 2.5 drops latents firing on more held-out code tokens than this
    bootstrap_samples: int = 200  # task resamples for the stability of the latent ranking

    # --- contrastive pairs and their directions (phase 2.7, seed 003)
    contrastive_mutants_per_task: int = 3  # (reference, mutant failing the tests) pairs per sae task
    contrastive_own_pairs_per_task: int = 3  # (own passing, own failing) pairs per sae task where phase 1 has both
    contrastive_aggregators: list[str] = field(default_factory=lambda: ["mean_difference", "pca", "probe"])  # from
    #                                          common/aggregators.py: each gives a direction per position and layer

    # --- KV-cache steering vectors from the same pairs (phase 2.8, seed 002)
    kv_pair_kinds: list[str] = field(default_factory=lambda: ["mutant", "own"])  # one vector per kind of 2.7 pair
    kv_layers: list[int] | None = None  # cache layers edited; None: seed 002's band (8-15 of 28) scaled to the model
    kv_aggregation: str = "mean"  # of the pairs' differences; "kmeans": the mean of the largest k-means cluster
    kv_clusters: int = 4  # for kmeans
    kv_key_weight: float = 0.0  # c_keys (c_values is 1): values only is seed 002's usual best

    # --- style vectors, seed 002's own use (phase 2.8s)
    style_names: list[str] = field(default_factory=lambda: ["researcher_style", "step_by_step_reasoning",
                                                            "creative_explorer"])  # phase2_8s/styles.py
    teacher_url: str | None = None  # an OpenAI-compatible endpoint (e.g. http://host:8000/v1); None: the local model
    teacher_model: str = "gpt-4"  # the model name sent to teacher_url
    style_max_tokens: int = 160  # per answer, teacher's and steered
    style_disruption: float = 0.1  # nats per token: each style edit and its random edit are calibrated to this

    # --- seed 004's SVD-rotation adapter and its LoRA baseline (phase 2.9: training; phase 4.9: the sweep over c)
    adapter_pair_kinds: list[str] = field(default_factory=lambda: ["mutant", "own"])  # of 2.7's pairs, trained on
    adapter_max_pairs: int = 256  # training pairs drawn from those outside 2.7's held-out tasks
    adapter_held_out_pairs: int = 32  # pairs of the held-out tasks each adapter's separation is measured on
    adapter_layers: list[int] | None = None  # None: 1/2 and 2/3 of the depth
    adapter_modules: list[str] = field(default_factory=lambda: ["self_attn.q_proj", "self_attn.v_proj",
                                                                "mlp.gate_proj", "mlp.up_proj"])
    adapter_rank: int = 16  # singular triplets rotated (and the LoRA baseline's rank)
    adapter_rotate_u: bool = False  # also rotate U (the journal found rotating V and scaling S ahead)
    adapter_loss_layer: int | None = None  # None: 5/6 of the depth; the states are the mean over the last
    #                                        position_k program tokens
    adapter_coherence_nats: float = 0.5  # tau: per program token, NLL may rise this much before the hinge bites
    adapter_coherence_weight: float = 1.0
    adapter_lr: float = 0.01
    adapter_batch_pairs: int = 2
    adapter_max_steps: int = 60  # per trained adapter: about 6 minutes each on 2 CPU cores (README, Performance)
    adapter_time_budget_s: float = 900.0  # a guard: training that reaches it stops there, with a warning that its
    #                                       result now depends on the machine's speed
    adapter_coefficients: list[float] = field(default_factory=lambda: [-1.0, -0.5, 0.0, 0.5, 1.0])  # phase 4.9
    adapter_eval_tasks: int = 60  # validation tasks phase 4.9 generates for at every coefficient of every arm

    # --- the multi-cluster dictionary, its router and the calibrated confidence (phase 3.9, seed 000)
    dictionary_clusters: list[int] = field(default_factory=lambda: [2, 3, 4, 6, 8])  # K tried; chosen on hyperparams
    dictionary_taus: list[float] = field(default_factory=lambda: [1.0, 5.0, 15.0, 30.0])  # routing softmax sharpness
    projection_lrs: list[float] = field(default_factory=lambda: [0.001, 0.0001, 0.00001, 0.000001])  # AdamW for P,
    projection_weight_decay: float = 0.0001  # (a public implementation: lr 1e-3, weight decay 1e-4, batch 64, 2
    #                                         epochs); here the lr and the epochs are chosen on held-out sae tasks
    projection_batch_size: int = 64
    projection_max_epochs: int = 300

    # --- steering (phase 4.5 calibrates every method on hyperparams, phase 4.8 measures on validation)
    steering_direction_position: str = CODE_POSITIONS[0]  # the activation position whose directions are steered: a
    #                                   last_prompt direction is added at the last prompt token only, a code one at
    #                                   every position (prompt and each generated token)
    steering_layer: int | None = None  # None: the layer of phase 2.5's best correct-preferring latent there
    methods: list[str] = field(default_factory=lambda: ["sae_latent", "mean_difference",
                                                        "contrastive_mutant_mean_difference",
                                                        "kv_cache_mutant", "self_steering"])  # common/methods.py
    disruption_levels: list[float] = field(default_factory=lambda: [0.03, 0.1, 0.3])  # nats per token of KL on
    #                                   hyperparams baseline programs: phase 4.5's grid; every arm and control of
    #                                   a level is calibrated to it (common/disruption.py)
    calibration_alphas: list[float] = field(default_factory=lambda: [3, 10, 30, 100, 300, 1000])
    disruption_programs: int = 8  # baseline programs the disruption is measured over
    disruption_max_tokens: int = 96  # of each program's output
    preregistered_level: float = 0.1  # the dose phase 4.8 runs when 4.5 finds no effective level for a method
    chosen_level: float | None = None  # a person's choice of level for every method (seed 001's manual selection,
    #                                    after reading coefficient_examples/), overriding the rule; recorded as such
    controls_per_type: int = 5  # of each of the 4 control types (common/controls.py): 20 controls in phase 4.8
    selection_controls_per_type: int = 2  # phase 4.5's controls at each level (8): the rule's comparison
    max_break_rate: float = 0.10  # the rule: pass -> fail on passing problems at most this (and at most the
    #                               controls' mean)
    min_problems_per_level: int = 30  # phase 4.5 warns below this many problems at a grid point
    control_tasks: int = 100  # phase 4.8: validation tasks the controls run on (half passing where possible);
    #                           every arm is also compared on exactly these tasks
    primary_endpoints: list[str] = field(default_factory=lambda: ["correction", "preservation"])  # per method, of
    #                                 the correct class, against controls; Holm over all of them

    # --- sandboxed execution
    exec_timeout: float = 5.0  # seconds for one program and all of its tests
    exec_workers: int = 0  # parallel sandboxes; 0 = number of CPU cores

    def validate(self) -> Config:
        _check(self.dataset in DATASETS, "dataset", self.dataset, f"one of {', '.join(DATASETS)}")
        _check(self.prompt_style in PROMPT_STYLES, "prompt_style", self.prompt_style, f"one of {PROMPT_STYLES}")
        _check(self.device in DEVICES, "device", self.device, f"one of {DEVICES}")
        _check(self.dtype in DTYPES, "dtype", self.dtype, f"one of {DTYPES}")
        _check(self.mbpp_variant in MBPP_VARIANTS, "mbpp_variant", self.mbpp_variant, f"one of {MBPP_VARIANTS}")
        _check(bool(self.model_name), "model_name", self.model_name, "a non-empty model name")
        _check(len(self.layers) > 0 and all(layer >= 0 for layer in self.layers), "layers", self.layers,
               "a non-empty list of layer indices >= 0")
        _check(len(set(self.layers)) == len(self.layers), "layers", self.layers, "a list without repeats")
        _check(len(self.split_fractions) == 3 and all(f > 0 for f in self.split_fractions)
               and abs(sum(self.split_fractions) - 1.0) < 1e-6,
               "split_fractions", self.split_fractions, "three positive fractions summing to 1")
        _check(1 <= self.n_tasks <= 100_000, "n_tasks", self.n_tasks, "in [1, 100000]")
        _check(len(self.synthetic_level_weights) == 4 and all(w >= 0 for w in self.synthetic_level_weights)
               and sum(self.synthetic_level_weights) > 0, "synthetic_level_weights", self.synthetic_level_weights,
               "four non-negative weights for difficulty 1..4, not all zero")
        _check(self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, ">= 1")
        _check(self.max_prompt_tokens >= 16, "max_prompt_tokens", self.max_prompt_tokens, ">= 16")
        _check(0.0 < self.temperature <= 5.0, "temperature", self.temperature, "in (0, 5]")
        _check(self.samples_per_task >= 0, "samples_per_task", self.samples_per_task, ">= 0")
        _check(self.split_by in SPLIT_BY, "split_by", self.split_by, f"one of {', '.join(SPLIT_BY)}")
        _check(len(self.activation_positions) > 0 and set(self.activation_positions) <= set(POSITIONS)
               and len(set(self.activation_positions)) == len(self.activation_positions), "activation_positions",
               self.activation_positions, f"a non-empty list without repeats of {', '.join(POSITIONS)}")
        _check(self.position_k >= 1, "position_k", self.position_k, ">= 1")
        _check(self.steering_direction_position in self.activation_positions, "steering_direction_position",
               self.steering_direction_position, "one of activation_positions")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        _check(len(self.dictionary_clusters) > 0 and min(self.dictionary_clusters) >= 2
               and len(set(self.dictionary_clusters)) == len(self.dictionary_clusters), "dictionary_clusters",
               self.dictionary_clusters, "a non-empty list of distinct cluster counts >= 2")
        _check(len(self.dictionary_taus) > 0 and min(self.dictionary_taus) > 0, "dictionary_taus",
               self.dictionary_taus, "a non-empty list of positive temperatures")
        _check(len(self.projection_lrs) > 0 and min(self.projection_lrs) > 0 and self.projection_weight_decay >= 0,
               "projection_lrs", (self.projection_lrs, self.projection_weight_decay),
               "learning rates > 0 and a weight decay >= 0")
        _check(self.projection_batch_size >= 1 and self.projection_max_epochs >= 1, "projection_batch_size",
               (self.projection_batch_size, self.projection_max_epochs), "batch size and max epochs >= 1")
        _check(self.stop_repeat_copies == 0 or self.stop_repeat_copies >= 2, "stop_repeat_copies",
               self.stop_repeat_copies, "0 (the repetition rule off) or >= 2")
        _check(self.stop_repeat_tokens >= 0, "stop_repeat_tokens", self.stop_repeat_tokens, ">= 0 (0: no minimum)")
        for key in ("stop_repeat_period", "stop_no_code_tokens", "stop_code_tokens"):
            _check(getattr(self, key) >= 0, key, getattr(self, key), ">= 0 (0 turns the rule off)")
        _check(0 < self.exec_timeout <= 600, "exec_timeout", self.exec_timeout, "in (0, 600] seconds")
        _check(self.task_start >= 0, "task_start", self.task_start, ">= 0")
        _check(self.task_end is None or self.task_end > self.task_start, "task_end", self.task_end,
               "greater than task_start")
        _check(self.exec_workers >= 0, "exec_workers", self.exec_workers, ">= 0")
        _check(self.sae_width >= 1 and 1 <= self.sae_k <= self.sae_width, "sae_k", self.sae_k,
               "in [1, sae_width]")
        _check(self.sae_epochs > 0, "sae_epochs", self.sae_epochs, "> 0")
        _check(self.sae_context_tokens >= 3, "sae_context_tokens", self.sae_context_tokens, ">= 3")
        for key in ("sae_train_tokens", "sae_eval_tokens", "sae_delta_ce_tokens", "sae_batch_tokens"):
            _check(getattr(self, key) >= 1, key, getattr(self, key), ">= 1")
        _check(self.sae_lr > 0, "sae_lr", self.sae_lr, "> 0")
        _check(0 < self.general_freq_max <= 1, "general_freq_max", self.general_freq_max, "in (0, 1]")
        _check(all(0 < t <= 5 for t in self.temperatures) and len(set(self.temperatures)) == len(self.temperatures),
               "temperatures", self.temperatures, "distinct values in (0, 5] (the greedy sample is always made)")
        _check(self.samples_per_temperature >= 0, "samples_per_temperature", self.samples_per_temperature, ">= 0")
        _check(self.bootstrap_samples >= 0, "bootstrap_samples", self.bootstrap_samples, ">= 0")
        _check(bool(self.sae_source), "sae_source", self.sae_source, "'train', a sae-lens release or a directory")
        for key in ("disruption_levels", "calibration_alphas"):
            values = getattr(self, key)
            _check(len(values) > 0 and all(v > 0 for v in values) and len(set(values)) == len(values), key, values,
                   "distinct positive numbers")
        _check(self.preregistered_level > 0, "preregistered_level", self.preregistered_level, "> 0")
        _check(self.chosen_level is None or self.chosen_level in (*self.disruption_levels, self.preregistered_level),
               "chosen_level", self.chosen_level, "null, one of disruption_levels or preregistered_level")
        _check(self.steering_layer is None or self.steering_layer in self.layers, "steering_layer",
               self.steering_layer, "null or one of layers")
        _check(self.contrastive_mutants_per_task >= 0 and self.contrastive_own_pairs_per_task >= 0
               and self.contrastive_mutants_per_task + self.contrastive_own_pairs_per_task > 0,
               "contrastive_mutants_per_task", self.contrastive_mutants_per_task,
               ">= 0, with contrastive_own_pairs_per_task >= 0 and not both 0")
        from common.aggregators import AGGREGATORS  # torch and scikit-learn: only when a config is checked
        _check(len(self.contrastive_aggregators) > 0 and set(self.contrastive_aggregators) <= set(AGGREGATORS)
               and len(set(self.contrastive_aggregators)) == len(self.contrastive_aggregators),
               "contrastive_aggregators", self.contrastive_aggregators,
               f"a non-empty list without repeats of {', '.join(AGGREGATORS)}")
        _check(len(self.kv_pair_kinds) > 0 and set(self.kv_pair_kinds) <= {"mutant", "own"}
               and len(set(self.kv_pair_kinds)) == len(self.kv_pair_kinds), "kv_pair_kinds", self.kv_pair_kinds,
               "a non-empty list without repeats of mutant, own")
        _check(self.kv_layers is None or (len(self.kv_layers) > 0 and min(self.kv_layers) >= 0
                                          and len(set(self.kv_layers)) == len(self.kv_layers)),
               "kv_layers", self.kv_layers, "null or a non-empty list of distinct layers >= 0")
        _check(self.kv_aggregation in ("mean", "kmeans"), "kv_aggregation", self.kv_aggregation, "mean or kmeans")
        _check(self.kv_clusters >= 1, "kv_clusters", self.kv_clusters, ">= 1")
        _check(len(self.style_names) > 0 and len(set(self.style_names)) == len(self.style_names), "style_names",
               self.style_names, "a non-empty list without repeats (names: phase2_8s/styles.py)")
        _check(self.style_max_tokens >= 1, "style_max_tokens", self.style_max_tokens, ">= 1")
        _check(self.style_disruption > 0, "style_disruption", self.style_disruption, "> 0")
        _check(self.teacher_url is None or self.teacher_url.startswith(("http://", "https://")), "teacher_url",
               self.teacher_url, "null or an http(s) URL")
        _check(len(self.adapter_pair_kinds) > 0 and set(self.adapter_pair_kinds) <= {"mutant", "own"}
               and len(set(self.adapter_pair_kinds)) == len(self.adapter_pair_kinds), "adapter_pair_kinds",
               self.adapter_pair_kinds, "a non-empty list without repeats of mutant, own")
        _check(self.adapter_layers is None or (len(self.adapter_layers) > 0 and min(self.adapter_layers) >= 0
                                               and len(set(self.adapter_layers)) == len(self.adapter_layers)),
               "adapter_layers", self.adapter_layers, "null or a non-empty list of distinct layers >= 0")
        _check(len(self.adapter_modules) > 0 and len(set(self.adapter_modules)) == len(self.adapter_modules),
               "adapter_modules", self.adapter_modules, "a non-empty list without repeats")
        for key in ("adapter_max_pairs", "adapter_held_out_pairs", "adapter_rank", "adapter_batch_pairs",
                    "adapter_max_steps", "adapter_eval_tasks"):
            _check(getattr(self, key) >= 1, key, getattr(self, key), ">= 1")
        for key in ("adapter_coherence_nats", "adapter_coherence_weight"):
            _check(getattr(self, key) >= 0, key, getattr(self, key), ">= 0")
        for key in ("adapter_lr", "adapter_time_budget_s"):
            _check(getattr(self, key) > 0, key, getattr(self, key), "> 0")
        _check(0.0 in self.adapter_coefficients and all(-1 <= c <= 1 for c in self.adapter_coefficients)
               and {-1.0, 1.0} <= set(self.adapter_coefficients)
               and len(set(self.adapter_coefficients)) == len(self.adapter_coefficients), "adapter_coefficients",
               self.adapter_coefficients, "distinct values in [-1, 1] including -1, 0 and 1 (the trained range)")
        _check(len(self.methods) > 0 and len(set(self.methods)) == len(self.methods), "methods", self.methods,
               "a non-empty list without repeats")
        for key in ("disruption_programs", "disruption_max_tokens", "min_problems_per_level", "control_tasks"):
            _check(getattr(self, key) >= 1, key, getattr(self, key), ">= 1")
        for key in ("controls_per_type", "selection_controls_per_type"):
            _check(getattr(self, key) >= 1, key, getattr(self, key), ">= 1")
        _check(self.selection_controls_per_type <= self.controls_per_type, "selection_controls_per_type",
               self.selection_controls_per_type, "<= controls_per_type")
        _check(0 <= self.max_break_rate <= 1, "max_break_rate", self.max_break_rate, "in [0, 1]")
        _check(set(self.primary_endpoints) <= set(ENDPOINTS), "primary_endpoints", self.primary_endpoints,
               f"a subset of {ENDPOINTS}")
        if self.data_file is not None and not Path(self.data_file).is_file():
            raise PipelineError(f"data_file '{self.data_file}' is not a readable file")
        return self

    @property
    def degeneration_limits(self) -> DegenerationLimits:
        return DegenerationLimits(self.stop_repeat_tokens, self.stop_repeat_copies, self.stop_repeat_period,
                                  self.stop_no_code_tokens, self.stop_code_tokens)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def n_exec_workers(self) -> int:
        return self.exec_workers or os.cpu_count() or 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise PipelineError(f"config key '{key}' = {value!r} is invalid: expected {expected}")


PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"


def profile_names() -> list[str]:
    return sorted(path.stem for path in PROFILES_DIR.glob("*.yaml"))


def load_config(config_file: str | None = None, overrides: list[str] | None = None,
                data_dir: str | None = None, profile: str | None = None) -> Config:
    """Defaults, then the profile, then the YAML file, then each `key=value` override, then `--data-dir`;
    validated."""
    values: dict[str, Any] = {}
    if profile is not None:
        if profile not in profile_names():
            raise PipelineError(f"unknown profile '{profile}' (shipped profiles: {', '.join(profile_names())})")
        values.update(_read_yaml(PROFILES_DIR / f"{profile}.yaml"))
    if config_file:
        values.update(_read_yaml(Path(config_file)))
    for item in overrides or []:
        key, sep, text = item.partition("=")
        if not sep:
            raise PipelineError(f"--set expects key=value, got '{item}'")
        values[key.strip()] = _coerce(key.strip(), _parse_scalar(text))
    if data_dir is not None:
        values["data_dir"] = data_dir
    return Config(**values).validate()


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PipelineError(f"cannot read config file '{path}': {exc}") from exc
    if loaded is not None and not isinstance(loaded, dict):
        raise PipelineError(f"config file '{path}' must hold a mapping of key: value")
    return {key: _coerce(key, raw) for key, raw in (loaded or {}).items()}


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(Config)


def _parse_scalar(text: str) -> Any:
    """`--set layers=5,10` and `--set layers=[5, 10]` both give a list; `null`/`none` give None."""
    text = text.strip()
    if "," in text and not text.startswith("["):
        text = f"[{text}]"
    try:
        return yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        return text


def _coerce(key: str, value: Any) -> Any:
    types_by_key = _field_types()
    if key not in types_by_key:
        known = ", ".join(sorted(types_by_key))
        raise PipelineError(f"unknown config key '{key}' (known keys: {known})")
    return _coerce_to(key, value, types_by_key[key])


def _coerce_to(key: str, value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce_to(key, value, inner[0])
    if origin is list:
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce_to(key, item, args[0]) for item in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise PipelineError(f"config key '{key}' = {value!r} has the wrong type: expected {_type_name(annotation)}")


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", str(annotation))
