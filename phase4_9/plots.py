"""Phase 4.9 figure: per arm, the pass rate (left, 95% Wilson intervals) and the NLL rise of the unsteered programs
(right, 95% task-bootstrap intervals) against the coefficient c."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.plotting import plt, save_figure


def plot_sweep(arms: dict[str, dict[str, Any]], path: Path) -> None:
    fig, (passing, nll) = plt.subplots(1, 2, figsize=(10, 3.8))
    for offset, (name, arm) in enumerate(arms.items()):
        levels = sorted(arm["by_coefficient"], key=float)
        shift = 0.015 * (offset - (len(arms) - 1) / 2)  # so the intervals of arms at one c do not hide each other
        xs = [float(c) + shift for c in levels]
        rates = [arm["by_coefficient"][c]["pass_rate"] for c in levels]
        line = passing.errorbar(xs, [r["rate"] for r in rates], capsize=2, marker="o",
                                yerr=[[r["rate"] - r["low"] for r in rates], [r["high"] - r["rate"] for r in rates]],
                                label=f"{name} (rho {_rho(arm)}, gain {arm['normalized_gain']['value']:.1f})")
        rises = [arm["by_coefficient"][c]["delta_nll"] for c in levels]
        nll.errorbar(xs, [r["mean"] for r in rises], capsize=2, marker="o", color=line[0].get_color(),
                     yerr=[[r["mean"] - (r["low"] if r["low"] is not None else r["mean"]) for r in rises],
                           [(r["high"] if r["high"] is not None else r["mean"]) - r["mean"] for r in rises]],
                     label=name)
    n_tasks = next(iter(arms.values()))["n_tasks"]
    passing.set(xlabel="coefficient c", ylabel="pass rate", title=f"pass rate on {n_tasks} validation tasks")
    nll.set(xlabel="coefficient c", ylabel="NLL rise (nats / token)", title="NLL of the unsteered programs")
    nll.axhline(0.0, color="#cccccc", linewidth=0.8)
    passing.legend(fontsize=7)
    save_figure(fig, path)


def _rho(arm: dict[str, Any]) -> str:
    rho = arm["rho"]["value"]
    return "n/a" if rho is None else f"{rho:+.2f}"
