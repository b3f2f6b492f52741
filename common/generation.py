"""Batched generation, with the residual stream at the last prompt token captured on the way.

One engine for every generating phase. Prompts are left-padded so that position -1 is the last
prompt token of every row; the activations are read from the output of the chosen decoder layers
during the prefill forward pass of `generate`, so capturing them costs no extra forward pass.
Greedy batched output is token-identical to one-prompt-at-a-time output (tested).

Hook site: "layer L" always means the output of decoder layer L (= input of layer L+1), the
residual stream that GemmaScope `res` SAEs read, and where steering adds its vectors.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Sequence

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from common.errors import PipelineError
from common.prompt_utils import Stopper

HOOK_SITE = "output of decoder layer L (residual stream)"


@dataclass
class GenerationResult:
    text: str
    n_new_tokens: int
    generation_time_s: float  # wall time of the batch, divided evenly over its rows
    activations: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [d_model] float32


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of decoder blocks of a causal LM (Llama, Gemma, Mistral, Qwen: model.model.layers; GPT-2: transformer.h)."""
    for path in ("model.layers", "model.model.layers", "transformer.h", "gpt_neox.layers"):
        module = model
        for name in path.split("."):
            module = getattr(module, name, None)
            if module is None:
                break
        if isinstance(module, torch.nn.ModuleList):
            return module
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")


def check_layers(model: torch.nn.Module, layers: Sequence[int]) -> None:
    n_layers = len(decoder_layers(model))
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise PipelineError(f"config key 'layers' = {list(layers)}: {bad} out of range for a model with "
                            f"{n_layers} decoder layers (0..{n_layers - 1})")


def layer_output(output) -> torch.Tensor:
    """The hidden states in a decoder layer's output (a tensor, or a tuple whose first item is one)."""
    return output[0] if isinstance(output, tuple) else output


@contextlib.contextmanager
def layer_forward_hooks(model: torch.nn.Module, hooks: Mapping[int, Callable]) -> Iterator[None]:
    """Forward hooks on decoder layers (layer -> hook(module, inputs, output)), removed on leaving, whatever happens."""
    blocks = decoder_layers(model)
    handles = [blocks[layer].register_forward_hook(hook) for layer, hook in hooks.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


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
                   capture_layers: Sequence[int] = (), add_special_tokens: bool = True) -> list[GenerationResult]:
    """Generate for `prompts` in one batch; greedy when temperature is 0, else sampled with `seed`."""
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
    with capture_last_prompt_token(model, capture_layers) as captured:
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
