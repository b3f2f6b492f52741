"""Figures saved as PNG. Rates are always drawn with their 95% intervals and labelled with counts."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common.statistics import Rate  # noqa: E402
from common.utils import atomic_path  # noqa: E402


def rate_bars(rates: Mapping[str, Rate], path: str | Path, title: str, xlabel: str, ylabel: str = "pass rate") -> None:
    labels = list(rates)
    values = [rates[k].value for k in labels]
    errors = [[max(0.0, rates[k].value - rates[k].low) for k in labels],  # float noise can put a bound a hair
              [max(0.0, rates[k].high - rates[k].value) for k in labels]]  # past the rate at 0 or 1
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(labels) + 2), 3.6))
    ax.bar(labels, values, yerr=errors, capsize=4, color="#4C72B0", alpha=0.85)
    for x, key in enumerate(labels):
        ax.annotate(f"{rates[key].successes}/{rates[key].trials}", (x, rates[key].high), ha="center",
                    va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_ylim(0, 1.1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(textwrap.fill(title, 60), fontsize=10)
    save_figure(fig, path)


def save_figure(fig, path: str | Path) -> None:
    """Lay out, write atomically as PNG, and free the figure."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
