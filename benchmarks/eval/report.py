"""Markdown reports with one matplotlib PNG each; shared by both benchmarks.

matplotlib is imported inside the plotting function with the non-interactive Agg backend, so
importing this module stays cheap and headless machines work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

Series = Mapping[str, Mapping[str, tuple[float, float]]]  # series -> group -> (mean, sd)


def fmt(mean: float | None, sd: float | None = None, digits: int = 3) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" if sd is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def fmt_model(desc: Mapping[str, object] | str | None) -> str:
    """`model` @ endpoint (backend), from BackendPool.describe(); a plain label passes through."""
    if not desc:
        return "–"
    if isinstance(desc, str):
        return desc
    return f"`{desc.get('model')}` @ {desc.get('base_url')} ({desc.get('backend')})"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def plot_grouped_bars(path: Path, groups: Sequence[str], series: Series, *, title: str,
                      ylabel: str, ylim: tuple[float, float] | None = (0.0, 1.0)) -> Path:
    """Bars of mean ± sd: one cluster per group (x axis), one colour per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not groups or not series:
        raise ValueError("nothing to plot")
    names = list(series)
    width = 0.8 / len(names)
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups) * max(1, len(names)) ** 0.5 + 2), 4.2))
    try:
        for i, name in enumerate(names):
            vals = [series[name].get(g, (np.nan, 0.0)) for g in groups]
            ax.bar(x + (i - (len(names) - 1) / 2) * width, [v[0] for v in vals], width,
                   yerr=[v[1] for v in vals], capsize=2, label=name)
        ax.set_xticks(x, [g.replace("_", " ") for g in groups], rotation=30, ha="right")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.legend(fontsize=8, ncol=min(3, len(names)))
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path


def write_report(out_dir: Path, stem: str, markdown: str, *, groups: Sequence[str], series: Series,
                 title: str, ylabel: str) -> tuple[Path, Path]:
    """`<out_dir>/<stem>.md` embedding `<out_dir>/<stem>.png`; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png = plot_grouped_bars(out_dir / f"{stem}.png", groups, series, title=title, ylabel=ylabel)
    md = out_dir / f"{stem}.md"
    md.write_text(f"{markdown.rstrip()}\n\n![{title}]({png.name})\n", encoding="utf-8")
    return md, png
