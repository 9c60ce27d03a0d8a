"""Figures for one evaluation: metric heatmaps (query x corpus language) and per-language bars."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def heatmap(matrix: pd.DataFrame, title: str, path: str | Path, *, vmin: float = 0.0,
            vmax: float = 1.0, fmt: str = "{:.2f}") -> Path:
    """Annotated heatmap: rows = query language, columns = corpus language; NaN cells stay blank."""
    values = matrix.to_numpy(dtype=np.float64)
    n_rows, n_cols = values.shape
    size = max(4.0, 0.55 * n_cols + 2.0)
    fig, ax = plt.subplots(figsize=(size, max(3.5, 0.5 * n_rows + 1.8)))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(n_cols), labels=list(matrix.columns))
    ax.set_yticks(range(n_rows), labels=list(matrix.index))
    ax.set_xlabel("corpus language")
    ax.set_ylabel("query language")
    ax.set_title(title, fontsize=10)
    fontsize = 8 if n_cols <= 8 else 6.5
    span = (vmax - vmin) or 1.0
    for i in range(n_rows):
        for j in range(n_cols):
            v = values[i, j]
            if math.isfinite(v):
                light = (v - vmin) / span > 0.6  # dark text on the bright end of viridis
                ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=fontsize,
                        color="black" if light else "white")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _save(fig, path)


def bar_chart(values: pd.Series, title: str, ylabel: str, path: str | Path,
              fmt: str = "{:.3f}") -> Path:
    """One bar per language, labelled with its value; NaN bars are left out."""
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(values) + 2.0), 3.5))
    heights = values.to_numpy(dtype=np.float64)
    bars = ax.bar(list(values.index), np.nan_to_num(heights), color="#3b6ea8")
    for bar, v in zip(bars, heights):
        if math.isfinite(v):
            ax.annotate(fmt.format(v), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.set_xlabel("query language")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.margins(y=0.12)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # No timestamp in the PNG, so unchanged results give byte-identical files.
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)
    return path
