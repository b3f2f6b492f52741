"""Each phase's headline numbers for the report: its summary's own headline where it writes one, its top-level
figures (counts, rates with their intervals, short settings) otherwise, and for a few phases the numbers a reader
looks for first, read from the files that hold them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from common.utils import load_json
from phase5.markdown import interval, proportion

MAX_TEXT = 120  # longer strings are settings or lists a reader finds in the folded summary


def _is_rate(value: Any) -> bool:
    return isinstance(value, dict) and {"successes", "trials", "rate", "low", "high"} <= set(value)


def _figure(name: str, value: Any) -> str | None:
    words = name.replace("_", " ")
    if _is_rate(value):
        return f"{words}: {proportion(value)}"
    if isinstance(value, int):  # bool included
        return f"{words}: {value}"
    if isinstance(value, float):
        return f"{words}: {value:.4g}"
    if isinstance(value, str) and len(value) <= MAX_TEXT:
        return f"{words}: {value}"
    return None


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary's `headline` (lines, or name -> figures), else its top-level figures."""
    headline = summary.get("headline")
    if isinstance(headline, list):
        return [str(line) for line in headline]
    if isinstance(headline, dict):
        return [f"{name}: " + ", ".join(f"{metric} {interval(v)}" for metric, v in figures.items()
                                        if isinstance(v, dict) and "value" in v)
                for name, figures in headline.items()]
    return [line for name, value in summary.items() if (line := _figure(name, value))]


def _selected_levels(folder: Path) -> list[str]:
    chosen = load_json(folder / "selected_coefficients.json")
    return [f"{key}: level {c['level']:g}" + (f" (alpha {c['alpha']:.3g})" if c.get("alpha") is not None
                                               else " (not reachable with calibration_alphas)")
            + f", chosen by {c['chosen_by']}" for key, c in chosen["methods"].items()]


def _sweep_primary(folder: Path) -> list[str]:
    summary = load_json(folder / "phase_4_9_summary.json")
    if summary.get("no_adapter_reason"):
        return []  # the summary's own line says why
    primary = summary["primary"]
    lines = [f"{name}: p {primary['p'][name]:.3g}, Holm {primary['holm'][name]:.3g} (primary)"
             for name in primary["endpoints"]]
    for name, arm in summary["arms"].items():
        lines.append(f"{name}: pass rate at +1 minus at -1 {interval(arm['effect'], signed=True)} on "
                     f"{arm['n_tasks']} tasks (exploratory)")
    return lines


def _adapters(folder: Path) -> list[str]:
    summary = load_json(folder / "phase_2_9_summary.json")
    if summary.get("no_adapter_reason"):
        return [f"no adapter: {summary['no_adapter_reason']}"]
    return [f"{name}: {result['steps']} steps in {result['training_s']:.0f} s (stopped by {result['stopped_by']})"
            for name, result in summary["adapters"].items() if "training_s" in result]


def _evaluation(folder: Path) -> list[str]:
    results = load_json(folder / "evaluation_results.json")
    return [f"best baseline (chosen on hyperparams): {results['best_baseline']}", *results.get("warnings", [])]


EXTRA: dict[str, Callable[[Path], list[str]]] = {"2.9": _adapters, "3.8": _evaluation, "4.5": _selected_levels,
                                                 "4.9": _sweep_primary}


def headline(phase_id: str, folder: Path) -> list[str]:
    summaries = sorted(folder.glob("phase_*_summary.json"))
    lines = summary_lines(load_json(summaries[0])) if summaries else []
    return lines + (EXTRA[phase_id](folder) if phase_id in EXTRA else [])
