"""Phase 4.9: phase 2.9's adapters swept over their coefficient on validation tasks, beside the baselines.

Arms, each at every c of `adapter_coefficients` (c = 0 is the unsteered greedy generation, generated once and shared):
- `svd_rotation`: seed 004's adapter at strength c; `lora`: the PEFT baseline at c; `random_same_norm`: the SVD
  adapter's control, random generators of the trained norms;
- `mean_difference`: phase 2.6's direction (at `steering_direction_position`, on the layer of `layers` nearest the
  lowest adapted one) added with alpha = c * alpha*, where alpha* is the alpha whose NLL rise on hyperparams
  programs (phase 3.6, `disruption_programs` of them) matches the SVD adapter's at c = 1: matched on another split,
  so nothing is chosen on the tasks reported;
- `prompting`: c = +1 a system prompt asking for careful, correct code, c = -1 one asking for quick code.
Every arm runs on the same `adapter_eval_tasks` validation tasks (a seeded draw; tasks with a program the sandbox
could not judge in any arm are left out of every arm). The NLL rise of each arm at each c is read teacher-forced on
the unsteered programs. Statistics: phase4_9/analysis.py. The primary endpoints, declared before any run: the SVD
adapter's pass at c = +1 against unsteered, and at c = -1 against unsteered (exact McNemar, Holm over the two);
every other figure, the comparisons between arms included, is exploratory. When phase 2.9 trained no adapter, the
summary alone says why (phase 5 then reports no adapter rows).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from common.answer_formats import answer_format
from common.direction_inference import holm
from common.directions import load_directions
from common.errors import PipelineError
from common.generation_job import WorkItem, generate_split
from common.interventions import Intervention, ResidualAddition, load_interventions
from common.logging import get_logger
from common.phase_run import PhaseRun
from common.program_pass import answer_text, record_programs
from common.prompt_utils import PromptBuilder, resolve_prompt_style
from common.statistics import rate
from common.utils import atomic_path, load_json, save_json
from common_simplified.model_loader import load_model_and_tokenizer
from phase4_9.analysis import arm_summary, effect_difference, mean_with_interval
from phase4_9.plots import plot_sweep

logger = get_logger("phase4_9")

CAREFUL = "You are a meticulous senior engineer. Think about edge cases and write careful, correct code."
QUICK = "You are in a hurry. Write the quickest code you can, without checking it."
BISECTIONS = 8  # halvings of the log-alpha bracket: within 2^-8 of its width
PRIMARY = ("plus_vs_unsteered", "minus_vs_unsteered")  # of the SVD adapter, declared before any run; Holm over
#                                                      both; every other figure is exploratory
ADAPTERS = {"svd_rotation": "adapter/svd_rotation", "lora": "adapter/lora",
            "random_same_norm": "adapter/random_same_norm"}


def run(phase: PhaseRun) -> Path | None:
    config = phase.config
    problems = pd.read_parquet(phase.upstream("0.1") / "validation.parquet")
    if len(problems) > config.adapter_eval_tasks:
        chosen = np.random.default_rng(config.seed).choice(len(problems), config.adapter_eval_tasks, replace=False)
        problems = problems.iloc[np.sort(chosen)].reset_index(drop=True)
    adapters = {a.name: a for a in load_interventions(phase.upstream("2.9") / "adapters.safetensors")}
    summary_path = phase.out_dir / "phase_4_9_summary.json"
    if set(ADAPTERS.values()) - set(adapters):
        reason = load_json(phase.upstream("2.9") / "phase_2_9_summary.json").get("no_adapter_reason")
        logger.warning("phase 4.9: no adapter to sweep (phase 2.9 trained none: %s)", reason)
        for stale in ("sweep_rows.parquet", "coefficient_sweep.png"):  # an earlier run's, with adapters
            (phase.out_dir / stale).unlink(missing_ok=True)
        save_json({"no_adapter_reason": f"phase 2.9 trained none ({reason})"}, summary_path)
        return phase.finish([summary_path])
    svd = adapters[ADAPTERS["svd_rotation"]]
    model, tokenizer = load_model_and_tokenizer(config.model_name, config.device, config.dtype)
    builder = PromptBuilder(resolve_prompt_style(config.prompt_style, tokenizer), tokenizer)
    matching = _matched_alpha(phase, model, tokenizer, builder, svd)
    addition = ResidualAddition(matching["direction"], matching["alpha"], "all")
    coefficients = sorted(float(c) for c in config.adapter_coefficients)
    steered = [c for c in coefficients if c != 0]
    arms: dict[str, dict[float, Intervention]] = {
        name: {c: adapters[label].at(c) for c in steered} for name, label in ADAPTERS.items()}
    arms["mean_difference"] = {c: addition.at(c * matching["alpha"]) for c in steered}
    prompts = {1.0: CAREFUL, -1.0: QUICK}

    def plan(records: list[dict[str, Any]]) -> list[WorkItem]:
        items = [WorkItem(r, 0, 0.0) for r in records]
        items += [WorkItem(r, 0, 0.0, intervention) for by_c in arms.values() for intervention in by_c.values()
                  for r in records]
        return items + [WorkItem(r, 0, 0.0, system_prompt=text) for text in prompts.values() for r in records]

    generated = generate_split(config, phase.spec, phase.inputs, problems, plan, "phase 4.9 (coefficient sweep)",
                               capture=False, loaded=(model, tokenizer))
    if generated is None:
        return None
    rows = pd.DataFrame(generated.rows)
    rows["intervention"] = rows.get("intervention", pd.Series("", index=rows.index)).fillna("")
    conditions = {name: {0.0: "", **{c: i.label for c, i in by_c.items()}} for name, by_c in arms.items()}
    conditions["prompting"] = {0.0: "", **{c: WorkItem({}, 0, 0.0, system_prompt=t).condition
                                           for c, t in prompts.items()}}
    judged = rows.groupby("task_id")["error_type"].apply(lambda e: not (e == "unsupported").any())
    tasks = [t for t in problems["task_id"] if judged.get(t, False)]
    by_task = {str(p["task_id"]): p for p in problems.to_dict("records")}
    rows["valid_code"] = [answer_format(by_task[str(t)]).is_attempt(code, by_task[str(t)])
                          for t, code in zip(rows["task_id"], rows["generated_code"])]
    table = rows.set_index(["intervention", "task_id"])

    base = table.loc[""].loc[tasks]
    nll = _NLLRise(model, tokenizer, builder, [(t, base.loc[t, "prompt"], base.loc[t, "raw_output"]) for t in tasks],
                   by_task, config.seed)
    summary: dict[str, Any] = {}
    outcomes: dict[str, np.ndarray] = {}
    for name, by_c in conditions.items():
        levels = sorted(by_c)
        outcomes[name] = np.array([[bool(table.loc[(by_c[c], t), "test_passed"]) for t in tasks] for c in levels])
        rises = {0.0: mean_with_interval(np.zeros(len(tasks)), config.seed)}
        for c in levels:
            if c != 0.0:
                rises[c] = nll.under(arms[name][c]) if name != "prompting" else nll.instructed(prompts[c])
        summary[name] = arm_summary(levels, outcomes[name], rises, config.seed)
        for c in levels:  # whether the output still holds code at all: the NLL of unsteered programs cannot say
            valid = [bool(table.loc[(by_c[c], t), "valid_code"]) for t in tasks]
            summary[name]["by_coefficient"][f"{c:g}"]["valid_code_rate"] = rate(sum(valid), len(tasks)).to_dict()
        logger.info("%s: effect %+.3f (%d tasks), rho %s, delta NLL %.3f, normalized gain %.1f", name,
                    summary[name]["effect"]["value"], len(tasks), summary[name]["rho"]["value"],
                    summary[name]["delta_nll"], summary[name]["normalized_gain"]["value"])
    three = [-1.0, 0.0, 1.0]
    for name in summary:  # every arm against the SVD adapter, paired on tasks, over the three levels all arms have
        if name != "svd_rotation":
            summary[name]["effect_minus_svd_rotation"] = effect_difference(
                three, _levels(outcomes[name], sorted(conditions[name]), three),
                _levels(outcomes["svd_rotation"], sorted(conditions["svd_rotation"]), three), config.seed)
    primary = {f"svd_rotation/{endpoint}": summary["svd_rotation"][endpoint]["mcnemar_p"] for endpoint in PRIMARY}
    primary_tests = {"endpoints": list(primary), "p": primary, "holm": holm(primary)}

    out_dir = phase.out_dir
    rows_path, plot_path = out_dir / "sweep_rows.parquet", out_dir / "coefficient_sweep.png"
    arm_of = {label: (name, c) for name, by_c in conditions.items() for c, label in by_c.items() if label}
    rows["arm"] = [arm_of.get(label, ("unsteered", 0.0))[0] for label in rows["intervention"]]
    rows["coefficient"] = [arm_of.get(label, ("unsteered", 0.0))[1] for label in rows["intervention"]]
    with atomic_path(rows_path) as tmp:
        rows.drop(columns=["prompt"]).to_parquet(tmp, index=False)
    plot_sweep(summary, plot_path)
    save_json({"no_adapter_reason": None, "adapter_arms": list(ADAPTERS), "primary": primary_tests,
               "n_tasks": len(tasks), "tasks_left_out_unjudged": len(problems) - len(tasks),
               "mean_difference_matching": {k: v for k, v in matching.items() if k != "direction"}
               | {"direction": matching["direction"].name},
               "prompts": {"careful (c = +1)": CAREFUL, "quick (c = -1)": QUICK},
               "generation": generated.report, "arms": summary}, summary_path)
    return phase.finish([rows_path, plot_path, summary_path])


class _NLLRise:
    """The unsteered programs read teacher-forced once unsteered, then under each condition: per program, the rise
    of the mean NLL of its tokens (nats per token)."""

    def __init__(self, model, tokenizer, builder: PromptBuilder, programs: Sequence[tuple[str, str, str]],
                 problems: dict[str, dict[str, Any]], seed: int):
        self.model, self.tokenizer, self.builder, self.seed = model, tokenizer, builder, seed
        self.programs, self.problems = programs, problems
        self.texts = [answer_text(prompt, raw, problems[str(t)]) for t, prompt, raw in programs]
        self.base = self._logprob(self.texts)

    def _logprob(self, texts) -> np.ndarray:
        recorded = record_programs(self.model, self.tokenizer, texts, [0], 1, self.builder.adds_special_tokens)
        return np.array([np.nan if v is None else v for v in recorded.columns["program_mean_logprob"]], dtype=float)

    def _rise(self, logprob: np.ndarray) -> dict[str, Any]:
        rise = self.base - logprob
        return mean_with_interval(rise[np.isfinite(rise)], self.seed)

    def under(self, intervention: Intervention) -> dict[str, Any]:
        with intervention.prefill_applied(self.model):
            return self._rise(self._logprob(self.texts))

    def instructed(self, system_prompt: str) -> dict[str, Any]:
        instructed = replace(self.builder, system_prompt=system_prompt)
        texts = [answer_text(instructed.build(self.problems[str(t)]), raw, self.problems[str(t)])
                 for t, _, raw in self.programs]
        return self._rise(self._logprob(texts))


def _levels(passed: np.ndarray, levels: Sequence[float], wanted: Sequence[float]) -> np.ndarray:
    return passed[[list(levels).index(c) for c in wanted]]


def _matched_alpha(phase: PhaseRun, model, tokenizer, builder: PromptBuilder, svd: Intervention) -> dict[str, Any]:
    """Phase 2.6's mean-difference direction and the alpha whose NLL rise on hyperparams programs matches the SVD
    adapter's at c = 1: the grid point nearest, or where two grid points bracket the target, log alpha bisected
    between them."""
    config = phase.config
    lowest = min(w.layer for w in svd.weights)
    layer = min(config.layers, key=lambda L: (abs(L - lowest), L))
    found = [d for d in load_directions(phase.upstream("2.6") / "directions.safetensors")
             if d.source == "mean_difference" and d.layer == layer and d.position == config.steering_direction_position]
    if not found:
        raise PipelineError(f"phase 2.6 wrote no mean-difference direction at {config.steering_direction_position}, "
                            f"layer {layer}: rerun it with that position and layer configured")
    baseline = pd.read_parquet(phase.upstream("3.6") / "dataset_hyperparams_temp_0_0.parquet")
    baseline = baseline[baseline["program_error"].isna()].head(config.disruption_programs)
    problems = pd.read_parquet(phase.upstream("0.1") / "hyperparams.parquet")
    by_task = {str(p["task_id"]): p for p in problems.to_dict("records")}
    nll = _NLLRise(model, tokenizer, builder, list(zip(baseline["task_id"], baseline["prompt"],
                                                       baseline["raw_output"])), by_task, config.seed)
    target = nll.under(svd.at(1.0))["mean"]
    alphas = sorted(config.calibration_alphas)
    addition = ResidualAddition(found[0], 1.0, "all")
    rises = [nll.under(addition.at(alpha))["mean"] for alpha in alphas]
    alpha = alphas[int(np.argmin([abs(r - target) for r in rises]))]
    for (low, r_low), (high, r_high) in zip(zip(alphas, rises), zip(alphas[1:], rises[1:])):
        if r_low <= target <= r_high:  # bisect log alpha inside the first bracket
            for _ in range(BISECTIONS):
                alpha = float(np.sqrt(low * high))
                low, high = (alpha, high) if nll.under(addition.at(alpha))["mean"] < target else (low, alpha)
            alpha = float(np.sqrt(low * high))
            break
    matched = nll.under(addition.at(alpha))["mean"]
    logger.info("mean difference at layer %d: alpha %.3g matches the SVD adapter's NLL rise %.3f (%.3f) on %d "
                "hyperparams programs", layer, alpha, target, matched, len(baseline))
    return {"direction": found[0], "alpha": alpha, "layer": layer, "target_delta_nll": target,
            "matched_delta_nll": matched, "grid": dict(zip(map(str, alphas), rises)), "n_programs": len(baseline)}
