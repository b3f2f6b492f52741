"""Batched generation, with the residual stream at the last prompt token captured on the way.

One engine for every generating phase. Prompts are left-padded so that position -1 is the last
prompt token of every row; the activations are read from the output of the chosen decoder layers
during the prefill forward pass of `generate`, so capturing them costs no extra forward pass.
Greedy batched output is token-identical to one-prompt-at-a-time output (tested).

Hook site: "layer L" always means the output of decoder layer L (common/hooks.py). With a
`Steering`, the batch is generated with its vector added there (common/steering.py).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

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


class _TextStop(StoppingCriteria):
    """Per-row stop when the row's decoded new text satisfies its stopper."""

    def __init__(self, tokenizer, prompt_length: int, stoppers: Sequence[Stopper | None]):
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.stoppers = stoppers

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for row, stopper in enumerate(self.stoppers):
            if stopper is not None:
                text = self.tokenizer.decode(input_ids[row, self.prompt_length:], skip_special_tokens=True)
                done[row] = stopper(text) is not None
        return done


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
    prompt_length = encoded["input_ids"].shape[1]
    eos_ids = eos_token_ids(model, tokenizer)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                              temperature=temperature if temperature > 0 else None,
                              top_p=None, top_k=None, eos_token_id=eos_ids,
                              pad_token_id=tokenizer.pad_token_id)
    criteria = StoppingCriteriaList([_TextStop(tokenizer, prompt_length, stoppers)]) if stoppers else None
    if temperature > 0:
        torch.manual_seed(seed)
    steered = steering_applied(model, steering, encoded["attention_mask"]) if steering else contextlib.nullcontext()
    with steered, capture_last_prompt_token(model, capture_layers) as captured:
        output = model.generate(**encoded, generation_config=config, stopping_criteria=criteria)
    new_tokens = output[:, prompt_length:].cpu()
    per_row_s = (time.perf_counter() - started) / len(prompts)
    results = []
    for row in range(len(prompts)):
        n_new = _length_before_eos(new_tokens[row], eos_ids)
        text = tokenizer.decode(new_tokens[row, :n_new], skip_special_tokens=True)
        if stoppers and stoppers[row] is not None:
            cut = stoppers[row](text)
            text = text[:cut] if cut is not None else text
        results.append(GenerationResult(text=text, n_new_tokens=n_new, generation_time_s=per_row_s,
                                        activations={layer: captured[layer][row].clone() for layer in capture_layers}))
    return results


def _length_before_eos(tokens: torch.Tensor, eos_ids: Sequence[int]) -> int:
    """Generated tokens before the first end-of-sequence token. The EOS itself is not counted: when the
    pad token is the EOS token, a row stopped early is followed by padding that looks exactly like it."""
    is_eos = torch.isin(tokens, torch.tensor(list(eos_ids), dtype=tokens.dtype))
    hits = torch.nonzero(is_eos)
    return int(hits[0]) if len(hits) else int(tokens.shape[0])
