"""Phase 4.5 figure: what each coefficient does, per steered direction, with the chosen one marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from common.plotting import plt, save_figure

_PANELS = (("flip_rate", "flip rate"), ("valid_code_rate", "valid code (parses, defines the function)"),
           ("steered_pass_rate", "steered pass rate"), (None, "similarity to baseline code"))


def plot_coefficient_effects(results: dict[str, dict[str, Any]], path: Path) -> None:
    """2x2 panels against the coefficient (log scale): rates with 95% intervals, and difflib similarities."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (key, title) in zip(axes.flat, _PANELS):
        for colour, (kind, result) in zip(("#2a9d8f", "#e76f51"), results.items()):
            grid = result["grid"]
            x = np.array([m["coefficient"] for m in grid], dtype=float)
            if key is None:
                ax.plot(x, [m["mean_token_similarity"] for m in grid], "o-", color=colour, label=f"{kind}: tokens")
                ax.plot(x, [m["mean_char_similarity"] for m in grid], "s--", color=colour, label=f"{kind}: characters")
                ax.set_ylim(0, 1.05)
            else:
                values = np.array([m[key]["rate"] for m in grid])
                errors = [np.maximum(0, values - [m[key]["low"] for m in grid]),
                          np.maximum(0, np.array([m[key]["high"] for m in grid]) - values)]
                ax.errorbar(x, values, yerr=errors, fmt="o-", capsize=3, color=colour,
                            label=f"{kind} (n = {grid[0]['n_problems']})")
                ax.set_ylim(-0.02, 1.05)
            ax.axvline(result["coefficient"], color=colour, ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("coefficient (dotted: chosen)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle("Steering coefficient grid, hyperparams split (correct: on failing problems; incorrect: on "
                 "passing ones)", fontsize=10)
    save_figure(fig, path)
