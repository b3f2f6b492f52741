"""Phase 3.9 figure: a reliability diagram of the main predictors, and AUROC, Brier and ECE of every predictor.

Left: observed pass rate against mean predicted probability per bin (Wilson 95% bars; marker area by the bin's
programs); the diagonal is perfect calibration. Right: each metric with its 95% task-bootstrap interval; the dashed
line marks the model's mean log-probability, the baseline to beat."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from common.plotting import plt, save_figure

METRIC_TITLES = {"auroc": "AUROC (higher is better)", "brier": "Brier (lower is better)",
                 "ece": "ECE, 10 bins (lower is better)"}


def plot_calibration(results: dict[str, dict[str, Any]], shown: Sequence[str], path: Path,
                     reference: str = "program_mean_logprob") -> None:
    fig, axes = plt.subplots(1, 4, figsize=(19, 5.2), gridspec_kw={"width_ratios": [1.3, 1, 1, 1]})
    ax = axes[0]
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    for i, name in enumerate(n for n in shown if n in results):
        table = results[name]["reliability"]
        x = [b["mean_predicted"] for b in table]
        y = [b["observed"]["rate"] for b in table]
        errors = [[max(0.0, b["observed"]["rate"] - b["observed"]["low"]) for b in table],
                  [max(0.0, b["observed"]["high"] - b["observed"]["rate"]) for b in table]]
        ax.errorbar(x, y, yerr=errors, color=f"C{i}", capsize=2, linewidth=1, label=name)
        ax.scatter(x, y, s=[8 + 0.2 * b["n_programs"] for b in table], color=f"C{i}", alpha=0.6)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted probability of passing (bin)")
    ax.set_ylabel("observed pass rate")
    ax.set_title("reliability on validation", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    names = list(results)
    for ax, (metric, title) in zip(axes[1:], METRIC_TITLES.items()):
        values = [results[n][metric]["value"] for n in names]
        errors = [[max(0.0, v - results[n][metric]["low"]) for v, n in zip(values, names)],
                  [max(0.0, results[n][metric]["high"] - v) for v, n in zip(values, names)]]
        ax.errorbar(values, range(len(names)), xerr=errors, fmt="o", color="#264653", capsize=2)
        if reference in results:
            ax.axvline(results[reference][metric]["value"], color="#e76f51", linestyle="--", linewidth=1)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names if ax is axes[1] else [], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
    save_figure(fig, path)
