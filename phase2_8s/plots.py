"""Phase 2.8s figure: per style, its statistic on the held-out questions under each arm; the title gives steered
minus random edits.

Bars: the mean over questions; whiskers: the 95% t interval of the arm's mean difference from unsteered,
drawn around the arm's mean (the comparison that matters is paired by question)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.plotting import plt, save_figure

_COLOURS = {"unsteered": "#9e9e9e", "steered": "#2b9348", "random_edit": "#6c757d", "prompted": "#457b9d"}


def plot_style_effects(styles: dict[str, dict[str, Any]], path: Path) -> None:
    fig, axes = plt.subplots(1, len(styles), figsize=(4.2 * len(styles), 3.9), squeeze=False)
    for ax, (name, style) in zip(axes[0], styles.items()):
        means, versus = style["held_out"]["mean"], style["held_out"]["differences"]
        arms = list(means)
        for x, arm in enumerate(arms):
            ax.bar(x, means[arm], color=_COLOURS.get(arm, "black"))
            if arm in versus:
                e = versus[arm]
                ax.errorbar(x, means[arm], capsize=3, color="black",
                            yerr=[[e["mean_difference"] - e["low"]], [e["high"] - e["mean_difference"]]])
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels([a.replace("_", " ") for a in arms], fontsize=7)
        key = versus.get("steered_minus_random")
        against = (f"steered - random {key['mean_difference']:+.2f} [{key['low']:+.2f}, {key['high']:+.2f}]"
                   if key else "steered - random: n/a")
        ax.set_title(f"{name}\n{style['statistic']}\n{against}", fontsize=8)
    fig.suptitle("Phase 2.8s: style statistic on held-out questions (neutral prompt unless 'prompted')", fontsize=9)
    save_figure(fig, path)
