"""Where the residual stream is: decoder layers, their outputs, and hooks on them that always come off.

"Layer L" always means the output of decoder layer L (= the input of layer L+1): the residual
stream that GemmaScope `res` SAEs read, where phase 1 records activations and steering adds vectors.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Callable, Iterator, Mapping, Sequence

import torch

from common.errors import PipelineError

HOOK_SITE = "output of decoder layer L (residual stream)"


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


def with_hidden(output, hidden: torch.Tensor):
    """A decoder layer's output with its hidden states replaced (what a hook returns to change them)."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


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


def cache_keyword(model: torch.nn.Module) -> str:
    """The keyword its forward takes the KV cache by: `cache` since transformers 5.x, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
