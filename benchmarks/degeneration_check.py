"""Were the degenerate-output rules right? Every row they cut, generated again without them.

    python -m benchmarks.degeneration_check --data-dir data --phase 3.5 [--phase 1 --phase 3.6]

For each unsteered row of the phase whose stop reason is a degenerate one (repetition, no_code,
overlong_code), the same request (prompt, temperature, the item's own seed) is generated again with
the rules off and its program tested. An item's tokens do not depend on its batch-mates, so this is
exactly what the row would have been. Reported: the rules' cost (cut rows that failed but would have
passed, over all programs that pass either way, with a Wilson interval; a cut row that passed anyway
lost nothing), the tokens they saved (the rerun's tokens minus the cut row's), and the margins the
thresholds leave on the programs that passed (replayed through the rules: the longest code block, the
latest start of the code, the longest periodic run).
"""

from __future__ import annotations

import argparse
from collections import Counter

import pandas as pd
import torch

from benchmarks.report import report
from common.code_extraction import extract_code
from common.config import Config
from common.degeneration import DEGENERATE_REASONS, DegenerationLimits, replay
from common.generation import EngineSettings, generate
from common.generation_job import WorkItem, request_for
from common.prompt_utils import PromptBuilder
from common.sandbox import Program, evaluate_many
from common.statistics import rate
from common.utils import load_json, manifest_path
from common_simplified.model_loader import load_model_and_tokenizer


def phase_rows(data_dir: str, phase: str) -> tuple[pd.DataFrame, dict]:
    """All unsteered sample rows of a finished phase, and its manifest."""
    manifest = manifest_path(data_dir, phase)
    tables = [pd.read_parquet(path) for path in sorted(manifest.parent.glob("dataset_*.parquet"))]
    rows = pd.concat(tables, ignore_index=True)
    return rows[rows.get("steering", pd.Series("", index=rows.index)).fillna("") == ""], load_json(manifest)


def passing_margins(passing: pd.DataFrame, tokenizer, code_opened, limits: DegenerationLimits) -> dict:
    """How far the programs that passed stayed from each threshold: their outputs (re-tokenised) replayed
    through the rules."""
    replays = [replay(tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.decode, limits, code_opened,
                      track_period=max(1, limits.repeat_max_period))
               for text in passing["raw_output"]]
    periods = [range(1, len(r.longest_runs) + 1) for r in replays]
    spans = [max([int(run) + p for p, run in zip(ps, r.longest_runs) if run >= p], default=0)
             for ps, r in zip(periods, replays)]  # tokens covered by two or more copies of one span
    opened = [r for r in replays if r.code_start is not None]
    return {"rows": len(replays), "longest_code_tokens": max((r.n_tokens - r.code_start for r in opened), default=0),
            "latest_code_start": max((r.code_start for r in opened), default=0),
            "longest_repeated_span_tokens": max(spans, default=0),
            "replays_the_rules_would_cut": sum(r.cut_at is not None for r in replays)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--phase", action="append", required=True, help="a generating phase: 1, 3.5 or 3.6")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    problems = pd.read_parquet(manifest_path(args.data_dir, "0").parent / "problems.parquet")
    by_id = {row["task_id"]: {**row, "test_list": list(row["test_list"]), "_order": 0}
             for row in problems.to_dict("records")}
    results = {}
    model = tokenizer = None
    for phase in args.phase:
        rows, manifest = phase_rows(args.data_dir, phase)
        config = manifest["config"]
        if model is None:
            model, tokenizer = load_model_and_tokenizer(config["model_name"], "cpu" if not torch.cuda.is_available()
                                                        else "auto")
        builder = PromptBuilder(manifest["prompt_style"], tokenizer)
        limits = Config(**{key: value for key, value in config.items() if key.startswith("stop_")}).degeneration_limits
        cut = rows[rows["stop_reason"].isin(DEGENERATE_REASONS)]
        items = [WorkItem(by_id[row.task_id], int(row.sample_idx), float(row.temperature)) for row in cut.itertuples()]
        requests = [request_for(item, builder, config["seed"]) for item in items]
        settings = EngineSettings(config["max_new_tokens"], args.batch_size, (), builder.adds_special_tokens)
        full = {r.request.key.key: r for r in generate(model, tokenizer, requests, settings)}
        reruns = [full[item.key] for item in items]
        programs = [Program(extract_code(r.text, item.problem["entry_point"], builder.code_prefix(item.problem)),
                            item.problem["tests"]) for r, item in zip(reruns, items)]
        would_pass = [result.passed for result in evaluate_many(programs, config["exec_timeout"], progress=False)]
        passed_anyway = cut["test_passed"].astype(bool).tolist()
        harmed = [rerun_passed and not cut_passed for rerun_passed, cut_passed in zip(would_pass, passed_anyway)]
        n_passing = int(rows["test_passed"].sum()) + sum(harmed)  # every program that passes with or without the rules
        saved = sum(r.n_new_tokens for r in reruns) - int(cut["n_new_tokens"].sum())
        results[phase] = {
            "rows": len(rows), "cut_rows": len(cut), "cut_by_reason": dict(Counter(cut["stop_reason"])),
            "cut_rows_that_passed_anyway": int(sum(passed_anyway)),
            "cut_rows_that_would_pass": int(sum(harmed)),
            "would_pass_by_reason": dict(Counter(reason for reason, lost in zip(cut["stop_reason"], harmed) if lost)),
            "passing_programs_cut": rate(int(sum(harmed)), n_passing).to_dict(),
            "passing_program_margins": passing_margins(rows[rows["test_passed"].astype(bool)], tokenizer,
                                                       builder.code_opened(next(iter(by_id.values()))), limits),
            "tokens_generated": int(rows["n_new_tokens"].sum()), "tokens_saved": int(saved),
            "tokens_saved_fraction": saved / (saved + int(rows["n_new_tokens"].sum())),
            "reruns_to_max_new_tokens": sum(r.stop_reason == "max_new_tokens" for r in reruns),
            "by_temperature": {f"{t:g}": {"rows": int((rows["temperature"] == t).sum()),
                                          "cut": int((cut["temperature"] == t).sum())}
                               for t in sorted(rows["temperature"].unique())},
            "cut_rows_detail": [{"key": item.key, "temperature": item.temperature, "reason": reason,
                                 "cut_tokens": int(cut_tokens), "full_tokens": rerun.n_new_tokens,
                                 "full_stop_reason": rerun.stop_reason, "passed_cut": cut_passed,
                                 "would_pass": passed}
                                for item, reason, cut_tokens, rerun, cut_passed, passed in
                                zip(items, cut["stop_reason"], cut["n_new_tokens"], reruns, passed_anyway, would_pass)]}
    report("degeneration_check", "; ".join(
        f"phase {phase}: {r['cut_rows']} of {r['rows']} rows cut, {r['cut_rows_that_would_pass']} would have passed "
        f"({100 * r['passing_programs_cut']['rate']:.1f}% of passing programs), {r['tokens_saved']} tokens saved "
        f"({100 * r['tokens_saved_fraction']:.0f}%)" for phase, r in results.items()),
        {"data_dir": args.data_dir, "phases": results})


if __name__ == "__main__":
    main()
