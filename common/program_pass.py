"""Activations over the code: one teacher-forced pass over prompt + program, after generation and execution.

The last prompt token is read before any code exists, so every program of a task shares it; these
positions can differ between the programs of one task (DESIGN.md, "Positions"):
- `code_last`: the program's last token; `code_mean`: the mean over its tokens; `code_last_k`: the
  mean over its last k tokens (seed 003 reads the last 6).
The program is the answer's span of the raw output (common/answer_formats.py: the code the model wrote, as
`extract_code` locates it, or a multiple-choice answer's letter); the sequence is the prompt's tokens followed by
the output up to the program's end (fence and prose before it are context). The same pass gives the model's own
confidence in its program, the baseline every activation score must beat: the mean log-probability of the
program's tokens and the mean margin between the top-1 and top-2 log-probabilities at those positions (between
the two best options, for a multiple-choice answer).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from common.activation_cache import recording_layer_outputs
from common.answer_formats import answer_format
from common.hooks import cache_keyword
from common.positions import CODE_POSITIONS

EMPTY_PROGRAM = "empty_program"  # the error type of a row whose output holds no code at all
LOGIT_CHUNK_ROWS = 1024  # positions per vocabulary projection: bounds the logits' memory


@dataclass(frozen=True)
class ProgramText:
    prompt: str
    raw_output: str
    span: tuple[int, int]  # [start, end) of the answer (the program) within raw_output


def answer_text(prompt: str, raw_output: str, problem: Mapping[str, Any]) -> ProgramText:
    """What the pass reads of a problem's output: the prompt, the output, and where in it the answer lies."""
    return ProgramText(prompt, raw_output, answer_format(problem).span(raw_output, problem))


@dataclass
class ProgramPass:
    activations: dict[str, dict[int, torch.Tensor]]  # position -> layer -> [n_rows, d_model]; NaN rows: no program
    columns: dict[str, list[Any]]  # per row: prompt_tokens, program_tokens, program_mean_logprob, program_mean_margin,
    #                                program_error (None, or EMPTY_PROGRAM)


@dataclass(frozen=True)
class _Sequence:
    row: int
    continuation: list[int]  # the output's tokens up to the program's end
    program: np.ndarray  # indices of the program's tokens within `continuation`


def tokenize_program(text: ProgramText, tokenizer, add_special_tokens: bool
              ) -> tuple[tuple[int, ...], list[int], np.ndarray]:
    """Prompt ids, the output's ids up to the program's end, and the program's indices among them."""
    prompt_ids = tuple(tokenizer(text.prompt, add_special_tokens=add_special_tokens)["input_ids"])
    start, end = text.span
    if not text.raw_output[start:end].strip():
        return prompt_ids, [], np.empty(0, dtype=int)
    output = tokenizer(text.raw_output[:end], add_special_tokens=False, return_offsets_mapping=True)
    inside = [i for i, (a, b) in enumerate(output["offset_mapping"]) if b > start and a < end]
    return prompt_ids, list(output["input_ids"]), np.asarray(inside, dtype=int)


def _by_prompt(tokenized: list[tuple[tuple[int, ...], list[int], np.ndarray]]
               ) -> dict[tuple[int, ...], list[_Sequence]]:
    """The rows holding a program, grouped by prompt: each group shares one prefill."""
    by_prompt: dict[tuple[int, ...], list[_Sequence]] = {}
    for row, (prompt_ids, continuation, program) in enumerate(tokenized):
        if len(program):
            by_prompt.setdefault(prompt_ids, []).append(_Sequence(row, continuation, program))
    return by_prompt


def _batches(sequences: list[_Sequence], max_batch_tokens: int) -> list[list[_Sequence]]:
    """Sequences sorted by length, cut into batches whose padded size stays under `max_batch_tokens`."""
    ordered = sorted(sequences, key=lambda s: len(s.continuation))
    batches: list[list[_Sequence]] = []
    for sequence in ordered:
        if batches and len(sequence.continuation) * (len(batches[-1]) + 1) <= max_batch_tokens:
            batches[-1].append(sequence)
        else:
            batches.append([sequence])
    return batches


@torch.no_grad()
def record_programs(model, tokenizer, texts: Sequence[ProgramText], layers: Sequence[int], position_k: int,
                    add_special_tokens: bool, max_batch_tokens: int = 4096,
                    option_ids: Sequence[Sequence[int]] = ()) -> ProgramPass:
    """Code-position activations of every configured layer and the confidence columns, rows in `texts` order.

    The programs of one prompt share its prefill: the prompt runs once and its KV cache is copied to
    each batch of continuations (13 samples of a phase 3.5 task: about half the tokens of separate passes).
    With `option_ids` (per option of a multiple-choice question, the tokens that write it) the margin is between
    the two best options."""
    n_rows = len(texts)
    tokenized = [tokenize_program(text, tokenizer, add_special_tokens) for text in texts]
    by_prompt = _by_prompt(tokenized)
    d_model = model.config.hidden_size
    activations = {position: {layer: torch.full((n_rows, d_model), float("nan")) for layer in layers}
                   for position in CODE_POSITIONS}
    mean_logprob, mean_margin = np.full(n_rows, np.nan), np.full(n_rows, np.nan)
    with (recording_layer_outputs(model, layers) as recorded,
          tqdm(total=sum(map(len, by_prompt.values())), desc="activations over the code", unit="program") as bar):
        for prompt_ids, members in by_prompt.items():
            prompt_cache, last_prompt_final = _prefill(model, prompt_ids)
            for batch in _batches(members, max_batch_tokens):
                final, _ = _continue(model, tokenizer, prompt_cache, len(prompt_ids), batch)
                previous = torch.cat([last_prompt_final.expand(len(batch), 1, -1), final[:, :-1]], dim=1)
                logprob, margin = _token_confidence(model, previous, batch, option_ids)
                start = 0
                for i, sequence in enumerate(batch):
                    span = slice(start, start + len(sequence.program))
                    mean_logprob[sequence.row] = float(logprob[span].mean())
                    mean_margin[sequence.row] = float(margin[span].mean())
                    start = span.stop
                    program = torch.as_tensor(sequence.program)
                    for layer in layers:
                        hidden = recorded[layer][i].float().cpu()
                        activations["code_last"][layer][sequence.row] = hidden[program[-1]]
                        activations["code_mean"][layer][sequence.row] = hidden[program].mean(0)
                        activations["code_last_k"][layer][sequence.row] = hidden[program[-position_k:]].mean(0)
                bar.update(len(batch))
    columns = {"prompt_tokens": [len(prompt_ids) for prompt_ids, _, _ in tokenized],
               "program_tokens": [len(program) for _, _, program in tokenized],
               "program_mean_logprob": [None if np.isnan(v) else float(v) for v in mean_logprob],
               "program_mean_margin": [None if np.isnan(v) else float(v) for v in mean_margin],
               "program_error": [None if len(program) else EMPTY_PROGRAM for _, _, program in tokenized]}
    return ProgramPass(activations, columns)


@torch.no_grad()
def record_last_keys_values(model, tokenizer, texts: Sequence[ProgramText], layers: Sequence[int],
                            add_special_tokens: bool, max_batch_tokens: int = 4096
                            ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The KV cache's keys and values at each program's last token (`code_last`), as generation would have cached
    them (keys after their rotary embedding): [n_rows, len(layers), kv_heads, head_dim] each, NaN for a row without
    a program, and the mask of rows with one. The same prompt-sharing pass as `record_programs`."""
    tokenized = [tokenize_program(text, tokenizer, add_special_tokens) for text in texts]
    by_prompt = _by_prompt(tokenized)
    kv_heads = getattr(model.config, "num_key_value_heads", None) or model.config.num_attention_heads
    head_dim = getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
    keys = torch.full((len(texts), len(layers), kv_heads, head_dim), float("nan"))
    values = keys.clone()
    with tqdm(total=sum(map(len, by_prompt.values())), desc="keys and values at the code", unit="program") as bar:
        for prompt_ids, members in by_prompt.items():
            prompt_cache, _ = _prefill(model, prompt_ids)
            for batch in _batches(members, max_batch_tokens):
                _, cache = _continue(model, tokenizer, prompt_cache, len(prompt_ids), batch)
                for i, sequence in enumerate(batch):
                    column = len(prompt_ids) + int(sequence.program[-1])
                    for j, layer in enumerate(layers):
                        keys[sequence.row, j] = cache.layers[layer].keys[i, :, column].float().cpu()
                        values[sequence.row, j] = cache.layers[layer].values[i, :, column].float().cpu()
                bar.update(len(batch))
    return keys, values, ~torch.isnan(keys[:, 0, 0, 0]).numpy()


def _prefill(model, prompt_ids: tuple[int, ...]) -> tuple[DynamicCache, torch.Tensor]:
    """The prompt's KV cache and its last position's final hidden state (it predicts the output's first token)."""
    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config)
    decoder = model.get_decoder()
    final = decoder(input_ids=torch.tensor([prompt_ids], device=device), use_cache=True,
                    **{cache_keyword(decoder): cache}).last_hidden_state
    return cache, final[:, -1:]


def _continue(model, tokenizer, prompt_cache: DynamicCache, prompt_length: int, batch: list[_Sequence]
              ) -> tuple[torch.Tensor, DynamicCache]:
    """Final hidden states [batch, width, d_model] of the continuations after a copy of the prompt's cache, and that
    cache with the continuations in it; right padding, so every real token sits at the position it had in
    generation."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(s.continuation) for s in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.cat([torch.ones((len(batch), prompt_length), dtype=torch.long),
                           torch.zeros((len(batch), width), dtype=torch.long)], dim=1)
    for i, sequence in enumerate(batch):
        input_ids[i, :len(sequence.continuation)] = torch.tensor(sequence.continuation)
        attention[i, prompt_length:prompt_length + len(sequence.continuation)] = 1
    cache = copy.deepcopy(prompt_cache)
    cache.batch_repeat_interleave(len(batch))
    decoder = model.get_decoder()
    final = decoder(input_ids=input_ids.to(device), attention_mask=attention.to(device), use_cache=True,
                    **{cache_keyword(decoder): cache}).last_hidden_state
    return final, cache


def _token_confidence(model, previous: torch.Tensor, batch: list[_Sequence], option_ids: Sequence[Sequence[int]] = ()
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per program token (batch order): its log-probability given what precedes it, and the top-1 minus top-2
    log-probability margin there (of the options' best tokens, given `option_ids`). `previous[i, j]` is the final
    hidden state that predicts continuation token j; only the program's positions go through the vocabulary
    projection, in chunks."""
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    rows = torch.cat([torch.full((len(s.program),), i) for i, s in enumerate(batch)])
    positions = torch.cat([torch.as_tensor(s.program) for s in batch])
    targets = torch.cat([torch.as_tensor(s.continuation)[s.program] for s in batch])
    logprobs, margins = [], []
    for start in range(0, len(rows), LOGIT_CHUNK_ROWS):
        chunk = slice(start, start + LOGIT_CHUNK_ROWS)
        logits = head(previous[rows[chunk].to(previous.device), positions[chunk].to(previous.device)]).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        log_softmax = torch.log_softmax(logits, dim=-1).cpu()
        candidates = (torch.stack([log_softmax[:, list(ids)].max(1).values for ids in option_ids], dim=1)
                      if option_ids else log_softmax)
        top2 = candidates.topk(2, dim=-1).values
        logprobs.append(log_softmax.gather(1, targets[chunk].unsqueeze(1)).squeeze(1))
        margins.append(top2[:, 0] - top2[:, 1])
    return torch.cat(logprobs), torch.cat(margins)
