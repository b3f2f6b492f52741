"""Generate, extract and test solutions for a list of work items, resumably.

Every generating phase goes through `run_items`: the items stream through the continuously batched
engine (common/generation.py); each finished program is extracted and handed to the sandbox at
once, which runs it while generation goes on; tested records are saved to the checkpoint in groups
of `batch_size`. An item's output does not depend on which items shared its batch (greedy rows
are batch-invariant, a sampled row seeds its own generator from its key), so a run killed and
resumed, or sharded over processes, gives the same rows as one uninterrupted run.
"""

from __future__ import annotations

import time
import zlib
from collections import Counter
from concurrent.futures import Future, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from common.activations import save_activations
from common.answer_formats import CHOICE, answer_format, option_token_ids, split_format
from common.checkpoint import BatchCheckpoint, phase_checkpoint
from common.config import Config
from common.degeneration import DegenerationLimits
from common.distributed import Shard, current_shard, shard_device, wait_for_everyone
from common.errors import PipelineError
from common.generation import EngineSettings, EngineStats, GenerationRequest, GenerationResult, generate
from common.hooks import HOOK_SITE, check_layers
from common.logging import get_logger
from common.phases import PhaseSpec
from common.positions import LAST_PROMPT, activation_path
from common.program_pass import answer_text, record_programs
from common.prompt_utils import PromptBuilder, resolve_prompt_style
from common.sandbox import ExecutionResult, SandboxPool
from common.interventions import Intervention
from common.utils import atomic_path, phase_dir
from common_simplified.model_loader import load_model_and_tokenizer

logger = get_logger("generation_job")


@dataclass(frozen=True)
class WorkItem:
    problem: dict[str, Any]
    sample_idx: int
    temperature: float  # 0.0 = greedy
    intervention: Intervention | None = None
    system_prompt: str = ""  # an instruction before the task (a prompting baseline); "" for the plain prompt

    def __post_init__(self):
        if self.intervention is not None and self.system_prompt:
            raise ValueError("a work item is steered or prompted, not both: its condition names one of them")

    @property
    def condition(self) -> str:
        """'' for the plain prompt unsteered; else the intervention's label, or the system prompt's digest."""
        if self.intervention:
            return self.intervention.label
        return f"system#{zlib.crc32(self.system_prompt.encode()):08x}" if self.system_prompt else ""

    @property
    def key(self) -> str:
        task = f"{self.problem['task_id']}#{self.sample_idx}"
        return f"{self.condition}|{task}" if self.condition else task

    @property
    def order(self) -> tuple[str, int, int]:
        """Output order: intervention, task in split order, sample."""
        return self.condition, self.problem["_order"], self.sample_idx

    @property
    def generation_order(self) -> tuple[int, int, str]:
        """Task first, so the samples and interventions of one prompt arrive together and share its prefill."""
        return self.problem["_order"], self.sample_idx, self.condition


@dataclass(frozen=True)
class Throughput:
    """What this process generated in this run (a resumed run counts only its own part)."""
    samples: int = 0
    new_tokens: int = 0
    wall_s: float = 0.0
    engine: EngineStats = field(default_factory=EngineStats)

    def to_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "new_tokens": self.new_tokens, "wall_s": round(self.wall_s, 1),
                "tokens_per_s": round(self.new_tokens / self.wall_s, 1) if self.wall_s else None,
                **self.engine.to_dict()}


def generation_report(rows: Sequence[dict[str, Any]], throughput: Throughput) -> dict[str, Any]:
    """For a phase summary: how generation ended (stop reasons), its length, and this run's speed."""
    lengths = [row["n_new_tokens"] for row in rows]
    return {"stop_reasons": dict(Counter(row["stop_reason"] for row in rows)),
            "new_tokens": int(sum(lengths)), "mean_new_tokens": float(np.mean(lengths)) if lengths else None,
            "this_run": throughput.to_dict()}


@dataclass(frozen=True)
class JobSettings:
    max_new_tokens: int
    batch_size: int
    seed: int
    exec_timeout: float
    exec_workers: int
    capture_layers: tuple[int, ...] = ()
    limits: DegenerationLimits = DegenerationLimits()


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


def request_for(item: WorkItem, builder: PromptBuilder, seed: int) -> GenerationRequest:
    """The engine request of a work item; a sampled item's generator is seeded from its own key."""
    if item.system_prompt:
        builder = replace(builder, system_prompt=item.system_prompt)
    return GenerationRequest(builder.build(item.problem), item.temperature, zlib.crc32(f"{seed}:{item.key}".encode()),
                             builder.stopper(item.problem), builder.code_opened(item.problem), item.intervention,
                             key=item)


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


def run_items(model, tokenizer, builder: PromptBuilder, items: list[WorkItem], settings: JobSettings,
              checkpoint: BatchCheckpoint, description: str = "generating", shard: Shard = Shard(0, 1)) -> Throughput:
    """Process every item of `items` that the checkpoint does not hold yet; with several processes, this
    one takes every `shard.count`-th batch of `batch_size` items."""
    done = checkpoint.done_keys()
    pending = sorted((item for item in items if item.key not in done), key=lambda item: item.generation_order)
    if len(pending) < len(items):
        logger.info("resuming: %d of %d items already done", len(items) - len(pending), len(items))
    wait_for_everyone()  # every process has read the same checkpoint before any of them adds to it
    batches = [pending[i:i + settings.batch_size] for i in range(0, len(pending), settings.batch_size)]
    mine = batches[shard.index::shard.count]
    if shard.count > 1:
        logger.info("process %d of %d takes %d of %d batches", shard.index, shard.count, len(mine), len(batches))
    if not mine:
        return Throughput()
    started, new_tokens, stats = time.perf_counter(), 0, EngineStats()
    engine = EngineSettings(settings.max_new_tokens, settings.batch_size, settings.capture_layers,
                            builder.adds_special_tokens, settings.limits)
    requests = (request_for(item, builder, settings.seed) for batch in mine for item in batch)
    with (SandboxPool(settings.exec_timeout, settings.exec_workers) as sandbox,
          tqdm(total=sum(map(len, mine)), desc=description, unit="sample", disable=not shard.is_main) as bar):
        saver = _TestedSaver(checkpoint, settings.batch_size, bar)
        try:
            for output in generate(model, tokenizer, requests, engine, stats):
                item = output.request.key
                answers = answer_format(item.problem)
                answer = answers.extract(output.text, item.problem, builder.code_prefix(item.problem))
                saver.add(output, answer, answers.judge(answer, item.problem, sandbox))
                new_tokens += output.n_new_tokens
        except BaseException:
            saver.keep_tested()
            raise
        saver.finish()
    throughput = Throughput(sum(map(len, mine)), new_tokens, time.perf_counter() - started, stats)
    logger.info("%s: %d samples, %d new tokens in %.0f s = %.1f tokens/s (prefill of %d prompts, %d tokens: %.0f s; "
                "%d decode steps of %.1f rows on average: %.0f s)", description, throughput.samples,
                throughput.new_tokens, throughput.wall_s, throughput.new_tokens / max(throughput.wall_s, 1e-9),
                stats.prefill.prefills + stats.prefill.partial_prefills, stats.prefill.prompt_tokens,
                stats.prefill.prefill_s, stats.decode_steps,
                stats.decoded_rows / max(stats.decode_steps, 1), stats.decode_s)
    return throughput


class _TestedSaver:
    """Holds generated programs until the sandbox has tested them, then saves them to the checkpoint,
    `batch_size` to a file: generation never waits for the tests of a group to finish."""

    def __init__(self, checkpoint: BatchCheckpoint, batch_size: int, bar: tqdm):
        self.checkpoint, self.batch_size, self.bar = checkpoint, batch_size, bar
        self.waiting: list[tuple[GenerationResult, str, Future]] = []
        self.passed = self.failed = 0
        self.saving = False  # inside checkpoint.save: left True if that raised

    def add(self, output: GenerationResult, code: str, tested: Future) -> None:
        self.waiting.append((output, code, tested))
        self._save(finish=False)

    def finish(self) -> None:
        wait([tested for _, _, tested in self.waiting])
        self._save(finish=True)

    def keep_tested(self) -> None:
        """After an error or Ctrl-C in generation: save every finished program once tested (seconds at most),
        so a resume need not generate it again. An error in saving itself is not retried."""
        if not self.saving:
            self.finish()

    def _save(self, finish: bool) -> None:
        ready = [entry for entry in self.waiting if entry[2].done()]
        while len(ready) >= self.batch_size or (finish and ready):
            group, ready = ready[:self.batch_size], ready[self.batch_size:]
            records = [_record(output, code, tested.result()) for output, code, tested in group]
            layers = group[0][0].activations
            activations = {f"layer_{layer}": torch.stack([output.activations[layer] for output, _, _ in group])
                           for layer in layers}
            keys = [output.request.key.key for output, _, _ in group]
            self.saving = True
            self.checkpoint.save(_file_safe(keys[0]), keys, records, activations)
            self.saving = False
            saved = {id(entry) for entry in group}
            self.waiting = [entry for entry in self.waiting if id(entry) not in saved]
            self.passed += sum(record["test_passed"] for record in records)
            self.failed += sum(not record["test_passed"] for record in records)
            self.bar.update(len(group))
            self.bar.set_postfix(passed=self.passed, failed=self.failed)


def _record(output: GenerationResult, code: str, result: ExecutionResult) -> dict[str, Any]:
    item: WorkItem = output.request.key
    return {
        "task_id": item.problem["task_id"], "sample_idx": item.sample_idx, "temperature": item.temperature,
        "prompt": output.request.prompt, "generated_code": code, "raw_output": output.text,
        "test_passed": result.passed, "error_type": result.error_type, "error_message": result.error_message,
        "n_new_tokens": output.n_new_tokens, "stop_reason": output.stop_reason,
        "generation_time": output.generation_time_s, "exec_time": result.duration_s,
        "cyclomatic_complexity": int(item.problem["cyclomatic_complexity"]),
        "difficulty": int(item.problem.get("difficulty", 0)), "family": str(item.problem.get("family", "")),
        **({"intervention": item.condition} if item.condition else {}),
    }


@dataclass
class SplitGeneration:
    rows: list[dict[str, Any]]  # by intervention (none first), then tasks in split order, samples together
    activations: dict[str, dict[int, torch.Tensor]]  # position -> layer -> [n_rows, d_model]; empty when not captured
    prompt_style: str
    too_long: list[str]  # task ids left out because their prompt is over max_prompt_tokens
    checkpoint: BatchCheckpoint  # cleared by the phase once its outputs are written
    throughput: Throughput  # of this run's own generations
    program_pass_s: float = 0.0  # the teacher-forced pass over prompt + program (code positions)

    @property
    def report(self) -> dict[str, Any]:
        return {**generation_report(self.rows, self.throughput), "program_pass_s": round(self.program_pass_s, 1),
                "rows_without_program": sum(row.get("program_error") is not None for row in self.rows)}

    def select(self, indices: Sequence[int]) -> tuple[list[dict[str, Any]], dict[str, dict[int, torch.Tensor]]]:
        """Some rows and their activations, in the order given."""
        picked = torch.as_tensor(list(indices), dtype=torch.long)
        return ([self.rows[i] for i in indices],
                {position: {layer: tensor[picked] for layer, tensor in by_layer.items()}
                 for position, by_layer in self.activations.items()})


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
                           config.n_exec_workers, tuple(config.layers) if capture else (), config.degeneration_limits)
    throughput = run_items(model, tokenizer, builder, [i for i in items if i.problem["task_id"] in sliced_ids],
                           settings, checkpoint, description=description, shard=shard)
    wait_for_everyone()
    if not shard.is_main:  # the main process writes the outputs
        return None
    done = checkpoint.load()
    missing = [item.key for item in items if item.key not in done]
    if missing:
        logger.warning("%d of %d samples are still to do: run `%s` without --start/--end (or the remaining "
                       "slices) to finish and write the outputs", len(missing), len(items), spec.command)
        return None
    ordered = sorted(items, key=lambda item: item.order)
    rows = [done[i.key][0] for i in ordered]
    activations, pass_s = {}, 0.0
    if capture:
        activations, pass_s = _positions(config, model, tokenizer, builder, ordered, rows,
                                         [done[i.key][1] for i in ordered])
    return SplitGeneration(rows, activations, builder.style, too_long, checkpoint, throughput, pass_s)


def _positions(config: Config, model, tokenizer, builder: PromptBuilder, items: list[WorkItem],
               rows: list[dict[str, Any]], captured: list[dict[str, torch.Tensor]]
               ) -> tuple[dict[str, dict[int, torch.Tensor]], float]:
    """Every configured position's activations (the last prompt token's from generation's own prefill, the code
    positions from one teacher-forced pass); the pass's confidence columns are added to `rows` in place."""
    activations: dict[str, dict[int, torch.Tensor]] = {}
    if LAST_PROMPT in config.activation_positions:
        activations[LAST_PROMPT] = {layer: torch.stack([row[f"layer_{layer}"] for row in captured])
                                    for layer in config.layers}
    started = time.perf_counter()
    texts = [answer_text(row["prompt"], row["raw_output"], item.problem) for item, row in zip(items, rows)]
    problems = [item.problem for item in items]
    option_ids = (option_token_ids(tokenizer, len(problems[0]["options"]))  # the loader evens out the counts
                  if split_format(problems) is CHOICE else ())
    program_pass = record_programs(model, tokenizer, texts, config.layers, config.position_k,
                                   builder.adds_special_tokens, option_ids=option_ids)
    for name, values in program_pass.columns.items():
        for row, value in zip(rows, values):
            row[name] = value
    activations.update({position: program_pass.activations[position] for position in config.activation_positions
                        if position != LAST_PROMPT})
    pass_s = time.perf_counter() - started
    logger.info("activations over the code: %d programs in %.0f s (%d rows without a program)",
                len(rows), pass_s, sum(value is not None for value in program_pass.columns["program_error"]))
    return activations, pass_s


def write_split_outputs(config: Config, out_dir: Path, table_name: str, rows: list[dict[str, Any]],
                        activations: dict[str, dict[int, torch.Tensor]],
                        activations_folder: str = "activations") -> list[Path]:
    """The sample table and one activation file per position and layer, row i of each file belonging to rows[i]."""
    table_path = out_dir / table_name
    with atomic_path(table_path) as tmp:
        pd.DataFrame(rows).to_parquet(tmp, index=False)
    paths = [table_path]
    for position, by_layer in activations.items():
        for layer, stacked in by_layer.items():
            path = activation_path(out_dir / activations_folder, position, layer)
            save_activations(path, stacked, {"layer": layer, "site": HOOK_SITE, "position": position,
                                             "position_k": config.position_k, "model_name": config.model_name,
                                             "rows": table_name})
            paths.append(path)
    return paths


def _file_safe(key: str) -> str:
    """A batch file name from its first item's key: readable when it can be, unique always."""
    readable = "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in key)[:80]
    return f"{readable}_{zlib.crc32(key.encode()):08x}"


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """Parquet gives numpy arrays for list columns; prompts and the checkpoint want plain lists."""
    return {k: (list(v) if hasattr(v, "tolist") and not isinstance(v, str) else v) for k, v in row.items()}
