"""Continuous batching: every generating phase's engine, with the last prompt token's activations on the way.

A run keeps up to `batch_size` rows decoding together. When a row finishes (end of sequence, its
code block closed, a degenerate loop, or `max_new_tokens`) it leaves at once and the next request
takes its slot, so the batch stays full until the requests run out: on a CPU one decode step of 64
rows costs about 6 of 1 row (SmolLM2-135M, 2 cores: 377 against 65 ms), and a batch that waits for
its longest row wastes most of that.

Each request is prefilled alone (batch of one, no padding; common/prefill.py, which also reuses
prefills) and its keys and values are copied into a slot of a `SlotCache`. So its activations, read
from that prefill at the last prompt token, do not depend on which requests share its run, bit for
bit. Greedy rows give the tokens of one-prompt-at-a-time generation; a sampled row draws from a
generator seeded by its own request, so its tokens do not depend on its batch-mates either (both
tested on CPU in float32; on a GPU, kernels picked by batch shape may change the last bits, and with
them an occasional token).

A request may carry an intervention (common/interventions/): the engine knows only its protocol. It
is applied to the request's own prefill, takes its step after the prefill (which may edit the row's keys
and values and gives the intervention that follows the row), and in decode steps each kind's applier
gives every row its own intervention as rows leave and join.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import torch

from common.degeneration import CodeOpened, DegenerationGuard, DegenerationLimits
from common.hooks import cache_keyword, decoder_layers
from common.kv_slots import SlotCache
from common.prefill import Prefill, Prefiller, PrefillStats
from common.prompt_utils import Stopper
from common.interventions import DecodeAppliers, Intervention


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    temperature: float = 0.0  # 0 = greedy
    seed: int = 0  # a sampled request draws from its own generator, seeded with this
    stopper: Stopper | None = None  # text -> where to cut once the answer is complete, else None
    code_opened: CodeOpened | None = None  # text -> has the code started? None: from the first token
    intervention: Intervention | None = None
    key: Any = None  # the caller's own tag (a result carries its request)


@dataclass
class GenerationResult:
    request: GenerationRequest
    text: str
    n_new_tokens: int
    stop_reason: str  # one of common.degeneration.STOP_REASONS
    generation_time_s: float  # its prefill if not reused (the first sample of a prompt pays it) + 1/n of each
    # decode step shared with n rows
    activations: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [d_model] float32


@dataclass(frozen=True)
class EngineSettings:
    max_new_tokens: int
    batch_size: int
    capture_layers: tuple[int, ...] = ()
    add_special_tokens: bool = True
    limits: DegenerationLimits = DegenerationLimits()


@dataclass
class EngineStats:
    """Where a run's time went: prefills (new prompts) against decode steps (all rows, one token each)."""
    prefill: PrefillStats = field(default_factory=PrefillStats)
    decode_steps: int = 0
    decoded_rows: int = 0  # rows summed over steps: decoded_rows / decode_steps is the mean batch
    decode_s: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {**{key: round(value, 1) for key, value in asdict(self.prefill).items()},
                "decode_steps": self.decode_steps,
                "mean_rows_per_step": round(self.decoded_rows / self.decode_steps, 1) if self.decode_steps else None,
                "decode_s": round(self.decode_s, 1)}


def eos_token_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def generate(model, tokenizer, requests: Iterable[GenerationRequest], settings: EngineSettings,
             stats: EngineStats | None = None) -> Iterator[GenerationResult]:
    """Results in the order the requests finish; the next request is taken when a slot frees up. `stats`,
    if given, is filled in as the run goes."""
    return _Engine(model, tokenizer, settings, stats or EngineStats()).run(iter(requests))


def generate_batch(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                   seed: int = 0, stoppers: Sequence[Stopper | None] | None = None,
                   capture_layers: Sequence[int] = (), add_special_tokens: bool = True,
                   intervention: Intervention | None = None, batch_size: int | None = None
                   ) -> list[GenerationResult]:
    """The results for `prompts`, in their order; greedy when temperature is 0, else row i samples with seed
    `seed + i`. With `intervention`, every row carries it."""
    stoppers = list(stoppers) if stoppers else [None] * len(prompts)
    requests = [GenerationRequest(prompt, temperature, seed + i, stoppers[i], intervention=intervention, key=i)
                for i, prompt in enumerate(prompts)]
    settings = EngineSettings(max_new_tokens, batch_size or max(1, len(prompts)), tuple(capture_layers),
                              add_special_tokens)
    return sorted(generate(model, tokenizer, requests, settings), key=lambda result: result.request.key)


@dataclass
class _Row:
    request: GenerationRequest
    guard: DegenerationGuard
    generator: torch.Generator | None
    activations: dict[int, torch.Tensor]
    time_s: float
    intervention: Intervention | None = None  # the request's, after its step past the prefill
    tokens: list[int] = field(default_factory=list)


class _Engine:
    def __init__(self, model, tokenizer, settings: EngineSettings, stats: EngineStats):
        self.model, self.tokenizer, self.settings, self.stats = model, tokenizer, settings, stats
        self.device = next(model.parameters()).device
        self.eos_ids = set(eos_token_ids(model, tokenizer))
        self.cache_keyword = cache_keyword(model)
        self.n_layers = len(decoder_layers(model))
        self.prefiller = Prefiller(model, tokenizer, settings.add_special_tokens, settings.capture_layers,
                                   self.cache_keyword, settings.max_new_tokens, stats.prefill)

    @torch.inference_mode()
    def run(self, requests: Iterator[GenerationRequest]) -> Iterator[GenerationResult]:
        cache = SlotCache(self.n_layers, self.settings.batch_size, self.settings.max_new_tokens)
        rows: list[_Row] = []
        with DecodeAppliers(self.model) as appliers:
            changed = False
            while True:
                while len(rows) < self.settings.batch_size:
                    request = next(requests, None)
                    if request is None:
                        break
                    row, prefill, keys_values = self._start(request)
                    reason = self._append(row, self._pick(prefill.last_logits[None], [row])[0])
                    if reason:
                        yield self._result(row, reason)
                        continue
                    cache.add_row(keys_values)
                    rows.append(row)
                    changed = True
                if not rows:
                    return
                started = time.perf_counter()
                if changed:
                    appliers.update([row.intervention for row in rows])
                finished = self._decode_step(cache, rows, appliers)
                step_s = time.perf_counter() - started
                self.stats.decode_steps += 1
                self.stats.decoded_rows += len(rows)
                self.stats.decode_s += step_s
                share_s = step_s / len(rows)
                for row in rows:
                    row.time_s += share_s
                for slot, reason in sorted(finished, reverse=True):  # a removed slot takes the last row
                    row = rows[slot]
                    cache.remove_row(slot)
                    rows[slot] = rows[-1]
                    rows.pop()
                    yield self._result(row, reason)
                changed = bool(finished)

    def _decode_step(self, cache: SlotCache, rows: list[_Row], appliers: DecodeAppliers) -> list[tuple[int, str]]:
        """One token for every row; returns (slot, stop reason) of the rows that finished."""
        cache.make_room(1)
        inputs = torch.tensor([[row.tokens[-1]] for row in rows], device=self.device)
        appliers.set_active(True)
        try:
            output = self.model(input_ids=inputs, attention_mask=cache.attention_mask().to(self.device),
                                position_ids=cache.positions().to(self.device), use_cache=True, logits_to_keep=1,
                                **{self.cache_keyword: cache})
        finally:
            appliers.set_active(False)
        cache.advance(1)
        picked = self._pick(output.logits[:, -1, :], rows)
        finished = []
        for slot, (row, token) in enumerate(zip(rows, picked)):
            reason = self._append(row, token)
            if reason:
                finished.append((slot, reason))
        return finished

    def _start(self, request: GenerationRequest
               ) -> tuple[_Row, Prefill, list[tuple[torch.Tensor, torch.Tensor]]]:
        prefill = self.prefiller.get(request.prompt, request.intervention)
        intervention, keys_values = None, prefill.keys_values
        if request.intervention is not None:
            intervention, keys_values = request.intervention.after_prefill(prefill)
        generator = None
        if request.temperature > 0:
            generator = torch.Generator(self.device).manual_seed(request.seed)
        guard = DegenerationGuard(self.settings.limits, request.code_opened, self.settings.max_new_tokens)
        row = _Row(request, guard, generator, prefill.activations, prefill.time_s, intervention)
        prefill.time_s = 0.0  # a reused prefill costs the next row nothing
        return row, prefill, keys_values

    def _pick(self, logits: torch.Tensor, rows: Sequence[_Row]) -> list[int]:
        """Greedy rows take the argmax; a sampled row draws from softmax(logits / T) with its own generator."""
        logits = logits.float()
        picked = logits.argmax(-1)
        sampled = [i for i, row in enumerate(rows) if row.generator is not None]
        if sampled:
            temperatures = torch.tensor([rows[i].request.temperature for i in sampled], device=logits.device)
            probabilities = torch.softmax(logits[sampled] / temperatures[:, None], dim=-1)
            for j, i in enumerate(sampled):
                picked[i] = torch.multinomial(probabilities[j], 1, generator=rows[i].generator)[0]
        return picked.tolist()

    def _append(self, row: _Row, token: int) -> str | None:
        """Add the token; the reason the row stops here, or None."""
        row.tokens.append(token)
        if token in self.eos_ids:
            return "eos"
        text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        if row.request.stopper is not None and row.request.stopper(text) is not None:
            return "code_end"
        reason = row.guard.step(token, text)
        if reason:
            return reason
        return "max_new_tokens" if len(row.tokens) >= self.settings.max_new_tokens else None

    def _result(self, row: _Row, reason: str) -> GenerationResult:
        tokens = row.tokens[:-1] if reason == "eos" else row.tokens
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        cut = row.request.stopper(text) if row.request.stopper is not None else None
        return GenerationResult(row.request, text[:cut] if cut is not None else text, len(tokens), reason,
                                row.time_s, row.activations)
