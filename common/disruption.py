"""How much an intervention disturbs the model, measured without generating anything.

Disruption = the mean, over the tokens of baseline programs (the model's own unsteered outputs on the
hyperparams split), of KL(unsteered next-token distribution || steered one), teacher-forced: the
same text is read with and without the intervention. It is cheap (one pass per program, every
intervention of a layer in one batch, the layers below the steered one replayed from the unsteered
pass) and it puts every method and every control on one axis, so "beats its controls" can mean "at
the same disturbance" rather than "at the same alpha" (a random push and a learned one of equal norm
can disturb the model by very different amounts).

Any intervention kind is measured through its protocol (common/interventions/base.py), as generation applies it:
its prefill of the prompt (the first output token is predicted there), its `after_prefill` step, then the output
read in one pass with its decode applier on. Residual additions take a faster path with the same result (a test
checks both agree): every intervention of a layer in one batch over the whole text.

`matched_alphas` calibrates a residual addition's strength to a disruption level: the disruption is
measured on a geometric grid of alphas and log-disruption interpolated in log-alpha (made monotone
first; disruption grows with alpha but the measurement can wobble at the top).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from transformers import DynamicCache

from common.hooks import cache_keyword, decoder_layers, layer_forward_hooks, layer_output, with_hidden
from common.interventions import DecodeAppliers, Intervention
from common.interventions.residual import ResidualAddition, position_weights
from common.prefill import Prefill, Prefiller, PrefillStats, replaying

ROWS_PER_PASS = 16  # interventions read together over one program: bounds the logits' memory


@dataclass(frozen=True)
class TeacherText:
    """One baseline program as the model reads it back: prompt tokens, then its output text re-tokenised (capped).
    Re-tokenising can split a few spots differently from the tokens sampled; both arms read the same ids."""
    prompt_ids: tuple[int, ...]
    output_ids: tuple[int, ...]


def teacher_texts(tokenizer, prompts: Sequence[str], outputs: Sequence[str], add_special_tokens: bool,
                  max_output_tokens: int) -> list[TeacherText]:
    texts = []
    for prompt, output in zip(prompts, outputs):
        output_ids = tokenizer(output, add_special_tokens=False)["input_ids"][:max_output_tokens]
        if output_ids:
            texts.append(TeacherText(tuple(tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]),
                                     tuple(output_ids)))
    return texts


@contextlib.contextmanager
def _rows_added(model: torch.nn.Module, layer: int, vectors: torch.Tensor, weights: torch.Tensor) -> Iterator[None]:
    """Row i of the batch gets vectors[i] at every position where weights[i] is 1 ([rows, seq, 1])."""

    def hook(_module, _inputs, output):
        hidden = layer_output(output)
        return with_hidden(output, hidden + weights.to(hidden.dtype) * vectors.to(hidden.dtype)[:, None, :])

    with layer_forward_hooks(model, {layer: hook}):
        yield


def _expanded(output: Any, rows: int) -> Any:
    return with_hidden(output, layer_output(output).expand(rows, -1, -1))


def disruption(model: torch.nn.Module, texts: Sequence[TeacherText], interventions: Sequence[Intervention],
               progress: bool = True) -> np.ndarray:
    """Mean KL per output token (nats), one value per intervention, of any kinds: residual additions measured
    together per layer and position policy, every other intervention through its protocol."""
    groups: dict[tuple[int, str] | None, list[int]] = {}
    for i, intervention in enumerate(interventions):
        key = ((intervention.direction.layer, intervention.positions) if isinstance(intervention, ResidualAddition)
               else None)
        groups.setdefault(key, []).append(i)
    measured = np.empty(len(interventions))
    for key, rows in groups.items():
        measure = _protocol_kl if key is None else _residual_kl
        measured[rows] = measure(model, texts, [interventions[i] for i in rows], progress)
    return measured


@torch.inference_mode()
def _residual_kl(model: torch.nn.Module, texts: Sequence[TeacherText], interventions: Sequence[ResidualAddition],
                 progress: bool) -> np.ndarray:
    """Residual additions of one layer and position policy, the layers below it replayed from the unsteered pass."""
    layer, positions = interventions[0].direction.layer, interventions[0].positions
    device = next(model.parameters()).device
    vectors = torch.stack([i.added for i in interventions]).to(device)
    total_kl = torch.zeros(len(interventions), dtype=torch.float64)
    n_tokens = 0
    n_layers = len(decoder_layers(model))
    for text in tqdm(texts, desc="disruption", unit="program", disable=not progress, leave=False):
        ids = torch.tensor([text.prompt_ids + text.output_ids], device=device)
        n_out = len(text.output_ids)
        outputs: dict[int, Any] = {}
        recorders = {i: (lambda i: lambda _m, _in, out: outputs.__setitem__(i, out))(i) for i in range(n_layers)}
        with layer_forward_hooks(model, recorders):
            base = model(input_ids=ids, use_cache=False, logits_to_keep=n_out + 1).logits[0, :-1].float()
        base_log_p = torch.log_softmax(base, dim=-1)
        base_p = base_log_p.exp()
        prompt_mask = torch.ones(1, len(text.prompt_ids), dtype=torch.bool, device=device)
        for start in range(0, len(interventions), ROWS_PER_PASS):
            chunk = vectors[start:start + ROWS_PER_PASS]
            rows = chunk.shape[0]
            hidden = torch.empty(rows, ids.shape[1], 1, device=device)
            weights = position_weights(hidden, prompt_mask.expand(rows, -1), positions)
            replayed = [_expanded(outputs[i], rows) for i in range(layer + 1)]
            with replaying(model, replayed, layer), _rows_added(model, layer, chunk, weights):
                logits = model(input_ids=ids.expand(rows, -1), use_cache=False, logits_to_keep=n_out + 1).logits
            steered_log_p = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            kl = (base_p[None] * (base_log_p[None] - steered_log_p)).sum(dim=-1).clamp_min(0.0)
            total_kl[start:start + rows] += kl.sum(dim=1).double().cpu()
        n_tokens += n_out
    return (total_kl / max(n_tokens, 1)).numpy()


@torch.inference_mode()
def _protocol_kl(model: torch.nn.Module, texts: Sequence[TeacherText], interventions: Sequence[Intervention],
                 progress: bool) -> np.ndarray:
    """Any kind, as the engine applies it: per text, each intervention's prefill of the prompt (the unsteered one
    itself, or a pass replaying it below the intervention's first layer; common/prefill.py) and `after_prefill`;
    then the output read over their caches with the kinds' decode appliers on (on every position of the pass, as on
    each decode step), `ROWS_PER_PASS - 1` interventions at a time beside one unsteered row: both sides take one
    numerical path, in one batch (a cached pass and a full one, or two batch sizes, differ by rounding, which in
    bfloat16 would be a floor of KL)."""
    device = next(model.parameters()).device
    prefiller = Prefiller(model, None, False, (), cache_keyword(model), 0, PrefillStats())
    total_kl = torch.zeros(len(interventions), dtype=torch.float64)
    n_tokens = 0
    with DecodeAppliers(model) as appliers:
        for text in tqdm(texts, desc="disruption", unit="program", disable=not progress, leave=False):
            prompt = torch.tensor([text.prompt_ids], device=device)
            following = torch.tensor([text.output_ids[:-1]], device=device)  # each predicts the next output token
            unsteered = prefiller.run(prompt, None, None)
            for start in range(0, len(interventions), ROWS_PER_PASS - 1):
                chunk = interventions[start:start + ROWS_PER_PASS - 1]
                prefills = [prefiller.steered(prompt, i, lambda: unsteered) for i in chunk]
                log_p = torch.log_softmax(_read_output(model, appliers, [(None, unsteered), *zip(chunk, prefills)],
                                                       following), dim=-1)
                base_log_p, steered_log_p = log_p[:1], log_p[1:]  # the unsteered row in the same batch
                kl = (base_log_p.exp() * (base_log_p - steered_log_p)).sum(dim=-1).clamp_min(0.0)
                total_kl[start:start + len(chunk)] += kl.sum(dim=1).double().cpu()
            n_tokens += len(text.output_ids)
    return (total_kl / max(n_tokens, 1)).numpy()


def _read_output(model: torch.nn.Module, appliers: DecodeAppliers, rows: list[tuple[Intervention | None, Prefill]],
                 following: torch.Tensor) -> torch.Tensor:
    """Logits [rows, n_output, vocab] (float32) predicting each output token: the first from each row's prefill, the
    rest from one pass of `following` over the rows' caches (after each intervention's `after_prefill`)."""
    started = [(None, prefill.keys_values) if intervention is None else intervention.after_prefill(prefill)
               for intervention, prefill in rows]
    first = torch.stack([prefill.last_logits for _, prefill in rows])[:, None]
    if following.shape[1] == 0:
        return first
    cache = DynamicCache(config=model.config)
    for layer in range(len(started[0][1])):
        cache.update(torch.cat([kv[layer][0] for _, kv in started]), torch.cat([kv[layer][1] for _, kv in started]),
                     layer)
    appliers.update([row for row, _ in started])
    appliers.set_active(True)
    try:
        rest = model(input_ids=following.expand(len(rows), -1), use_cache=True, **{cache_keyword(model): cache}).logits
    finally:
        appliers.set_active(False)
    return torch.cat([first, rest.float()], dim=1)


def matched_alphas(model: torch.nn.Module, texts: Sequence[TeacherText], unit_interventions: Sequence[Intervention],
                   levels: Sequence[float], alpha_grid: Sequence[float], progress: bool = True
                   ) -> tuple[np.ndarray, np.ndarray]:
    """For each intervention (its alpha is ignored) and each disruption level, the alpha that reaches that level:
    [n_interventions, n_levels]; and the measured disruption on the grid, [n_interventions, n_alphas]. A level
    above what the grid's largest alpha reaches gets NaN (the push cannot disturb the model that much)."""
    grid = np.asarray(sorted(alpha_grid), dtype=float)
    measured = disruption(model, texts, [u.at(float(a)) for u in unit_interventions for a in grid], progress)
    measured = measured.reshape(len(unit_interventions), len(grid))
    if not np.isfinite(measured).all():
        raise ValueError("disruption is not finite for some alpha: the model overflowed (try float32)")
    alphas = np.full((len(unit_interventions), len(levels)), np.nan)
    for i, row in enumerate(measured):
        curve = np.maximum.accumulate(np.log(np.maximum(row, 1e-12)))
        for j, level in enumerate(levels):
            target = np.log(level)
            if curve[0] <= target <= curve[-1]:
                alphas[i, j] = float(np.exp(np.interp(target, curve, np.log(grid))))
            elif target < curve[0]:
                alphas[i, j] = float(grid[0] * np.exp((target - curve[0]) / 2.0))  # KL ~ alpha^2 for small pushes
    return alphas, measured
