"""Phase 2.9 figure: left, each trained adapter's separation and coherence penalty per training step; right, the
held-out pairs' separation (in units of the reference RMS) against the coefficient c, every adapter and the random
one of the same norm; symmetric-log axes (the legend gives each one's spread sep(+1) - sep(-1) with its 95%
task-bootstrap interval)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.plotting import plt, save_figure


def plot_training(results: dict[str, dict[str, Any]], path: Path) -> None:
    fig, (curves, held) = plt.subplots(1, 2, figsize=(10, 3.6))
    for (name, result), color in zip(results.items(), ("C0", "C7", "C1")):
        if result.get("curve"):
            steps = [point["step"] for point in result["curve"]]
            curves.plot(steps, [point["separation"] for point in result["curve"]], color=color,
                        label=f"{name} separation")
            curves.plot(steps, [point["coherence"] for point in result["curve"]], linestyle=":", color=color,
                        label=f"{name} coherence penalty")
        by_coefficient = result["held_out"]["by_coefficient"]
        coefficients = sorted(by_coefficient, key=float)
        spread, n_pairs = result["held_out"]["spread"], result["held_out"]["n_pairs"]
        label = f"{name}: spread {spread['mean']:+.2f} [{spread['low']:+.2f}, {spread['high']:+.2f}] ({n_pairs} pairs)"
        held.plot([float(c) for c in coefficients], [by_coefficient[c]["separation"] for c in coefficients], marker="o",
                  color=color, label=label)
    for ax in (curves, held):  # symmetric log: a runaway adapter must not flatten the others
        ax.set_yscale("symlog", linthresh=0.1)
    curves.set(xlabel="training step", ylabel="batch value", title="training")
    curves.legend(fontsize=7)
    held.set(xlabel="coefficient c", ylabel="separation / reference RMS", title="held-out pairs")
    held.legend(fontsize=7)
    save_figure(fig, path)
