"""Phase 3.8's table as markdown: every score beside every baseline, validation figures with their intervals."""

from __future__ import annotations

from typing import Any


def _interval(result: dict[str, Any] | None, signed: bool = False) -> str:
    if not result or result.get("auroc", result.get("difference")) is None:
        return "n/a"
    value = result.get("difference", result.get("auroc"))
    if value != value:  # NaN: a class was missing
        return "n/a"
    spec = "+.3f" if signed else ".3f"
    return f"{value:{spec}} [{result['low']:{spec}}, {result['high']:{spec}}]"


def markdown_table(rows: list[dict[str, Any]], best_baseline: str | None, counts: dict[str, Any]) -> str:
    report = counts["validation"]
    lines = [f"Validation split: {report['rows']} programs of {report['tasks']} tasks ({report['passing']} passing, "
             f"{report['failing']} failing); {report['tasks_with_both_classes']} tasks have both a passing and a "
             "failing program. Intervals: 95% task bootstrap. Within tasks: AUROC over pairs of one task only (n/a: "
             "the score is the same for every program of a task); 'ended itself': only programs no stop rule or "
             "budget cut; '- log-prob': within-task AUROC minus that of the model's mean log-probability on the same "
             f"pairs. Over a baseline: AUROC of a logistic model on (baseline, score) minus the baseline's, both fitted "
             f"on hyperparams; best baseline (chosen on hyperparams) = {best_baseline}; declared = confidence_and_length.",
             "", "| kind | position | score (predicts) | validation AUROC | within tasks | within tasks, ended itself "
             "| within tasks - log-prob | over best baseline | over declared | n |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        name = f"**{row['score']}**" if row["is_best_baseline"] else row["score"]
        n = row["validation"]["n_positive"] + row["validation"]["n_negative"]
        lines.append(f"| {row['kind']} | {row['position']} | {name} ({row['predicts']}) | "
                     f"{_interval(row['validation'])} | {_interval(row['within_task'])} | "
                     f"{_interval(row['within_task_ended_itself'])} | "
                     f"{_interval(row['within_task_over_logprob'], signed=True)} | "
                     f"{_interval(row['over_best_baseline'], signed=True)} | "
                     f"{_interval(row['over_declared'], signed=True)} | {n} |")
    return "\n".join(lines) + "\n"
