"""Phase 2.8s: style vectors, seed 002's own use of KV-cache steering, and a test of whether they steer.

The questions of phase2_8s/styles.py are split once by the seed: `HELD_OUT_QUESTIONS` of them are held out, the
rest build the vectors. A teacher (phase2_8s/teacher.py: the local model, or `teacher_url`) answers each building
question under each style's prompt and under the neutral prompt. The model reads every answer after the question
with the neutral prompt, and per layer of `kv_layers` the style's vector is the mean over questions of (styled minus
neutral) keys and values at the answer's last token (common/kv_vectors.py, also in the seed's layout).

Does it steer? Its unit edit (common/interventions/kv_cache.py) and `RANDOM_EDITS` random edits with its per-layer
norms (each style its own draws) are each calibrated to `style_disruption` nats per token on the neutral answers to
the building questions (as in phases 4.5 and 4.8: equal disturbance, so "more style" is not just "more change"). On
the held-out questions, asked with the neutral prompt: the style statistic of the answers unsteered, steered, with
the random edits (their mean per question), and with the style's own prompt (what asking achieves). Each comparison
is paired by question, the unit that varies: the mean difference with a 95% t interval (12 questions: a percentile
bootstrap would be too narrow), and how many questions moved each way. The one that says the vector carries the
style is steered minus random.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from scipy import stats

from common.controls import random_kv_controls
from common.disruption import matched_alphas, teacher_texts
from common.errors import PipelineError
from common.generation import EngineSettings, GenerationRequest, generate
from common.interventions import KVCacheEdit
from common.kv_vectors import extract_deltas, kv_layers, save_vector
from common.logging import get_logger
from common.phase_run import PhaseRun
from common.program_pass import ProgramText, record_last_keys_values
from common.prompt_utils import resolve_prompt_style
from common.utils import save_json
from common_simplified.model_loader import load_model_and_tokenizer
from phase2_8s.plots import plot_style_effects
from phase2_8s.styles import HELD_OUT_QUESTIONS, NEUTRAL_PROMPT, QUESTIONS, RANDOM_EDITS, STYLES, Style
from phase2_8s.teacher import chat_prompt, endpoint_answers, local_answers

logger = get_logger("phase2_8s")

RANDOM_SEED_STEP = 1000  # between the seeds of two styles' random edits
COMPARISONS = (("steered", "steered", "unsteered"), ("random_edit", "random_edit", "unsteered"),
               ("prompted", "prompted", "unsteered"), ("steered_minus_random", "steered", "random_edit"))  # (name,
#               arm, what it is compared with), paired by question


def run(phase: PhaseRun) -> Path:
    config = phase.config
    unknown = [name for name in config.style_names if name not in STYLES]
    if unknown:
        raise PipelineError(f"style_names: unknown style {', '.join(unknown)} (known: {', '.join(STYLES)})")
    model, tokenizer = load_model_and_tokenizer(config.model_name, config.device, config.dtype)
    chat = resolve_prompt_style(config.prompt_style, tokenizer) == "chat"
    layers = kv_layers(config, model)
    order = np.random.default_rng(config.seed).permutation(len(QUESTIONS))
    held_out = [QUESTIONS[i] for i in sorted(order[:HELD_OUT_QUESTIONS])]
    building = [QUESTIONS[i] for i in sorted(order[HELD_OUT_QUESTIONS:])]
    styles = [STYLES[name] for name in config.style_names]

    def answers(system: str, questions: Sequence[str]) -> list[str]:
        if config.teacher_url:
            return endpoint_answers(config.teacher_url, config.teacher_model, system, questions,
                                    config.style_max_tokens)
        return local_answers(model, tokenizer, system, questions, chat, config.style_max_tokens, config.batch_size)

    neutral = answers(NEUTRAL_PROMPT, building)
    neutral_prompts = [chat_prompt(tokenizer, NEUTRAL_PROMPT, q, chat) for q in building]
    neutral_read = _read(model, tokenizer, neutral_prompts, neutral, layers, chat)  # once for every style
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
        styled_read = _read(model, tokenizer, neutral_prompts, styled, layers, chat)
        edit, record, usable = _style_vector(style, styled, neutral, differ, styled_read, neutral_read, layers,
                                             config)
        pairs = [{"question": q, "positive": p, "negative": n, "positive_prompt": style.prompt,
                  "negative_prompt": NEUTRAL_PROMPT} for q, p, n, u in zip(building, styled, neutral, usable) if u]
        template = {"positive_prompt": style.prompt, "negative_prompt": NEUTRAL_PROMPT,
                    "statistic": style.statistic_name}
        outputs += save_vector(out_dir, edit, pairs, record, template)
        unit = edit.unit()
        own_seed = config.seed + RANDOM_SEED_STEP * list(STYLES).index(style.name)  # by the registry, not the config
        randoms = [c.unit for c in random_kv_controls(unit, RANDOM_EDITS, own_seed)]
        alphas, _ = matched_alphas(model, texts, [unit, *randoms], [config.style_disruption],
                                   config.calibration_alphas, progress=False)
        edits[style.name] = [(arm, u.at(float(a))) for arm, u, a in zip(["steered"] + ["random_edit"] * RANDOM_EDITS,
                                                                         [unit, *randoms], alphas[:, 0])
                             if np.isfinite(a)]
        summary["styles"][style.name] = {**record, "alpha": _finite(alphas[0, 0]),
                                         "random_edit_alphas": [_finite(a) for a in alphas[1:, 0]]}
    styles = [style for style in styles if style.name in edits]
    answered = _held_out_answers(model, tokenizer, styles, held_out, edits, chat, config) if styles else {}
    for style in styles:
        summary["styles"][style.name]["held_out"] = _effects(style, answered[style.name])
        effect = summary["styles"][style.name]["held_out"]["differences"]
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


def _read(model, tokenizer, prompts: Sequence[str], answers: Sequence[str], layers: list[int], chat: bool
          ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Keys and values at each answer's last token, read after its prompt (common/program_pass.py)."""
    texts = [ProgramText(prompt, answer, (0, len(answer))) for prompt, answer in zip(prompts, answers)]
    return record_last_keys_values(model, tokenizer, texts, layers, not chat)


def _style_vector(style: Style, styled: Sequence[str], neutral: Sequence[str], differ: Sequence[bool],
                  styled_read: tuple[torch.Tensor, torch.Tensor, np.ndarray],
                  neutral_read: tuple[torch.Tensor, torch.Tensor, np.ndarray], layers: list[int], config
                  ) -> tuple[KVCacheEdit, dict[str, Any], np.ndarray]:
    """The style's mean (styled minus neutral) keys and values over the questions whose two answers differ (and were
    read: an empty answer has no last token), each answer read after the neutral prompt; the record; those
    questions."""
    usable = styled_read[2] & neutral_read[2] & np.asarray(differ, dtype=bool)
    positive = {"keys": styled_read[0], "values": styled_read[1]}
    negative = {"keys": neutral_read[0], "values": neutral_read[1]}
    key_delta, value_delta, clusters = extract_deltas(positive, negative, usable, config.kv_aggregation,
                                                      config.kv_clusters, config.seed)
    edit = KVCacheEdit(style.name, tuple(layers), key_delta, value_delta, 1.0, config.kv_key_weight, 1.0,
                       {"source": f"style/{style.name}", "phase": "2.8s", "n_pairs": int(usable.sum())})
    statistic = {"styled": float(np.mean([style.statistic(a) for a in styled])),
                 "neutral": float(np.mean([style.statistic(a) for a in neutral]))}
    return edit, {"n_pairs": int(usable.sum()), "aggregation": config.kv_aggregation, "clusters": clusters,
                  "value_delta_norms": value_delta.flatten(1).norm(dim=1).tolist(),
                  "statistic": style.statistic_name, "teacher_statistic_mean": statistic}, usable


def _held_out_answers(model, tokenizer, styles: Sequence[Style], questions: Sequence[str],
                      edits: dict[str, list[tuple[str, KVCacheEdit]]], chat: bool, config
                      ) -> dict[str, dict[str, list[list[str]]]]:
    """Every arm's answers to the held-out questions (a list per edit; one for "unsteered", "steered" and "prompted",
    one per random edit that reaches the level), one engine run; the unsteered answers are shared by the styles."""
    neutral = [chat_prompt(tokenizer, NEUTRAL_PROMPT, q, chat) for q in questions]
    requests = [GenerationRequest(p, key=("", "unsteered", 0, i)) for i, p in enumerate(neutral)]
    for style in styles:
        requests += [GenerationRequest(p, intervention=edit, key=(style.name, arm, j, i))
                     for j, (arm, edit) in enumerate(edits[style.name]) for i, p in enumerate(neutral)]
        requests += [GenerationRequest(chat_prompt(tokenizer, style.prompt, q, chat),
                                       key=(style.name, "prompted", 0, i)) for i, q in enumerate(questions)]
    texts: dict[tuple[str, str, int], list[str]] = {}
    for result in generate(model, tokenizer, requests, EngineSettings(config.style_max_tokens, config.batch_size, (),
                                                                       not chat)):
        name, arm, j, i = result.request.key
        texts.setdefault((name, arm, j), [""] * len(questions))[i] = result.text.strip()
    return {style.name: {arm: [answers for (name, a, _), answers in sorted(texts.items())
                               if a == arm and name == (style.name if arm != "unsteered" else "")]
                         for arm in ("unsteered", "steered", "random_edit", "prompted")} for style in styles}


def _effects(style: Style, answers: dict[str, list[list[str]]]) -> dict[str, Any]:
    """Per arm, the statistic per question (averaged over the arm's edits) and its mean; per comparison, the mean
    difference paired by question with a 95% t interval, and how many questions moved up and down."""
    per_question = {arm: np.mean([[style.statistic(a) for a in edit] for edit in edits], axis=0)
                    for arm, edits in answers.items() if edits}
    differences = {}
    for name, arm, reference in COMPARISONS:
        if arm not in per_question or reference not in per_question:
            continue
        difference = per_question[arm] - per_question[reference]
        n = len(difference)
        half = stats.t.ppf(0.975, n - 1) * difference.std(ddof=1) / np.sqrt(n) if n > 1 else np.nan
        differences[name] = {"mean_difference": float(difference.mean()), "low": float(difference.mean() - half),
                             "high": float(difference.mean() + half), "n_questions": n,
                             "n_higher": int((difference > 0).sum()), "n_lower": int((difference < 0).sum())}
    return {"mean": {arm: float(v.mean()) for arm, v in per_question.items()},
            "n_random_edits": len(answers.get("random_edit", [])), "differences": differences}


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
