"""Prompt prefills for the engine: each computed once, reused, and under steering started where steering starts.

A prefill is one prompt's forward pass, alone (batch of one): its keys and values per layer, the
logits of its last token, and the activations to capture at that token. Two kinds of reuse:
- the same prompt with the same steering (phase 3.5's thirteen samples of a task): the prefill itself;
- the same prompt under an intervention whose `first_layer` is L (phase 4.5's grid, phase 4.8's arms):
  decoder layers 0..L compute exactly what they compute unsteered, so their outputs, keys and values are
  replayed from the unsteered prefill and only layers L+1.. run (a third of the work for a layer-20 direction
  of a 30-layer model). The result is bit for bit that of a full steered pass: the same operations
  on the same inputs.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from transformers import DynamicCache

from common.hooks import decoder_layers, layer_forward_hooks, layer_output
from common.interventions import Intervention

CACHED_PROMPTS = 4  # requests arrive grouped by prompt, so a few suffice


@dataclass
class Prefill:
    keys_values: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, [1, heads, prompt_len, head_dim]
    last_logits: torch.Tensor  # [vocab] float32
    activations: dict[int, torch.Tensor]  # layer -> [d_model] float32, at the last prompt token
    time_s: float
    layer_outputs: list[Any] | None = None  # unsteered only: each decoder layer's output, for replay
    applied: Any = None  # what the intervention's `prefill_applied` yielded (self-steering: the row's own vector)


@dataclass
class PrefillStats:
    prefills: int = 0  # full forward passes
    partial_prefills: int = 0  # steered passes that replayed the layers below the steering
    reused_prefills: int = 0
    prompt_tokens: int = 0
    prefill_s: float = 0.0


@contextlib.contextmanager
def capture_last_prompt_token(model: torch.nn.Module, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Record each layer's output at position -1 on the first forward pass inside the block (the prefill)."""
    captured: dict[int, torch.Tensor] = {}

    def make_hook(layer: int):
        def hook(_module, _inputs, output):
            if layer not in captured:
                captured[layer] = layer_output(output)[:, -1, :].detach().to(torch.float32).cpu()
        return hook

    with layer_forward_hooks(model, {layer: make_hook(layer) for layer in layers}):
        yield captured


class _Replay(torch.nn.Module):
    """Stands in for decoder layer `index`: writes that layer's recorded keys and values into the cache (when
    there is one) and returns its recorded output, computing nothing."""

    def __init__(self, index: int, output: Any, keys: torch.Tensor | None, values: torch.Tensor | None):
        super().__init__()
        self.index, self.output, self.keys, self.values = index, output, keys, values

    def forward(self, *args, cache=None, past_key_values=None, **kwargs):
        if self.keys is not None:
            (cache if cache is not None else past_key_values).update(self.keys, self.values, self.index)
        return self.output


@contextlib.contextmanager
def replaying(model: torch.nn.Module, layer_outputs: Sequence[Any], up_to: int,
              keys_values: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None) -> Iterator[None]:
    """Decoder layers 0..up_to replaced by replays of their recorded outputs (and keys and values, for a pass
    that fills a cache) inside the block; the real ones come back after. Hooks registered inside the block
    land on the replays."""
    layers = decoder_layers(model)
    originals = [layers[i] for i in range(up_to + 1)]
    try:
        for i in range(up_to + 1):
            layers[i] = _Replay(i, layer_outputs[i], *(keys_values[i] if keys_values else (None, None)))
        yield
    finally:
        for i, original in enumerate(originals):
            layers[i] = original


def _recorder(outputs: dict[int, Any], layer: int):
    def hook(_module, _inputs, output):
        outputs[layer] = output
    return hook


class Prefiller:
    def __init__(self, model: torch.nn.Module, tokenizer, add_special_tokens: bool, capture_layers: Sequence[int],
                 cache_keyword: str, reserve_tokens: int, stats: PrefillStats):
        self.model, self.tokenizer, self.add_special_tokens = model, tokenizer, add_special_tokens
        self.capture_layers, self.cache_keyword, self.stats = tuple(capture_layers), cache_keyword, stats
        self.device = next(model.parameters()).device
        self.window_limit = getattr(model.config, "sliding_window", None)
        self.reserve_tokens = reserve_tokens
        self._cached: OrderedDict[tuple[str, str], Prefill] = OrderedDict()

    def get(self, prompt: str, intervention: Intervention | None) -> Prefill:
        key = (prompt, intervention.label if intervention else "")
        if key in self._cached:
            self._cached.move_to_end(key)
            self.stats.reused_prefills += 1
            return self._cached[key]
        if intervention is not None and not intervention.steers_prefill:
            return self.get(prompt, None)  # no entry of its own: the unsteered one is the one to keep
        ids = self._tokens(prompt)
        if intervention is None:
            prefill = self.run(ids, None, None)
        else:
            prefill = self.steered(ids, intervention, lambda: self.get(prompt, None))
        self._cached[key] = prefill
        if len(self._cached) > CACHED_PROMPTS:
            self._cached.popitem(last=False)
        return prefill

    def steered(self, ids: torch.Tensor, intervention: Intervention, unsteered: Callable[[], Prefill]) -> Prefill:
        """The prefill under `intervention` given the prompt's unsteered one (`unsteered()`, asked for only when
        needed): that one itself when the intervention leaves the prefill alone, a pass replaying it below the
        intervention's first layer, or a full pass of its own."""
        if not intervention.steers_prefill:
            return unsteered()
        return self.run(ids, intervention, None if intervention.first_layer is None else unsteered())

    def _tokens(self, prompt: str) -> torch.Tensor:
        ids = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=self.add_special_tokens)["input_ids"]
        if self.window_limit and ids.shape[1] + self.reserve_tokens > self.window_limit:
            raise ValueError(f"a prompt of {ids.shape[1]} tokens plus {self.reserve_tokens} new ones exceeds the "
                             f"model's sliding attention window ({self.window_limit})")
        return ids.to(self.device)

    def run(self, ids: torch.Tensor, intervention: Intervention | None, base: Prefill | None) -> Prefill:
        """A full unsteered pass that records every layer's output, or a pass under an intervention: over the
        layers from its first one up, replaying `base` below it, when it has a first layer."""
        started = time.perf_counter()
        kv = DynamicCache(config=self.model.config)
        outputs: dict[int, Any] = {}
        applied = None
        n_layers = len(decoder_layers(self.model))
        replay = (replaying(self.model, base.layer_outputs, intervention.first_layer, base.keys_values) if base
                  else contextlib.nullcontext())
        with replay, contextlib.ExitStack() as stack:
            if intervention is not None:  # applied after the swap: on the replay of its layer when there is one
                applied = stack.enter_context(intervention.prefill_applied(self.model))
            else:
                stack.enter_context(layer_forward_hooks(self.model, {i: _recorder(outputs, i) for i in range(n_layers)}))
            captured = stack.enter_context(capture_last_prompt_token(self.model, self.capture_layers))
            logits = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self.cache_keyword: kv}).logits
        elapsed_s = time.perf_counter() - started
        self.stats.prompt_tokens += ids.shape[1]
        self.stats.prefill_s += elapsed_s
        if base is None:
            self.stats.prefills += 1
        else:
            self.stats.partial_prefills += 1
        return Prefill([(layer.keys, layer.values) for layer in kv.layers], logits[0, -1].float(),
                       {layer: captured[layer][0].clone() for layer in self.capture_layers}, elapsed_s,
                       [outputs[i] for i in range(n_layers)] if intervention is None else None, applied)
