"""Generate, extract and test solutions for a list of work items, batch by batch, resumably.

Every generating phase goes through `run_items`: build prompts, generate a batch (activations
optional), extract each program, run it in the sandbox, save the batch to the checkpoint. Items are
batched in a fixed order (greedy items first, then sampled ones), so a run killed and resumed forms
the same batches and gives byte-identical outputs.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch
from tqdm import tqdm

from common.activations import save_activations
from common.checkpoint import BatchCheckpoint, phase_checkpoint
from common.code_extraction import extract_code
from common.config import Config
from common.distributed import Shard, current_shard, shard_device, wait_for_everyone
from common.errors import PipelineError
from common.generation import generate_batch
from common.hooks import HOOK_SITE, check_layers
from common.logging import get_logger
from common.phases import PhaseSpec
from common.prompt_utils import PromptBuilder, resolve_prompt_style
from common.sandbox import Program, evaluate_many
from common.steering import Steering
from common.utils import atomic_path, phase_dir
from common_simplified.model_loader import load_model_and_tokenizer

logger = get_logger("generation_job")


@dataclass(frozen=True)
class WorkItem:
    problem: dict[str, Any]
    sample_idx: int
    temperature: float  # 0.0 = greedy
    steering: Steering | None = None

    @property
    def condition(self) -> str:
        """'' when unsteered; else the steering's label. Items of one batch share it."""
        return self.steering.label if self.steering else ""

    @property
    def key(self) -> str:
        task = f"{self.problem['task_id']}#{self.sample_idx}"
        return f"{self.condition}|{task}" if self.steering else task


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
    return make_temperature_items(problems, [temperature], samples_per_task)


def make_temperature_items(problems: Sequence[dict[str, Any]], temperatures: Sequence[float],
                           samples_per_temperature: int) -> list[WorkItem]:
    """Sample 0 of each problem is greedy; then `samples_per_temperature` per temperature, numbered on from 1."""
    items = [WorkItem(p, 0, 0.0) for p in problems]
    for t_index, temperature in enumerate(temperatures):
        first = 1 + t_index * samples_per_temperature
        items += [WorkItem(p, first + s, temperature) for p in problems for s in range(samples_per_temperature)]
    return items


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
    """Consecutive runs of items with the same temperature and steering, at most batch_size long."""
    batches: list[list[WorkItem]] = []
    for item in items:
        if batches and len(batches[-1]) < batch_size and batches[-1][0].temperature == item.temperature \
                and batches[-1][0].condition == item.condition:
            batches[-1].append(item)
        else:
            batches.append([item])
    return batches


def run_items(model, tokenizer, builder: PromptBuilder, items: list[WorkItem], settings: JobSettings,
              checkpoint: BatchCheckpoint, description: str = "generating", shard: Shard = Shard(0, 1)) -> None:
    """Process every item of `items` that the checkpoint does not hold yet; with several processes, this
    one takes every `shard.count`-th batch."""
    done = checkpoint.done_keys()
    pending = [item for item in items if item.key not in done]
    if len(pending) < len(items):
        logger.info("resuming: %d of %d items already done", len(items) - len(pending), len(items))
    wait_for_everyone()  # every process has read the same checkpoint before any of them adds to it
    batches = _batches(pending, settings.batch_size)
    mine = batches[shard.index::shard.count]
    if shard.count > 1:
        logger.info("process %d of %d takes %d of %d batches", shard.index, shard.count, len(mine), len(batches))
    passed = failed = 0
    with tqdm(total=sum(len(b) for b in mine), desc=description, unit="sample", disable=not shard.is_main) as bar:
        for batch in mine:
            records, activations = _process_batch(model, tokenizer, builder, batch, settings)
            checkpoint.save(_file_safe(batch[0].key), [i.key for i in batch], records, activations)
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
                             capture_layers=settings.capture_layers, add_special_tokens=builder.adds_special_tokens,
                             steering=batch[0].steering)
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
            **({"steering": item.condition} if item.steering else {}),
        })
    activations = {f"layer_{layer}": torch.stack([out.activations[layer] for out in outputs])
                   for layer in settings.capture_layers}
    return records, activations


@dataclass
class SplitGeneration:
    rows: list[dict[str, Any]]  # by steering condition (unsteered first), then tasks in split order, samples together
    tensors: list[dict[str, torch.Tensor]]  # row i's activations, "layer_{L}" -> [d_model]
    prompt_style: str
    too_long: list[str]  # task ids left out because their prompt is over max_prompt_tokens
    checkpoint: BatchCheckpoint  # cleared by the phase once its outputs are written


def generate_split(config: Config, spec: PhaseSpec, inputs: dict[str, dict[str, str]], problems: pd.DataFrame,
                   plan: Callable[[list[dict[str, Any]]], list[WorkItem]], description: str,
                   capture: bool = True, loaded: tuple[Any, Any] | None = None,
                   checkpoint_inputs: dict[str, dict[str, str]] | None = None) -> SplitGeneration | None:
    """Generate, test and record every planned item of a split, resumably; None while a --start/--end slice
    leaves items to do, and in every process of a distributed launch but the main one. Shared by every
    generating phase, so none has its own loop.

    `capture=False` records no activations (steered runs); `loaded` is a (model, tokenizer) already loaded;
    `checkpoint_inputs` (default: `inputs`) are the upstream hashes the generations depend on."""
    if problems.empty:
        raise PipelineError(f"phase {spec.id} has no problems to generate for: its split is empty "
                            "(more tasks, or other split_fractions)")
    shard = current_shard()
    identity = ({k: getattr(config, k) for k in spec.generation_keys}, checkpoint_inputs or inputs)
    if shard.is_main:  # the main process alone checks (and may discard) the checkpoint, then the others open it
        checkpoint = phase_checkpoint(phase_dir(config, spec.id) / "checkpoint", *identity, config.force)
    wait_for_everyone()
    if not shard.is_main:
        checkpoint = phase_checkpoint(phase_dir(config, spec.id) / "checkpoint", *identity, False)
    model, tokenizer = loaded or load_model_and_tokenizer(config.model_name, shard_device(config.device),
                                                          config.dtype)
    check_layers(model, config.layers)
    builder = PromptBuilder(resolve_prompt_style(config.prompt_style, tokenizer), tokenizer)
    records = [{**_plain(row), "_order": order} for order, row in enumerate(problems.to_dict("records"))]
    items, too_long = drop_long_prompts(plan(records), builder, tokenizer, config.max_prompt_tokens)
    sliced_ids = {r["task_id"] for r in records[config.task_start:config.task_end]}
    settings = JobSettings(config.max_new_tokens, config.batch_size, config.seed, config.exec_timeout,
                           config.n_exec_workers, tuple(config.layers) if capture else ())
    run_items(model, tokenizer, builder, [i for i in items if i.problem["task_id"] in sliced_ids], settings,
              checkpoint, description=description, shard=shard)
    wait_for_everyone()
    if not shard.is_main:  # the main process writes the outputs
        return None
    done = checkpoint.load()
    missing = [item.key for item in items if item.key not in done]
    if missing:
        logger.warning("%d of %d samples are still to do: run `%s` without --start/--end (or the remaining "
                       "slices) to finish and write the outputs", len(missing), len(items), spec.command)
        return None
    ordered = sorted(items, key=lambda i: (i.condition, i.problem["_order"], i.sample_idx))
    return SplitGeneration([done[i.key][0] for i in ordered], [done[i.key][1] for i in ordered], builder.style,
                           too_long, checkpoint)


def write_split_outputs(config: Config, out_dir: Path, table_name: str, rows: list[dict[str, Any]],
                        tensors: list[dict[str, torch.Tensor]], activations_folder: str = "activations") -> list[Path]:
    """The sample table and one activation file per layer, row i of each file belonging to rows[i]."""
    table_path = out_dir / table_name
    with atomic_path(table_path) as tmp:
        pd.DataFrame(rows).to_parquet(tmp, index=False)
    paths = [table_path]
    for layer in config.layers:
        stacked = torch.stack([row_tensors[f"layer_{layer}"] for row_tensors in tensors])
        path = out_dir / activations_folder / f"layer_{layer}.safetensors"
        save_activations(path, stacked, {"layer": layer, "site": HOOK_SITE, "position": "last prompt token",
                                         "model_name": config.model_name, "rows": table_name})
        paths.append(path)
    return paths


def _file_safe(key: str) -> str:
    """A batch file name from its first item's key: readable when it can be, unique always."""
    readable = "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in key)[:80]
    return f"{readable}_{zlib.crc32(key.encode()):08x}"


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """Parquet gives numpy arrays for list columns; prompts and the checkpoint want plain lists."""
    return {k: (list(v) if hasattr(v, "tolist") and not isinstance(v, str) else v) for k, v in row.items()}
