"""Seed 004's training objective, shared by the SVD-rotation adapter and its LoRA baseline.

A contrastive pair is a passing and a failing program of one task (phase 2.7). The model reads each side teacher-
forced; at the loss layer the mean over the program's last `loss_tokens` tokens is that side's state. The reference
direction is the paired PCA (common/aggregators.py) of the unadapted model's states, computed once and frozen. The
adapter, run at c = +1 and at c = -1 on the same batch, is pushed to separate the pair along that direction one way
at +1 and the other at -1:

    loss = -(sep(+1) - sep(-1)) / 2 + coherence_weight * (hinge(+1) + hinge(-1)),
    sep(c) = mean over pairs of (h_pass(c) - h_fail(c)) . d / rms_ref,
    hinge(c) = mean over program tokens of max(0, NLL_c - NLL_0 - tau),

where rms_ref, the root mean square of the reference separations, makes sep unitless, and the hinge is the journal's
per-token coherence margin: no penalty while no program token's NLL rises more than tau nats above the unadapted
model's, so the adapter cannot buy separation by breaking single tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Protocol, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from common.aggregators import AGGREGATORS
from common.program_pass import ProgramText, tokenize_program


@dataclass(frozen=True)
class AdapterTraining:
    """The phase's config slice."""
    loss_layer: int
    loss_tokens: int
    coherence_nats: float
    coherence_weight: float
    lr: float
    batch_pairs: int
    max_steps: int
    time_budget_s: float
    seed: int


@dataclass(frozen=True)
class Side:
    ids: list[int]  # prompt + output up to the program's end
    program: np.ndarray  # positions of the program's tokens in `ids`


class Trainable(Protocol):
    def parameters(self) -> list[torch.Tensor]: ...

    def applied(self, coefficient: float) -> ContextManager[None]: ...


def sides(tokenizer, texts: Sequence[ProgramText], add_special_tokens: bool) -> list[Side]:
    out = []
    for text in texts:
        prompt_ids, continuation, program = tokenize_program(text, tokenizer, add_special_tokens)
        out.append(Side(list(prompt_ids) + continuation, len(prompt_ids) + program))
    return out


@dataclass
class Read:
    states: torch.Tensor  # [n_sides, d_model] at the loss layer
    nll: list[torch.Tensor]  # per side, [program tokens]


def read(model, batch: Sequence[Side], training: AdapterTraining) -> Read:
    """One forward pass over right-padded sides: each side's loss-layer state and its program tokens' NLL."""
    width = max(len(side.ids) for side in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    for i, side in enumerate(batch):
        ids[i, :len(side.ids)], mask[i, :len(side.ids)] = torch.tensor(side.ids), 1
    device = next(model.parameters()).device
    output = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
    hidden = output.hidden_states[training.loss_layer + 1]  # [0] is the embeddings
    log_probs = torch.log_softmax(output.logits.float(), dim=-1)
    states, nll = [], []
    for i, side in enumerate(batch):
        program = torch.as_tensor(side.program, device=device)
        states.append(hidden[i, program[-training.loss_tokens:]].float().mean(0))
        targets = ids[i, program].to(device)
        nll.append(-log_probs[i, program - 1].gather(-1, targets[:, None])[:, 0])
    return Read(torch.stack(states), nll)


def pair_sides(pairs: np.ndarray, all_sides: Sequence[Side]) -> list[Side]:
    """[pass_0, fail_0, pass_1, fail_1, ...] for rows of [n, 2] side indices."""
    return [all_sides[i] for pair in pairs for i in pair]


def separations(states: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Per pair, (h_pass - h_fail) . d for states ordered as `pair_sides` orders them."""
    return (states[0::2] - states[1::2]) @ direction.to(states.device, states.dtype)


@torch.no_grad()
def reference(model, pairs: np.ndarray, all_sides: Sequence[Side], training: AdapterTraining
              ) -> tuple[torch.Tensor, float]:
    """The frozen direction (paired PCA of the unadapted model's states) and the RMS of its separations."""
    states = torch.cat([read(model, pair_sides(pairs[i:i + training.batch_pairs], all_sides), training).states
                        for i in tqdm(range(0, len(pairs), training.batch_pairs), desc="reference direction",
                                      unit="batch")])
    direction = AGGREGATORS["pca"](states[0::2], states[1::2])
    return direction, float(separations(states, direction).pow(2).mean().sqrt())


@dataclass
class TrainingLog:
    steps: list[dict[str, float]] = field(default_factory=list)
    wall_s: float = 0.0
    stopped_by: str = ""


def train(model, trainable: Trainable, pairs: np.ndarray, all_sides: Sequence[Side], direction: torch.Tensor,
          scale: float, training: AdapterTraining, description: str) -> TrainingLog:
    """Adam on the trainable's parameters until `max_steps` or `time_budget_s`, whichever comes first; batches of
    pairs drawn without replacement, reshuffled each pass over them."""
    optimiser = torch.optim.Adam(trainable.parameters(), lr=training.lr)
    rng = np.random.default_rng(training.seed)
    order: list[int] = []
    log = TrainingLog()
    started = time.perf_counter()
    with tqdm(total=training.max_steps, desc=description, unit="step") as bar:
        for step in range(training.max_steps):
            if time.perf_counter() - started > training.time_budget_s:
                log.stopped_by = "time_budget_s"
                break
            if len(order) < training.batch_pairs:
                order = list(rng.permutation(len(pairs)))
            chosen, order = order[:training.batch_pairs], order[training.batch_pairs:]
            batch = pair_sides(pairs[chosen], all_sides)
            with torch.no_grad():
                base_nll = read(model, batch, training).nll
            terms = {}
            for coefficient in (1.0, -1.0):
                with trainable.applied(coefficient):
                    adapted_read = read(model, batch, training)
                terms[coefficient] = (separations(adapted_read.states, direction).mean() / scale,
                                      _hinge(adapted_read.nll, base_nll, training.coherence_nats))
            separation = (terms[1.0][0] - terms[-1.0][0]) / 2
            coherence = terms[1.0][1] + terms[-1.0][1]
            loss = -separation + training.coherence_weight * coherence
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            log.steps.append({"step": step, "loss": loss.item(), "separation": separation.item(),
                              "coherence": coherence.item(), "wall_s": time.perf_counter() - started})
            bar.update()
            bar.set_postfix(separation=f"{separation.item():.3f}", coherence=f"{coherence.item():.3f}")
        else:
            log.stopped_by = "max_steps"
    log.wall_s = time.perf_counter() - started
    return log


def _hinge(nll: list[torch.Tensor], base: list[torch.Tensor], tau: float) -> torch.Tensor:
    rises = torch.cat([steered - reference for steered, reference in zip(nll, base)])
    return torch.relu(rises - tau).mean()


@torch.no_grad()
def held_out_separation(model, applied: Callable[[float], ContextManager[None]], pairs: np.ndarray,
                        all_sides: Sequence[Side], direction: torch.Tensor, scale: float, training: AdapterTraining,
                        coefficients: Sequence[float] = (-1.0, 0.0, 1.0)) -> dict[str, Any]:
    """Per coefficient, the mean separation of held-out pairs (in units of the reference RMS) and the mean rise of
    their program tokens' NLL over the unadapted model's (nats per token): did training generalise, and at what
    cost."""
    by_coefficient: dict[float, tuple[list[torch.Tensor], list[torch.Tensor]]] = {c: ([], []) for c in coefficients}
    for i in range(0, len(pairs), training.batch_pairs):
        batch = pair_sides(pairs[i:i + training.batch_pairs], all_sides)
        for coefficient in coefficients:
            with applied(coefficient):
                result = read(model, batch, training)
            by_coefficient[coefficient][0].append(separations(result.states, direction) / scale)
            by_coefficient[coefficient][1].append(torch.stack([side.mean() for side in result.nll]))
    base_nll = torch.cat(by_coefficient[0.0][1]) if 0.0 in by_coefficient else None
    out = {}
    for coefficient, (separated, nll) in by_coefficient.items():
        values, side_nll = torch.cat(separated), torch.cat(nll)
        out[f"{coefficient:g}"] = {
            "separation": float(values.mean()), "separation_sd": float(values.std()) if len(values) > 1 else None,
            "delta_nll": None if base_nll is None else float((side_nll - base_nll).mean())}
    return {"n_pairs": len(pairs), "by_coefficient": out}
