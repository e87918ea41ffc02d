"""Figures for the replication reports: learning curves, metric bars, training convergence.

This module never picks a matplotlib backend: under Jupyter/papermill the
inline backend stays in charge, headless scripts fall back to Agg on their own.
Each function returns an open-but-unregistered Figure; notebooks show it with
``display(fig)`` (or as a cell's last expression) and it is shown exactly once.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any, Hashable, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from ie_helpers.errors import IEError
from ie_helpers.report import atomic_write_bytes

_STYLE = "whitegrid"
_MAX_FACET_COLUMNS = 3


def _require_columns(df: pd.DataFrame, columns: Sequence[str | None], plot_name: str) -> None:
    if df.empty:
        raise IEError(f"{plot_name}: the table is empty; check that the results were computed.")
    missing = [col for col in columns if col is not None and col not in df.columns]
    if missing:
        raise IEError(
            f"{plot_name}: missing column(s) {missing}; the table has {list(df.columns)}. "
            "Pass the right column names as keyword arguments."
        )


def _levels(df: pd.DataFrame, column: str | None) -> list[Hashable]:
    """Distinct values of ``column`` in order of first appearance ([None] when no column)."""
    return [None] if column is None else list(pd.unique(df[column]))


def _rows_for(df: pd.DataFrame, column: str | None, value: Hashable) -> pd.DataFrame:
    return df if column is None else df[df[column] == value]


def _palette(levels: Sequence[Hashable]) -> dict[Hashable, Any]:
    return dict(zip(levels, sns.color_palette(n_colors=max(len(levels), 1))))


def _new_figure(**kwargs: Any) -> Figure:
    """A Figure that pyplot will not auto-display or keep alive.

    Going through pyplot makes the inline backend register its PNG display
    formatter; closing right away stops the end-of-cell flush from showing the
    figure a second time next to the notebook's own ``display(fig)``.
    """
    fig = plt.figure(**kwargs)
    plt.close(fig)
    return fig


def _facet_axes(fig: Figure, n_facets: int, *, sharex: bool) -> list[Axes]:
    """One subplot per facet, wrapped at ``_MAX_FACET_COLUMNS``; unused grid cells removed."""
    ncols = min(n_facets, _MAX_FACET_COLUMNS)
    nrows = math.ceil(n_facets / ncols)
    fig.set_size_inches(5.0 * ncols, 3.8 * nrows)
    grid = fig.subplots(nrows, ncols, sharex=sharex, squeeze=False).ravel()
    for spare in grid[n_facets:]:
        fig.delaxes(spare)
    return list(grid[:n_facets])


def _facet_title(ax: Axes, facet: str | None, value: Hashable) -> None:
    if facet is not None:
        ax.set_title(f"{facet} = {value}")


def _label(column: str) -> str:
    return column.replace("_", " ")


def _use_log_x(values: pd.Series) -> bool:
    positive = pd.to_numeric(values, errors="coerce").dropna()
    positive = positive[positive > 0]
    return len(positive) > 0 and positive.max() / positive.min() > 10


def _set_log_x(ax: Axes, sizes: Sequence[float]) -> None:
    ax.set_xscale("log")
    # Label the actual train sizes instead of powers of ten when there are few of them.
    if len(sizes) <= 12:
        ax.set_xticks(sizes)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())


def _is_finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _draw_plateau(ax: Axes, estimate: dict[str, float], color: Any, hue_value: Hashable) -> None:
    point = estimate.get("point", float("nan"))
    if not _is_finite(point):
        return
    lo, hi = estimate.get("lo"), estimate.get("hi")
    if _is_finite(lo) and _is_finite(hi):
        ax.axvspan(float(lo), float(hi), color=color, alpha=0.08, linewidth=0)
    ax.axvline(float(point), color=color, linestyle="--", linewidth=1.2, label=f"plateau {hue_value}: {float(point):g}")


def _band(ax: Axes, rows: pd.DataFrame, x: str, lo: str | None, hi: str | None, color: Any) -> None:
    if lo is not None and hi is not None:
        ax.fill_between(rows[x].to_numpy(float), rows[lo].to_numpy(float), rows[hi].to_numpy(float),
                        color=color, alpha=0.2, linewidth=0)


def _legend(ax: Axes, title: str | None) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(title=title, fontsize="small", title_fontsize="small")


def learning_curve(
    df: pd.DataFrame,
    *,
    x: str = "train_size",
    y: str = "mean",
    lo: str | None = "lo",
    hi: str | None = "hi",
    hue: str | None = "task",
    facet: str | None = None,
    plateaus: dict[Hashable, dict[str, float]] | None = None,
    title: str | None = None,
    ylabel: str | None = None,
) -> Figure:
    """Metric vs train size: one line (with CI band) per hue, optional plateau markers, one subplot per facet."""
    _require_columns(df, [x, y, lo, hi, hue, facet], "learning_curve")
    plateaus = plateaus or {}
    hue_levels, facet_levels = _levels(df, hue), _levels(df, facet)
    colors = _palette(hue_levels)
    log_x = _use_log_x(df[x])
    sizes = sorted(pd.to_numeric(df[x], errors="coerce").dropna().unique())

    with sns.axes_style(_STYLE):
        fig = _new_figure(layout="constrained")
        axes = _facet_axes(fig, len(facet_levels), sharex=True)
        for ax, facet_value in zip(axes, facet_levels):
            facet_rows = _rows_for(df, facet, facet_value)
            for hue_value in hue_levels:
                rows = _rows_for(facet_rows, hue, hue_value).sort_values(x)
                if rows.empty:
                    continue
                color = colors[hue_value]
                ax.plot(rows[x], rows[y], marker="o", color=color, label=None if hue is None else str(hue_value))
                _band(ax, rows, x, lo, hi, color)
                if hue_value in plateaus:
                    _draw_plateau(ax, plateaus[hue_value], color, hue_value)
            if log_x:
                _set_log_x(ax, sizes)
            ax.set_xlabel(_label(x))
            ax.set_ylabel(ylabel or _label(y))
            _facet_title(ax, facet, facet_value)
            _legend(ax, hue)
        if title:
            fig.suptitle(title)
    return fig


def _error_extents(rows: pd.DataFrame, y: str, lo: str | None, hi: str | None) -> np.ndarray | None:
    """Asymmetric error bars [below, above] from CI bounds; missing bounds draw no bar."""
    if lo is None or hi is None:
        return None
    below = (rows[y].astype(float) - rows[lo].astype(float)).clip(lower=0).fillna(0)
    above = (rows[hi].astype(float) - rows[y].astype(float)).clip(lower=0).fillna(0)
    return np.vstack([below.to_numpy(), above.to_numpy()])


def metric_bars(
    df: pd.DataFrame,
    *,
    x: str = "system",
    y: str = "mean",
    lo: str | None = "lo",
    hi: str | None = "hi",
    hue: str | None = None,
    facet: str | None = None,
    title: str | None = None,
) -> Figure:
    """Grouped bars of ``y`` per ``x`` (and ``hue``) with asymmetric CI error bars; one subplot per facet."""
    _require_columns(df, [x, y, lo, hi, hue, facet], "metric_bars")
    categories, hue_levels, facet_levels = _levels(df, x), _levels(df, hue), _levels(df, facet)
    colors = _palette(hue_levels)
    width = 0.8 / len(hue_levels)
    positions = {category: i for i, category in enumerate(categories)}

    with sns.axes_style(_STYLE):
        fig = _new_figure(layout="constrained")
        axes = _facet_axes(fig, len(facet_levels), sharex=False)
        for ax, facet_value in zip(axes, facet_levels):
            facet_rows = _rows_for(df, facet, facet_value)
            for i, hue_value in enumerate(hue_levels):
                rows = _rows_for(facet_rows, hue, hue_value)
                if rows.empty:
                    continue
                offset = (i - (len(hue_levels) - 1) / 2) * width
                ax.bar(
                    [positions[c] + offset for c in rows[x]],
                    rows[y].astype(float),
                    width=width,
                    yerr=_error_extents(rows, y, lo, hi),
                    capsize=3,
                    color=colors[hue_value],
                    label=None if hue is None else str(hue_value),
                )
            ax.grid(axis="x", visible=False)
            ax.set_xticks(range(len(categories)))
            long_labels = max(len(str(c)) for c in categories) > 10 or len(categories) > 6
            ax.set_xticklabels([str(c) for c in categories], rotation=30 if long_labels else 0,
                               ha="right" if long_labels else "center")
            ax.set_xlabel(_label(x))
            ax.set_ylabel(_label(y))
            _facet_title(ax, facet, facet_value)
            _legend(ax, hue)
        if title:
            fig.suptitle(title)
    return fig


def convergence_curve(
    df: pd.DataFrame,
    *,
    x: str = "step",
    y: str = "f1",
    hue: str | None = "method",
    unit: str = "seed",
) -> Figure:
    """Mean of ``y`` over units (seeds) per ``x``, with a min–max band, one line per hue."""
    _require_columns(df, [x, y, hue, unit], "convergence_curve")
    hue_levels = _levels(df, hue)
    colors = _palette(hue_levels)

    with sns.axes_style(_STYLE):
        fig = _new_figure(figsize=(6.5, 4.0), layout="constrained")
        ax = fig.add_subplot()
        for hue_value in hue_levels:
            rows = _rows_for(df, hue, hue_value)
            summary = rows.groupby(x)[y].agg(["mean", "min", "max"]).reset_index().sort_values(x)
            n_units = rows[unit].nunique()
            name = "mean" if hue is None else str(hue_value)
            color = colors[hue_value]
            ax.plot(summary[x], summary["mean"], color=color, label=f"{name} (n={n_units} {_label(unit)}s)")
            _band(ax, summary, x, "min", "max", color)
        ax.set_xlabel(_label(x))
        ax.set_ylabel(_label(y))
        _legend(ax, hue)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save ``fig`` as PNG atomically and return the path; the figure stays open for display."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return atomic_write_bytes(path, buffer.getvalue())
