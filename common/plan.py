"""What `python run.py pipeline` is about to do, and roughly how long it will take.

Each phase's work is counted in its own unit (generations, SAE training tokens, or one run of a
phase whose cost hardly depends on the config) from the config and whatever upstream outputs
already exist; the time is that count times a rate measured on the reference machine (2 cores,
no GPU: README, "Performance"). On another machine the estimate scales with its speed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from common.config import Config
from common.controls import CONTROL_TYPES
from common.methods import get_method
from common.phases import PhaseSpec
from common.utils import load_json, manifest_path
from phase2_8s.styles import HELD_OUT_QUESTIONS, QUESTIONS, RANDOM_EDITS

# Seconds per unit: each phase's wall time over its units in the default pipeline runs of 2026-12-01 on the
# reference machine (README, "Performance"); the generating phases include the teacher-forced pass over their
# programs (activations over the code). Phase 2.0's unit is a token recorded or trained on. Phase 2.8s's was
# measured beside a running pipeline (2026-12-02), so it overstates an idle machine's; 2.9's and 4.9's on 2026-12-02.
# Phase 5 reads files and writes the report: 3 s on the quick profile (1008 steered programs in its viewer).
REFERENCE_SECONDS_PER_UNIT = {
    "0": 2.0, "0.1": 0.1, "1": 1.29, "2.0": 4.17e-4, "2.5": 12.0, "2.6": 1.4, "2.7": 0.23, "2.8": 0.18, "2.8s": 7.8,
    "2.9": 6.4, "3.5": 1.84, "3.6": 1.64,
    "3.8": 36.0, "3.9": 183.0, "4.5": 0.50, "4.8": 0.68, "4.9": 0.73, "5": 10.0,
}
OWN_PAIR_TASK_SHARE = 0.34  # of sae tasks with both a passing and a failing program (84 of 250 in the default run)
DATASET_SIZES = {"humaneval": 164, "mbpp/full": 974, "mbpp/sanitized": 427,
                 "mcq": 12723}  # before phase 0 has counted them (mcq: MedQA-USMLE 4-option, every split)


@dataclass(frozen=True)
class PhaseEstimate:
    spec: PhaseSpec
    units: float
    unit_name: str
    seconds: float


def estimate(config: Config, specs: Sequence[PhaseSpec]) -> list[PhaseEstimate]:
    sizes = split_sizes(config)
    estimates = []
    for spec in specs:
        units, unit_name = _work(config, spec, sizes)
        estimates.append(PhaseEstimate(spec, units, unit_name, units * REFERENCE_SECONDS_PER_UNIT[spec.id]))
    return estimates


def plan_lines(config: Config, specs: Sequence[PhaseSpec]) -> list[str]:
    """One line per phase to run and a total, for the log before anything starts."""
    estimates = estimate(config, specs)
    lines = [f"plan: {len(estimates)} phase(s) to run; times from rates measured on a 2-core CPU"]
    for e in estimates:
        lines.append(f"  phase {e.spec.id:<4} {'~' + _minutes(e.seconds):>9}  {e.units:>9,.0f} {e.unit_name:<12} "
                     f"{e.spec.title}")
    lines.append(f"  total ~{_minutes(sum(e.seconds for e in estimates))}")
    return lines


def split_sizes(config: Config) -> dict[str, int]:
    """Problems in the sae / hyperparams / validation splits: counted if phase 0.1 ran, else from the config."""
    split_file = manifest_path(config.data_dir, "0.1").parent / "split_metadata.json"
    if manifest_path(config.data_dir, "0.1").is_file() and split_file.is_file():
        return {name: split["n_problems"] for name, split in load_json(split_file)["splits"].items()}
    n_problems = _n_problems(config)
    return {name: round(n_problems * fraction)
            for name, fraction in zip(("sae", "hyperparams", "validation"), config.split_fractions)}


def _n_problems(config: Config) -> int:
    summary = manifest_path(config.data_dir, "0").parent / "phase_0_summary.json"
    if manifest_path(config.data_dir, "0").is_file() and summary.is_file():
        return int(load_json(summary)["n_problems"])
    if config.dataset == "synthetic":
        return config.n_tasks
    key = "mbpp/" + config.mbpp_variant if config.dataset == "mbpp" else config.dataset
    return DATASET_SIZES.get(key, config.n_tasks)


def _work(config: Config, spec: PhaseSpec, sizes: dict[str, int]) -> tuple[float, str]:
    """(units, unit name) of one phase's work."""
    if spec.id == "1":
        return sizes["sae"] * (1 + config.samples_per_task), "generations"
    if spec.id == "3.5":
        return sizes["validation"] * (1 + len(config.temperatures) * config.samples_per_temperature), "generations"
    if spec.id == "3.6":
        return sizes["hyperparams"], "generations"
    own_sets = sum(get_method(name).controls is not None for name in config.methods)
    control_sets = own_sets + (own_sets < len(config.methods))  # each method's own, and the shared one if used
    if spec.id == "4.5":  # two classes per method and every set's selection controls, at every level and problem
        arms = 2 * len(config.methods) + control_sets * len(CONTROL_TYPES) * config.selection_controls_per_type
        return arms * len(config.disruption_levels) * sizes["hyperparams"], "generations"
    if spec.id == "4.8":  # each method-class and its minus-alpha arm, alpha 0, and the controls of each (set, level)
        arms = 4 * len(config.methods) + 1  # at most one per method-class, at least one (all pre-registered)
        levels = min(2 * len(config.methods), len(set(config.disruption_levels) | {config.preregistered_level}))
        controls = len(CONTROL_TYPES) * config.controls_per_type * config.control_tasks
        return arms * sizes["validation"] + min(levels * control_sets, 2 * len(config.methods)) * controls, (
            "generations (at most)")
    if spec.id == "2.9":  # two trainings; the reference direction and the held-out reads are in the rate
        return 2 * config.adapter_max_steps, "steps"
    if spec.id == "4.9":  # unsteered once, four arms at each non-zero coefficient, two prompts
        steered = sum(c != 0 for c in config.adapter_coefficients)
        return min(config.adapter_eval_tasks, sizes["validation"]) * (1 + 4 * steered + 2), "generations"
    if spec.id == "2.8s":  # the teacher's answers (local model) and every held-out arm's
        n_styles = len(config.style_names)
        teacher = 0 if config.teacher_url else (1 + n_styles) * (len(QUESTIONS) - HELD_OUT_QUESTIONS)
        return teacher + (1 + (2 + RANDOM_EDITS) * n_styles) * HELD_OUT_QUESTIONS, "answers"  # unsteered once;
        #                                                       per style steered, its random edits, prompted
    if spec.id in ("2.7", "2.8"):  # both sides of each pair
        own_pairs = OWN_PAIR_TASK_SHARE * config.contrastive_own_pairs_per_task
        return 2 * sizes["sae"] * (config.contrastive_mutants_per_task + own_pairs), "programs"
    if spec.id == "2.0":
        if config.sae_source != "train":
            return 1, "run"
        return config.sae_train_tokens * (1 + len(config.layers) * config.sae_epochs), "tokens"
    return 1, "run"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
