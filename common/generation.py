"""Batched generation, with the residual stream at the last prompt token captured on the way.

One engine for every generating phase. Prompts are left-padded so that position -1 is the last
prompt token of every row; the activations are read from the output of the chosen decoder layers
during the prefill forward pass, so capturing them costs no extra forward pass. The decode loop is
our own rather than HF `generate` so that a finished row leaves the batch: on a CPU one decode step
of 8 rows costs about 2.3 of 1 row (SmolLM2-135M, 2 cores), and a row that runs to max_new_tokens
would otherwise keep all 8 computing. Greedy output is token-identical to HF `generate` and to
one-prompt-at-a-time output (tested); sampling draws from softmax(logits / T) with a generator
seeded per batch.

Hook site: "layer L" always means the output of decoder layer L (common/hooks.py). With a
`Steering`, the batch is generated with its vector added there (common/steering.py).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from common.hooks import layer_forward_hooks, layer_output
from common.prompt_utils import Stopper
from common.steering import Steering, steering_applied

@dataclass
class GenerationResult:
    text: str
    n_new_tokens: int
    generation_time_s: float  # wall time of the batch, divided evenly over its rows
    activations: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [d_model] float32


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


def eos_token_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


@torch.inference_mode()
def generate_batch(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                   seed: int = 0, stoppers: Sequence[Stopper | None] | None = None,
                   capture_layers: Sequence[int] = (), add_special_tokens: bool = True,
                   steering: Steering | None = None) -> list[GenerationResult]:
    """Generate for `prompts` in one batch; greedy when temperature is 0, else sampled with `seed`.

    With `steering`, its vector is added at its layer during prefill and decoding (padding untouched);
    captured activations are then those of the steered stream."""
    started = time.perf_counter()
    device = next(model.parameters()).device
    encoded = tokenizer(list(prompts), return_tensors="pt", padding=True,
                        add_special_tokens=add_special_tokens).to(device)
    stoppers = list(stoppers) if stoppers else [None] * len(prompts)
    eos_ids = set(eos_token_ids(model, tokenizer))
    generator = torch.Generator(device).manual_seed(seed) if temperature > 0 else None

    def finished(row: int, tokens: list[int]) -> bool:
        if tokens[-1] in eos_ids:
            return True
        stopper = stoppers[row]
        return stopper is not None and stopper(tokenizer.decode(tokens, skip_special_tokens=True)) is not None

    steered = steering_applied(model, steering, encoded["attention_mask"]) if steering else contextlib.nullcontext()
    with steered, capture_last_prompt_token(model, capture_layers) as captured:
        new_tokens = _decode(model, encoded["input_ids"], encoded["attention_mask"], max_new_tokens, temperature,
                             generator, finished)
    per_row_s = (time.perf_counter() - started) / len(prompts)
    results = []
    for row, tokens in enumerate(new_tokens):
        tokens = tokens[:-1] if tokens and tokens[-1] in eos_ids else tokens
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        cut = stoppers[row](text) if stoppers[row] is not None else None
        results.append(GenerationResult(text=text[:cut] if cut is not None else text, n_new_tokens=len(tokens),
                                        generation_time_s=per_row_s,
                                        activations={layer: captured[layer][row].clone() for layer in capture_layers}))
    return results


def _decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, temperature: float,
            generator: torch.Generator | None, finished: Callable[[int, list[int]], bool]) -> list[list[int]]:
    """Prefill the left-padded batch, then one token per step with the KV cache. A row that has finished
    leaves the batch (its cache rows are dropped), so one long row no longer makes the others compute
    to its end. Position ids count real tokens only, as in HF generate."""
    tokens: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    rows = list(range(input_ids.shape[0]))
    mask = attention_mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    output = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                   logits_to_keep=1)
    for step in range(max_new_tokens):
        logits = output.logits[:, -1, :].float()
        if generator is None:
            picked = logits.argmax(-1)
        else:
            picked = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator).squeeze(1)
        keep = []
        for i, (row, token) in enumerate(zip(rows, picked.tolist())):
            tokens[row].append(token)
            if not finished(row, tokens[row]):
                keep.append(i)
        if not keep or step == max_new_tokens - 1:
            break
        cache = output.past_key_values
        if len(keep) < len(rows):
            index = torch.tensor(keep, device=mask.device)
            cache.batch_select_indices(index)
            rows, mask, picked = [rows[i] for i in keep], mask[index], picked[index]
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        output = model(input_ids=picked[:, None], attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1,
                       past_key_values=cache, use_cache=True, logits_to_keep=1)
    return tokens
