"""Residual-stream activations at every token of fixed windows, for all requested layers in one pass.

The LM forward pass is most of the cost of SAE training on a CPU, so the activations of every
configured layer are recorded once and reused for several training epochs and all evaluations.
Position 0 (the BOS attention sink) is dropped: rows are the tokens at positions 1..end.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from common.hooks import layer_forward_hooks, layer_output


class _LastLayerReached(Exception):
    """Raised by the hook of the deepest recorded layer: the layers above it would be wasted work."""


@contextlib.contextmanager
def recording_layer_outputs(model: torch.nn.Module, layers: Sequence[int],
                            stop_after_last: bool = False) -> Iterator[dict[int, torch.Tensor]]:
    """Within the block, `recorded[L]` is the output of decoder layer L from the latest forward pass.

    With `stop_after_last`, the forward pass ends at the deepest recorded layer; call the model
    through `forward_until_recorded` then.
    """
    recorded: dict[int, torch.Tensor] = {}
    deepest = max(layers)

    def make_hook(layer: int):
        def hook(_module, _inputs, output):
            recorded[layer] = layer_output(output).detach()
            if stop_after_last and layer == deepest:
                raise _LastLayerReached
        return hook

    with layer_forward_hooks(model, {layer: make_hook(layer) for layer in layers}):
        yield recorded


def forward_until_recorded(model: torch.nn.Module, input_ids: torch.Tensor,
                           attention_mask: torch.Tensor | None = None) -> None:
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1)
    except _LastLayerReached:
        pass


@torch.no_grad()
def record_windows(model: torch.nn.Module, windows: torch.Tensor, layers: Sequence[int],
                   batch_windows: int = 16, desc: str = "recording activations") -> dict[int, torch.Tensor]:
    """layer -> [n_windows * (context - 1), d_model] float32 on the CPU, positions 1.. of each window."""
    device = next(model.parameters()).device
    n_windows, context = windows.shape
    per_window = context - 1
    out: dict[int, torch.Tensor] = {}
    with (recording_layer_outputs(model, layers, stop_after_last=True) as recorded,
          tqdm(total=n_windows, desc=desc, unit="window") as bar):
        for start in range(0, n_windows, batch_windows):
            batch = windows[start:start + batch_windows].to(device)
            forward_until_recorded(model, batch)
            for layer in layers:
                hidden = recorded[layer][:, 1:, :].to(torch.float32).cpu().reshape(-1, recorded[layer].shape[-1])
                if layer not in out:
                    out[layer] = torch.empty(n_windows * per_window, hidden.shape[1], dtype=torch.float32)
                out[layer][start * per_window:start * per_window + len(hidden)] = hidden
            bar.update(len(batch))
    return out
