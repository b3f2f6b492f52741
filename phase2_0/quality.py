"""How much of the model an SAE keeps: next-token loss with the SAE's reconstruction spliced in.

ΔCE is the mean cross-entropy of next-token prediction with the output of layer L replaced by
the SAE's reconstruction, minus the clean mean cross-entropy, on held-out windows. Position 0
(the attention sink the SAE never saw) keeps its real activation, and predictions made from it
are left out of both means. The rare massive-norm tokens (`common.saes.massive_norm_threshold`),
which the SAE was not trained on either, keep their real activations too.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from common.hooks import layer_forward_hooks, layer_output


@contextlib.contextmanager
def reconstruction_spliced(model: torch.nn.Module, layer: int, sae, max_norm: float) -> Iterator[None]:
    def hook(_module, _inputs, output):
        hidden = layer_output(output)
        body = hidden[:, 1:]
        reconstruction = sae.decode(sae.encode(body.to(torch.float32))).to(hidden.dtype)
        typical = (body.norm(dim=-1, keepdim=True) <= max_norm)
        replaced = hidden.clone()
        replaced[:, 1:] = torch.where(typical, reconstruction, body)
        return (replaced, *output[1:]) if isinstance(output, tuple) else replaced

    with layer_forward_hooks(model, {layer: hook}):
        yield


@torch.no_grad()
def mean_next_token_loss(model: torch.nn.Module, windows: torch.Tensor, batch_windows: int = 8,
                         desc: str = "next-token loss") -> float:
    """Mean cross-entropy (nats) of predicting tokens 2.. from positions 1.. of every window."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in tqdm(range(0, len(windows), batch_windows), desc=desc, unit="batch", leave=False):
        batch = windows[start:start + batch_windows].to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, 1:-1].float()
        targets = batch[:, 2:]
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"))
        count += targets.numel()
    return total / count


def delta_cross_entropy(model: torch.nn.Module, windows: torch.Tensor, layer: int, sae, clean_loss: float,
                        max_norm: float) -> float:
    with reconstruction_spliced(model, layer, sae, max_norm):
        spliced = mean_next_token_loss(model, windows, desc=f"loss with SAE at layer {layer}")
    return spliced - clean_loss
