"""A grouped bar chart (PNG) for docs/BENCHMARKS.md; needs matplotlib (pip install -e '.[bench]')."""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def bars(name: str, title: str, ylabel: str, groups: list[str], series: dict[str, list[float]],
         log: bool = False) -> str | None:
    """Write docs/NAME.png; return the markdown that shows it, or None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"no chart {name}.png: matplotlib is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return None
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=100)
    width = 0.8 / max(1, len(series))
    for k, (label, values) in enumerate(series.items()):
        xs = [g + (k - (len(series) - 1) / 2) * width for g in range(len(groups))]
        rects = ax.bar(xs, [max(v, 1e-9) for v in values], width, label=label)
        ax.bar_label(rects, labels=[f"{v:,.0f}" for v in values], fontsize=7, padding=2)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
        ax.set_ylim(bottom=1)
    ax.legend(fontsize=8, ncols=min(5, len(series)))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    DOCS.mkdir(exist_ok=True)
    fig.savefig(DOCS / f"{name}.png")
    plt.close(fig)
    return f"![{title}]({name}.png)"
