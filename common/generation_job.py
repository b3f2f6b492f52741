"""Generate, extract and test solutions for a list of work items, batch by batch, resumably.

Every generating phase goes through `run_items`: build prompts, generate a batch (activations
optional), extract each program, run it in the sandbox, save the batch to the checkpoint. Items are
batched in a fixed order (greedy items first, then sampled ones), so a run killed and resumed forms
the same batches and gives byte-identical outputs.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from tqdm import tqdm

from common.checkpoint import BatchCheckpoint
from common.code_extraction import extract_code
from common.generation import generate_batch
from common.logging import get_logger
from common.prompt_utils import PromptBuilder
from common.sandbox import Program, evaluate_many

logger = get_logger("generation_job")


@dataclass(frozen=True)
class WorkItem:
    problem: dict[str, Any]
    sample_idx: int
    temperature: float  # 0.0 = greedy

    @property
    def key(self) -> str:
        return f"{self.problem['task_id']}#{self.sample_idx}"


@dataclass(frozen=True)
class JobSettings:
    max_new_tokens: int
    batch_size: int
    seed: int
    exec_timeout: float
    exec_workers: int
    capture_layers: tuple[int, ...] = ()


def make_items(problems: Sequence[dict[str, Any]], samples_per_task: int, temperature: float) -> list[WorkItem]:
    """Sample 0 of each problem is greedy; samples 1..n are drawn at `temperature`."""
    greedy = [WorkItem(p, 0, 0.0) for p in problems]
    sampled = [WorkItem(p, i, temperature) for p in problems for i in range(1, samples_per_task + 1)]
    return greedy + sampled


def drop_long_prompts(items: list[WorkItem], builder: PromptBuilder, tokenizer, max_prompt_tokens: int
                      ) -> tuple[list[WorkItem], list[str]]:
    """Items whose prompt fits; the task ids of those that do not (reported, never silently lost)."""
    kept, too_long = [], []
    lengths: dict[str, int] = {}
    for item in items:
        task_id = item.problem["task_id"]
        if task_id not in lengths:
            prompt = builder.build(item.problem)
            lengths[task_id] = len(tokenizer(prompt, add_special_tokens=builder.adds_special_tokens)["input_ids"])
        if lengths[task_id] <= max_prompt_tokens:
            kept.append(item)
        elif task_id not in too_long:
            too_long.append(task_id)
    if too_long:
        logger.warning("%d tasks have prompts over %d tokens and are left out: %s", len(too_long),
                       max_prompt_tokens, ", ".join(too_long[:5]))
    return kept, too_long


def _batches(items: list[WorkItem], batch_size: int) -> list[list[WorkItem]]:
    """Consecutive runs of items with the same temperature, at most batch_size long."""
    batches: list[list[WorkItem]] = []
    for item in items:
        if batches and len(batches[-1]) < batch_size and batches[-1][0].temperature == item.temperature:
            batches[-1].append(item)
        else:
            batches.append([item])
    return batches


def run_items(model, tokenizer, builder: PromptBuilder, items: list[WorkItem], settings: JobSettings,
              checkpoint: BatchCheckpoint, description: str = "generating") -> None:
    """Process every item of `items` that the checkpoint does not hold yet."""
    done = checkpoint.done_keys()
    pending = [item for item in items if item.key not in done]
    if len(pending) < len(items):
        logger.info("resuming: %d of %d items already done", len(items) - len(pending), len(items))
    passed = failed = 0
    with tqdm(total=len(pending), desc=description, unit="sample") as bar:
        for batch in _batches(pending, settings.batch_size):
            records, activations = _process_batch(model, tokenizer, builder, batch, settings)
            checkpoint.save(batch[0].key.replace("/", "_").replace("#", "_s"), [i.key for i in batch], records,
                            activations)
            passed += sum(r["test_passed"] for r in records)
            failed += sum(not r["test_passed"] for r in records)
            bar.update(len(batch))
            bar.set_postfix(passed=passed, failed=failed)


def _process_batch(model, tokenizer, builder: PromptBuilder, batch: list[WorkItem], settings: JobSettings
                   ) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    prompts = [builder.build(item.problem) for item in batch]
    seed = zlib.crc32(f"{settings.seed}:{batch[0].key}".encode())
    outputs = generate_batch(model, tokenizer, prompts, max_new_tokens=settings.max_new_tokens,
                             temperature=batch[0].temperature, seed=seed,
                             stoppers=[builder.stopper(item.problem) for item in batch],
                             capture_layers=settings.capture_layers, add_special_tokens=builder.adds_special_tokens)
    codes = [extract_code(out.text, item.problem["entry_point"], builder.code_prefix(item.problem))
             for out, item in zip(outputs, batch)]
    results = evaluate_many([Program(code, item.problem["tests"]) for code, item in zip(codes, batch)],
                            timeout=settings.exec_timeout, workers=settings.exec_workers, progress=False)
    records = []
    for item, prompt, out, code, result in zip(batch, prompts, outputs, codes, results):
        records.append({
            "task_id": item.problem["task_id"], "sample_idx": item.sample_idx, "temperature": item.temperature,
            "prompt": prompt, "generated_code": code, "raw_output": out.text, "test_passed": result.passed,
            "error_type": result.error_type, "error_message": result.error_message,
            "n_new_tokens": out.n_new_tokens, "generation_time": out.generation_time_s,
            "exec_time": result.duration_s, "cyclomatic_complexity": int(item.problem["cyclomatic_complexity"]),
            "difficulty": int(item.problem.get("difficulty", 0)), "family": str(item.problem.get("family", "")),
        })
    activations = {f"layer_{layer}": torch.stack([out.activations[layer] for out in outputs])
                   for layer in settings.capture_layers}
    return records, activations
