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
from typing import Any, ContextManager, Protocol, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from common.aggregators import AGGREGATORS
from common.classification import group_bootstrap_counts
from common.logging import get_logger
from common.program_pass import ProgramText, tokenize_program

logger = get_logger("phase2_9")

RESAMPLES = 1000  # task resamples for the held-out spread's interval


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

    def close(self) -> None: ...


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


def read(model, batch: Sequence[Side], training: AdapterTraining, with_nll: bool = True) -> Read:
    """One forward pass over right-padded sides: each side's loss-layer state and (`with_nll`) its program tokens'
    NLL. Logits are computed only over the span that predicts some side's program: the vocabulary projection and
    its log-softmax are a large share of a pass, and most positions are prompt."""
    width = max(len(side.ids) for side in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    for i, side in enumerate(batch):
        ids[i, :len(side.ids)], mask[i, :len(side.ids)] = torch.tensor(side.ids), 1
    device = next(model.parameters()).device
    first = min(int(side.program[0]) for side in batch) - 1  # the position that predicts the earliest program token
    keep = torch.arange(first, max(int(side.program[-1]) for side in batch), device=device) if with_nll else 1
    output = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True,
                   logits_to_keep=keep)
    hidden = output.hidden_states[training.loss_layer + 1]  # [0] is the embeddings
    log_probs = torch.log_softmax(output.logits.float(), dim=-1) if with_nll else None
    states, nll = [], []
    for i, side in enumerate(batch):
        program = torch.as_tensor(side.program, device=device)
        states.append(hidden[i, program[-training.loss_tokens:]].float().mean(0))
        if log_probs is not None:
            targets = ids[i, program].to(device)
            nll.append(-log_probs[i, program - 1 - first].gather(-1, targets[:, None])[:, 0])
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
    states = torch.cat([read(model, pair_sides(pairs[i:i + training.batch_pairs], all_sides), training,
                             with_nll=False).states
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
    """Adam on the trainable's parameters for `max_steps` (or until the `time_budget_s` guard); batches of pairs
    drawn without replacement, reshuffled each pass over them."""
    optimiser = torch.optim.Adam(trainable.parameters(), lr=training.lr)
    rng = np.random.default_rng(training.seed)
    order: list[int] = []
    log = TrainingLog()
    started = time.perf_counter()
    with tqdm(total=training.max_steps, desc=description, unit="step") as bar:
        for step in range(training.max_steps):
            if time.perf_counter() - started > training.time_budget_s:
                log.stopped_by = "time_budget_s"
                logger.warning("%s stopped by adapter_time_budget_s after %d of %d steps: its result depends on this "
                               "machine's speed (fewer adapter_max_steps keep it reproducible)", description, step,
                               training.max_steps)
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


@dataclass
class HeldOut:
    """Held-out pairs read at one coefficient: per pair its separation (in units of the reference RMS), per side the
    mean NLL of its program tokens."""
    separation: np.ndarray  # [n_pairs]
    side_nll: np.ndarray  # [2 * n_pairs], in `pair_sides` order


@torch.no_grad()
def held_out(model, applied: ContextManager[None], pairs: np.ndarray, all_sides: Sequence[Side],
             direction: torch.Tensor, scale: float, training: AdapterTraining) -> HeldOut:
    separated, nll = [], []
    with applied:
        for i in range(0, len(pairs), training.batch_pairs):
            result = read(model, pair_sides(pairs[i:i + training.batch_pairs], all_sides), training)
            separated.append(separations(result.states, direction) / scale)
            nll += [float(side.mean()) for side in result.nll]
    return HeldOut(torch.cat(separated).cpu().numpy(), np.array(nll))


def held_out_summary(at: dict[float, HeldOut], tasks: np.ndarray, seed: int) -> dict[str, Any]:
    """Per coefficient, the mean separation of held-out pairs and the mean rise of their programs' NLL over c = 0
    (nats per token); the spread sep(+1) - sep(-1), what training pushes up, with a 95% interval resampling tasks
    (a task's pairs share its reference or its programs)."""
    base = at[0.0]
    spread = at[1.0].separation - at[-1.0].separation
    counts = group_bootstrap_counts(tasks, RESAMPLES, seed)
    low, high = np.percentile(counts @ spread / counts.sum(1), [2.5, 97.5])
    return {"n_pairs": len(spread), "n_tasks": len(set(tasks)),
            "spread": {"mean": float(spread.mean()), "low": float(low), "high": float(high)},
            "by_coefficient": {f"{c:g}": {"separation": float(read_at.separation.mean()),
                                          "delta_nll": float((read_at.side_nll - base.side_nll).mean())}
                               for c, read_at in sorted(at.items())}}
