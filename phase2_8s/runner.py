"""Phase 2.8s: style vectors, seed 002's own use of KV-cache steering, and a test of whether they steer.

The questions of phase2_8s/styles.py are split once by the seed: `STYLE_HELD_OUT` of them are held out, the rest
build the vectors. A teacher (phase2_8s/teacher.py: the local model, or `teacher_url`) answers each building
question under each style's prompt and under the neutral prompt. The model reads every answer after the question
with the neutral prompt, and per layer of `kv_layers` the style's vector is the mean over questions of (styled minus
neutral) keys and values at the answer's last token (common/kv_vectors.py, also in the seed's layout).

Does it steer? Its unit edit (common/interventions/kv_cache.py) and a random edit with its per-layer norms are each
calibrated to `style_disruption` nats per token on the neutral answers to the building questions (the calibration
of phases 4.5 and 4.8: equal disturbance, so "more style" is not just "more change"). On the held-out questions,
asked with the neutral prompt: the style statistic of the answers unsteered, steered, with the random edit, and
with the style's own prompt (what asking achieves); each arm's mean difference from unsteered, paired by question,
with a 95% bootstrap interval over questions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from common.classification import group_bootstrap_counts
from common.contrastive_pairs import ACCURACY_RESAMPLES
from common.controls import random_kv_controls
from common.disruption import matched_alphas, teacher_texts
from common.errors import PipelineError
from common.generation import EngineSettings, GenerationRequest, generate
from common.interventions import KVCacheEdit
from common.kv_vectors import default_layers, extract_deltas, save_vector
from common.logging import get_logger
from common.phase_run import PhaseRun
from common.program_pass import ProgramText, record_last_keys_values
from common.utils import save_json
from common_simplified.model_loader import load_model_and_tokenizer
from phase2_8s.plots import plot_style_effects
from phase2_8s.styles import NEUTRAL_PROMPT, QUESTIONS, STYLES, Style
from phase2_8s.teacher import chat_prompt, endpoint_answers, local_answers

logger = get_logger("phase2_8s")

STYLE_HELD_OUT = 12  # questions never used to build a vector
ARMS = ("unsteered", "steered", "random_edit", "prompted")


def run(phase: PhaseRun) -> Path:
    config = phase.config
    unknown = [name for name in config.style_names if name not in STYLES]
    if unknown:
        raise PipelineError(f"style_names: unknown style {', '.join(unknown)} (known: {', '.join(STYLES)})")
    model, tokenizer = load_model_and_tokenizer(config.model_name, config.device, config.dtype)
    chat = bool(getattr(tokenizer, "chat_template", None))
    layers = config.kv_layers if config.kv_layers is not None else default_layers(model.config.num_hidden_layers)
    order = np.random.default_rng(config.seed).permutation(len(QUESTIONS))
    held_out = [QUESTIONS[i] for i in sorted(order[:STYLE_HELD_OUT])]
    building = [QUESTIONS[i] for i in sorted(order[STYLE_HELD_OUT:])]
    styles = [STYLES[name] for name in config.style_names]

    def answers(system: str, questions: Sequence[str]) -> list[str]:
        if config.teacher_url:
            return endpoint_answers(config.teacher_url, config.teacher_model, system, questions, config.style_max_tokens)
        return local_answers(model, tokenizer, system, questions, config.style_max_tokens)

    neutral = answers(NEUTRAL_PROMPT, building)
    neutral_prompts = [chat_prompt(tokenizer, NEUTRAL_PROMPT, q) for q in building]
    texts = teacher_texts(tokenizer, neutral_prompts, neutral, not chat, config.disruption_max_tokens)
    out_dir = phase.out_dir
    outputs, edits, summary = [], {}, {"layers": layers, "teacher": config.teacher_url or "local model",
                                       "n_building": len(building), "n_held_out": len(held_out),
                                       "disruption": config.style_disruption, "styles": {}}
    for style in styles:
        styled = answers(style.prompt, building)
        differ = [a != b for a, b in zip(styled, neutral)]
        if not any(differ):  # a teacher that ignores the style prompt: no contrast, no vector
            reason = f"the teacher answered all {len(building)} questions alike with and without the style prompt"
            logger.warning("%s: no vector (%s)", style.name, reason)
            summary["styles"][style.name] = {"skipped": reason}
            continue
        edit, record = _style_vector(model, tokenizer, style, building, styled, neutral, differ, layers, config)
        pairs = [{"question": q, "positive": p, "negative": n, "positive_prompt": style.prompt,
                  "negative_prompt": NEUTRAL_PROMPT} for q, p, n in zip(building, styled, neutral)]
        template = {"positive_prompt": style.prompt, "negative_prompt": NEUTRAL_PROMPT,
                    "statistic": style.statistic_name}
        outputs += save_vector(out_dir, edit, pairs, record, template)
        unit = edit.unit()
        control = random_kv_controls(unit, 1, config.seed)[0].unit
        alphas, _ = matched_alphas(model, texts, [unit, control], [config.style_disruption], config.calibration_alphas,
                                   progress=False)
        edits[style.name] = {"steered": alphas[0, 0], "random_edit": alphas[1, 0], "units": (unit, control)}
        summary["styles"][style.name] = {**record, "alpha": _finite(alphas[0, 0]),
                                         "random_edit_alpha": _finite(alphas[1, 0])}
    styles = [style for style in styles if style.name in edits]
    answered = _held_out_answers(model, tokenizer, styles, held_out, edits, chat, config) if styles else {}
    for style in styles:
        summary["styles"][style.name]["held_out"] = _effects(style, answered[style.name], config.seed)
        effect = summary["styles"][style.name]["held_out"]["versus_unsteered"]
        logger.info("%s (%s): %s", style.name, style.statistic_name, "; ".join(
            f"{arm} {e['mean_difference']:+.2f} [{e['low']:+.2f}, {e['high']:+.2f}]" for arm, e in effect.items()))
    answers_path = out_dir / "held_out_answers.json"
    save_json({"questions": held_out, "answers": answered}, answers_path)
    plot_path = out_dir / "style_effects.png"
    plot_path.unlink(missing_ok=True)  # a figure of an earlier run must not outlive it
    if styles:
        plot_style_effects({style.name: summary["styles"][style.name] for style in styles}, plot_path)
        outputs.append(plot_path)
    summary_path = out_dir / "phase_2_8s_summary.json"
    save_json(summary, summary_path)
    return phase.finish([*outputs, answers_path, summary_path])


def _style_vector(model, tokenizer, style: Style, questions: Sequence[str], styled: Sequence[str],
                  neutral: Sequence[str], differ: Sequence[bool], layers: list[int], config
                  ) -> tuple[KVCacheEdit, dict[str, Any]]:
    """The style's mean (styled minus neutral) keys and values over the questions whose two answers differ, each
    answer read after the neutral prompt."""
    chat = bool(getattr(tokenizer, "chat_template", None))
    prompts = [chat_prompt(tokenizer, NEUTRAL_PROMPT, q) for q in questions]
    texts = [ProgramText(p, a, None) for p, a in zip(prompts, styled)] + [
        ProgramText(p, a, None) for p, a in zip(prompts, neutral)]
    keys, values, read = record_last_keys_values(model, tokenizer, texts, layers, not chat, whole_output=True)
    n = len(questions)
    usable = read[:n] & read[n:] & np.asarray(differ, dtype=bool)
    positive = {"keys": keys[:n], "values": values[:n]}
    negative = {"keys": keys[n:], "values": values[n:]}
    key_delta, value_delta, clusters = extract_deltas(positive, negative, usable, config.kv_aggregation,
                                                      config.kv_clusters, config.seed)
    edit = KVCacheEdit(style.name, tuple(layers), key_delta, value_delta, 1.0, config.kv_key_weight, 1.0,
                       {"source": f"style/{style.name}", "phase": "2.8s", "n_pairs": int(usable.sum())})
    statistic = {"styled": float(np.mean([style.statistic(a) for a in styled])),
                 "neutral": float(np.mean([style.statistic(a) for a in neutral]))}
    return edit, {"n_pairs": int(usable.sum()), "aggregation": config.kv_aggregation, "clusters": clusters,
                  "value_delta_norms": value_delta.flatten(1).norm(dim=1).tolist(),
                  "statistic": style.statistic_name, "teacher_statistic_mean": statistic}


def _held_out_answers(model, tokenizer, styles: Sequence[Style], questions: Sequence[str],
                      edits: dict[str, dict[str, Any]], chat: bool, config) -> dict[str, dict[str, list]]:
    """Every arm's answer to every held-out question, one engine run: the unsteered answers are shared by the styles,
    and an arm whose edit cannot reach the disruption level gets none."""
    neutral = [chat_prompt(tokenizer, NEUTRAL_PROMPT, q) for q in questions]
    requests = [GenerationRequest(p, key=("", "unsteered", i)) for i, p in enumerate(neutral)]
    for style in styles:
        units = dict(zip(("steered", "random_edit"), edits[style.name]["units"]))
        for arm, unit in units.items():
            alpha = edits[style.name][arm]
            if np.isfinite(alpha):
                requests += [GenerationRequest(p, intervention=unit.at(float(alpha)), key=(style.name, arm, i))
                             for i, p in enumerate(neutral)]
        requests += [GenerationRequest(chat_prompt(tokenizer, style.prompt, q), key=(style.name, "prompted", i))
                     for i, q in enumerate(questions)]
    texts: dict[tuple[str, str], list[str | None]] = {}
    for result in generate(model, tokenizer, requests, EngineSettings(config.style_max_tokens, config.batch_size, (), not chat)):
        name, arm, i = result.request.key
        texts.setdefault((name, arm), [None] * len(questions))[i] = result.text.strip()
    return {style.name: {arm: texts.get((style.name if arm != "unsteered" else "", arm)) for arm in ARMS}
            for style in styles}


def _effects(style: Style, answers: dict[str, list | None], seed: int) -> dict[str, Any]:
    """Each arm's mean statistic, and its mean difference from unsteered paired by question with a 95% bootstrap
    interval over questions."""
    values = {arm: np.array([style.statistic(a) for a in texts]) for arm, texts in answers.items() if texts}
    base = values["unsteered"]
    counts = group_bootstrap_counts(np.arange(len(base)), ACCURACY_RESAMPLES, seed)
    versus = {}
    for arm in ARMS[1:]:
        if arm not in values:
            continue
        difference = values[arm] - base
        draws = counts @ difference / counts.sum(1)
        low, high = np.percentile(draws, [2.5, 97.5])
        versus[arm] = {"mean_difference": float(difference.mean()), "low": float(low), "high": float(high),
                       "n_questions": len(difference), "n_higher": int((difference > 0).sum()),
                       "n_lower": int((difference < 0).sum())}
    return {"mean": {arm: float(v.mean()) for arm, v in values.items()}, "versus_unsteered": versus}


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
