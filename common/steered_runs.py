"""Steered generations compared task by task with an unsteered greedy baseline (phases 4.5 and 4.8).

An `Arm` is one intervention (common/interventions/) applied to a set of tasks. Every arm of a
phase goes through the shared generation job in one checkpointed run, and each steered program is
set beside the baseline program of the same task: did the outcome flip, which way, how far did
the code move. The baseline is the greedy generation of phase 3.5/3.6; batched greedy generation
gives the tokens of one-at-a-time generation, so alpha = 0 reproduces it (tested).
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from common.answer_formats import answer_format
from common.code_similarity import divergence
from common.config import Config
from common.errors import PipelineError
from common.generation_job import WorkItem, generate_split
from common.phases import PhaseSpec
from common.statistics import mcnemar_exact, rate
from common.interventions import Intervention
from common.utils import atomic_path, atomic_write_text

FENCE = "````"  # four backticks: prompts and model output hold ``` fences of their own
BASELINE_COLUMNS = ["task_id", "prompt", "generated_code", "test_passed", "error_type", "cyclomatic_complexity"]


@dataclass(frozen=True)
class Arm:
    name: str  # what the arm tests, e.g. "sae_latent/correct@0.1" or "control/random_isotropic/3@0.1"
    intervention: Intervention
    task_ids: tuple[Any, ...]


def run_arms(config: Config, spec: PhaseSpec, inputs: dict[str, dict[str, str]], problems: pd.DataFrame,
             baseline: pd.DataFrame, arms: Sequence[Arm], description: str,
             loaded: tuple[Any, Any] | None = None) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    """One row per (arm, task): baseline and steered outcome side by side, and the generation report (stop
    reasons, tokens, speed). None while a --start/--end slice leaves work.

    Arms that share an intervention share its generations: each (intervention, task) is generated once. The
    generations stay in the phase's checkpoint, keyed by the intervention's label (for a residual addition:
    direction, digest of its vector, alpha, positions) and task. The checkpoint depends on what the generations depend on (generation
    config, baseline rows, problems), not on upstream manifests: rerunning an upstream phase in a way
    that leaves those alone (phase 3.5 with other temperatures, phase 4.5 with another choice) reuses
    every generation still planned, and a changed choice reruns in seconds."""
    checkpoint_inputs = {"baseline rows": {"sha256": _frame_hash(baseline[BASELINE_COLUMNS])},
                         "problems": {"sha256": _frame_hash(problems)}}

    def plan(records: list[dict[str, Any]]) -> list[WorkItem]:
        by_id = {r["task_id"]: r for r in records}
        unique = {}
        for arm in arms:
            for task_id in arm.task_ids:
                item = WorkItem(by_id[task_id], 0, 0.0, arm.intervention)
                unique.setdefault(item.key, item)
        return list(unique.values())

    generated = generate_split(config, spec, inputs, problems, plan, description, capture=False, loaded=loaded,
                               checkpoint_inputs=checkpoint_inputs)
    if generated is None:
        return None
    by_key = {(row["intervention"], row["task_id"]): row for row in generated.rows}
    by_task = {str(p["task_id"]): p for p in problems.to_dict("records")}
    base = baseline.set_index("task_id")
    rows = []
    for arm, task_id in ((arm, task_id) for arm in arms for task_id in arm.task_ids):
        steered = by_key.get((arm.intervention.label, task_id))
        if steered is None:  # left out: prompt over max_prompt_tokens (reported by the generation job)
            continue
        before = base.loc[task_id]
        if steered["prompt"] != before["prompt"]:
            raise PipelineError(f"task {steered['task_id']}: the prompt differs from the baseline's (prompt_style or "
                                "prompt template changed since the baseline phase ran): rerun it first")
        rows.append({"arm": arm.name, **arm.intervention.columns(), "task_id": steered["task_id"],
                     "cyclomatic_complexity": int(before["cyclomatic_complexity"]),
                     "baseline_passed": bool(before["test_passed"]), "steered_passed": bool(steered["test_passed"]),
                     "flipped": bool(before["test_passed"]) != bool(steered["test_passed"]),
                     "steered_error_type": steered["error_type"], "steered_error_message": steered["error_message"],
                     "steered_valid_code": answer_format(by_task[task_id]).is_attempt(steered["generated_code"],
                                                                                      by_task[task_id]),
                     "baseline_code": before["generated_code"], "steered_code": steered["generated_code"],
                     "prompt": steered["prompt"], "n_new_tokens": steered["n_new_tokens"],
                     "generation_s": steered["generation_time"], "stop_reason": steered["stop_reason"],
                     **divergence(before["generated_code"], steered["generated_code"])})
    return pd.DataFrame(rows), generated.report


def _frame_hash(frame: pd.DataFrame) -> str:
    return hashlib.sha256(frame.to_json(orient="records").encode()).hexdigest()


def save_rows(rows: pd.DataFrame, path: Path) -> None:
    """The per-(arm, task) table without the prompts (each is in the baseline table already)."""
    with atomic_path(path) as tmp:
        rows.drop(columns=["prompt"]).to_parquet(tmp, index=False)


def flip_direction(baseline_passed: bool, steered_passed: bool) -> str:
    return f"{'pass' if baseline_passed else 'fail'}->{'pass' if steered_passed else 'fail'}"


def arm_metrics(rows: pd.DataFrame) -> dict[str, Any]:
    """Flip rate and its directions, steered pass, syntax-error and valid-code rates, divergence; counts and
    intervals."""
    n = len(rows)
    directions = {flip_direction(b, s): int(((rows["baseline_passed"] == b) & (rows["steered_passed"] == s)).sum())
                  for b in (True, False) for s in (True, False)}
    syntax_errors = int((rows["steered_error_type"] == "syntax").sum()) if n else 0
    return {"n_problems": n, "flip_rate": rate(int(rows["flipped"].sum()) if n else 0, n).to_dict(),
            "flip_directions": directions,
            "steered_pass_rate": rate(int(rows["steered_passed"].sum()) if n else 0, n).to_dict(),
            "baseline_pass_rate": rate(int(rows["baseline_passed"].sum()) if n else 0, n).to_dict(),
            "syntax_error_rate": rate(syntax_errors, n).to_dict(),
            "valid_code_rate": rate(int(rows["steered_valid_code"].sum()) if n else 0, n).to_dict(),
            "mean_token_similarity": _mean(rows, "token_similarity"),
            "mean_char_similarity": _mean(rows, "char_similarity"),
            "mean_length_ratio": _mean(rows, "length_ratio"),
            "mean_new_tokens": _mean(rows, "n_new_tokens")}


def _rate_of(rows: pd.DataFrame, outcome: str) -> dict[str, Any]:
    values = rows[outcome].dropna().astype(bool)
    return rate(int(values.sum()), len(values)).to_dict()


def endpoint_rates(rows: pd.DataFrame) -> dict[str, Any]:
    """Correction, preservation and corruption over the whole split, with counts and Wilson intervals, and the
    whole-split pass rate with its McNemar."""
    fixed, broken = rows["fixed"].dropna().astype(bool), rows["broken"].dropna().astype(bool)
    return {"correction": _rate_of(rows, "fixed"), "preservation": _rate_of(rows, "kept"),
            "corruption": _rate_of(rows, "broken"),
            "whole_split": {"baseline_pass_rate": rate(int(rows["baseline_passed"].sum()), len(rows)).to_dict(),
                            "steered_pass_rate": rate(int(rows["steered_passed"].sum()), len(rows)).to_dict(),
                            "fail_to_pass": int(fixed.sum()), "pass_to_fail": int(broken.sum()),
                            "mcnemar_p": mcnemar_exact(int(fixed.sum()), int(broken.sum()))}}


def outcome_matrix(rows: pd.DataFrame, arms: Sequence[str], outcome: str) -> tuple[np.ndarray, list[Any]]:
    """[len(arms), tasks] booleans of `outcome` ("fixed", "broken", "kept") on the tasks every arm has a row for
    (a steered program the sandbox could not judge leaves its task out of the comparison), and those tasks."""
    table = rows[rows["arm"].isin(arms)].pivot(index="task_id", columns="arm", values=outcome)
    table = table.reindex(columns=list(arms)).dropna()
    return table.to_numpy(dtype=bool).T, list(table.index)


def with_outcomes(rows: pd.DataFrame) -> pd.DataFrame:
    """Adds fixed (fail -> pass), broken (pass -> fail) and kept (pass -> pass), NaN where they do not apply,
    and leaves out rows whose steered program the sandbox could not judge ("unsupported")."""
    rows = rows[rows["steered_error_type"] != "unsupported"].copy()
    passing, steered = rows["baseline_passed"].astype(bool), rows["steered_passed"].astype(bool)
    rows["fixed"] = (steered & ~passing).where(~passing)
    rows["broken"] = (~steered & passing).where(passing)
    rows["kept"] = (steered & passing).where(passing)
    return rows


def _mean(rows: pd.DataFrame, column: str) -> float | None:
    values = rows[column].dropna() if len(rows) else []
    return float(values.mean()) if len(values) else None


def write_examples(path: Path, title: str, rows: pd.DataFrame) -> None:
    """A Markdown file a person can scan: per task the outcome, both programs and their diff."""
    parts = [f"# {title}\n"]
    for _, row in rows.iterrows():
        change = flip_direction(row["baseline_passed"], row["steered_passed"])
        parts.append(f"## task {row['task_id']}: {change}{'  (FLIPPED)' if row['flipped'] else ''}\n\n"
                     f"steered error type: {row['steered_error_type']}; token similarity "
                     f"{row['token_similarity']:.2f}, char similarity {row['char_similarity']:.2f}, "
                     f"{row['n_new_tokens']} new tokens; complexity {row['cyclomatic_complexity']}\n")
        parts.append(f"<details><summary>prompt</summary>\n\n{FENCE}\n{row['prompt']}\n{FENCE}\n</details>\n")
        parts.append(f"baseline code:\n\n{FENCE}python\n{row['baseline_code']}\n{FENCE}\n")
        parts.append(f"steered code:\n\n{FENCE}python\n{row['steered_code']}\n{FENCE}\n")
        diff = "".join(difflib.unified_diff(row["baseline_code"].splitlines(keepends=True),
                                            row["steered_code"].splitlines(keepends=True), "baseline", "steered"))
        parts.append(f"diff:\n\n{FENCE}diff\n{diff or '(identical)'}\n{FENCE}\n")
    atomic_write_text(path, "\n".join(parts))
