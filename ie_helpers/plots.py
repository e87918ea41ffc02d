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
_METRIC_COLUMN = "metric"  # a long table's column naming the metric in a generic value column
_GENERIC_Y = {"mean", "value", "point", "estimate", "score"}  # y columns that name a statistic, not a metric
_ACRONYMS = {"f1": "F1", "rouge": "ROUGE", "bleu": "BLEU", "ner": "NER", "lora": "LoRA", "auc": "AUC", "ci": "CI"}
_AVERAGES = {"micro", "macro", "weighted"}
_FLOOR_COLOR = "0.45"


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
        shown = _label(value) if facet == _METRIC_COLUMN and isinstance(value, str) else value
        ax.set_title(f"{_label(facet)} = {shown}")


def _label(column: Hashable) -> str:
    """Readable axis text for a column name: "micro_f1" -> "micro-F1", "content_rouge_l" -> "content ROUGE-L"."""
    words: list[str] = []
    for word in str(column).split("_"):
        if words and words[-1] == "ROUGE" and len(word) <= 4:
            words[-1] += "-" + word[:1].upper() + word[1:]
        elif words and words[-1].lower() in _AVERAGES and word.lower() in _ACRONYMS:
            words[-1] += "-" + _ACRONYMS[word.lower()]
        elif word:
            words.append(_ACRONYMS.get(word.lower(), word))
    return " ".join(words)


def _y_label(df: pd.DataFrame, y: str, facet: str | None, facet_value: Hashable) -> str:
    """Name the y axis after the metric; a generic column ("mean") borrows the name from a ``metric`` column."""
    if y not in _GENERIC_Y:
        return _label(y)
    if facet == _METRIC_COLUMN:
        return _label(facet_value)
    if _METRIC_COLUMN in df.columns and df[_METRIC_COLUMN].nunique() == 1:
        return _label(df[_METRIC_COLUMN].iloc[0])
    return f"score ({y})"


def _sig2(value: float) -> str:
    """``value`` rounded to 2 significant figures, without exponent: 43.9137 -> "44", 0.01234 -> "0.012"."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    rounded = round(value, 1 - math.floor(math.log10(abs(value))))
    decimals = max(0, 1 - math.floor(math.log10(abs(rounded))))
    return f"{rounded:.{decimals}f}"


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
    name = "plateau" if hue_value is None else f"plateau {hue_value}"
    ax.axvline(float(point), color=color, linestyle="--", linewidth=1.2, label=f"{name} ≈ {_sig2(float(point))}")


def _draw_floor(ax: Axes, floor: dict[Hashable, float] | float | None, facet_value: Hashable,
                colors: dict[Hashable, Any], label: str) -> None:
    """Dashed horizontal floor: one number for every facet, or per facet value, or per hue value (in its colour)."""
    if floor is None:
        return
    if not isinstance(floor, dict):
        lines = [(floor, _FLOOR_COLOR, label)]
    elif facet_value in floor:
        lines = [(floor[facet_value], _FLOOR_COLOR, label)]
    else:
        lines = [(floor[h], colors[h], f"{label} ({h})") for h in colors if h in floor]
    for value, color, text in lines:
        if _is_finite(value):
            ax.axhline(float(value), color=color, linestyle="--", linewidth=1.2, label=text)


def _band(ax: Axes, rows: pd.DataFrame, x: str, lo: str | None, hi: str | None, color: Any) -> None:
    if lo is not None and hi is not None:
        ax.fill_between(rows[x].to_numpy(float), rows[lo].to_numpy(float), rows[hi].to_numpy(float),
                        color=color, alpha=0.2, linewidth=0)


def _legend(fig: Figure, axes: Sequence[Axes], title: str | None) -> None:
    """One figure legend outside the plotting area, right of the facets; the figure widens to hold it."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(text, handle)
    if not entries:
        return
    legend = fig.legend(list(entries.values()), list(entries), loc="outside right center", fontsize="small",
                        title=None if title is None else _label(title), title_fontsize="small")
    fig.draw_without_rendering()  # the figure widens by the legend's width, so the axes keep theirs
    width = legend.get_window_extent().width / fig.dpi
    fig.set_size_inches(fig.get_figwidth() + width, fig.get_figheight())


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
    xlabel: str | None = None,
    floor: dict[Hashable, float] | float | None = None,
    floor_label: str = "floor (null system)",
) -> Figure:
    """Metric vs train size: one line (with CI band) per hue, optional plateau markers, one subplot per facet.

    ``floor`` draws a dashed horizontal line (e.g. a format-only null system), labelled ``floor_label``:
    one number for every subplot, or a dict keyed by facet value or by hue value.
    """
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
            _draw_floor(ax, floor, facet_value, colors, floor_label)
            if log_x:
                _set_log_x(ax, sizes)
            ax.set_xlabel(xlabel or _label(x))
            ax.set_ylabel(ylabel or _y_label(df, y, facet, facet_value))
            _facet_title(ax, facet, facet_value)
        _legend(fig, axes, hue)
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


def _value_lines(ax: Axes, centers: np.ndarray, values: np.ndarray, width: float, color: Any) -> None:
    """A bar-wide line at each bar's value (one Line2D per group): a bar of height 0 reads as 0, not as missing."""
    gaps = np.full(len(centers), np.nan)
    xs = np.column_stack([centers - width / 2, centers + width / 2, gaps]).ravel()
    ys = np.column_stack([values, values, gaps]).ravel()
    ax.plot(xs, ys, color=color, linewidth=2.5, solid_capstyle="butt", clip_on=False, zorder=3)


def _category_ticks(ax: Axes, categories: Sequence[Hashable], counts: dict[Hashable, int] | None) -> None:
    labels = [f"{c} (n={counts[c]})" if counts and c in counts else str(c) for c in categories]
    long_labels = max(len(text) for text in labels) > 10 or len(labels) > 6
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30 if long_labels else 0, ha="right" if long_labels else "center")


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
    ylabel: str | None = None,
    xlabel: str | None = None,
    counts: dict[Hashable, int] | None = None,
) -> Figure:
    """Grouped bars of ``y`` per ``x`` (and ``hue``) with asymmetric CI error bars; one subplot per facet.

    Each bar also gets a line at its value, so a score of exactly 0 shows. ``counts`` (x value -> n)
    adds the support to the tick labels: "MISC (n=4)".
    """
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
                centers = np.array([positions[c] + offset for c in rows[x]], dtype=float)
                values = rows[y].to_numpy(float)
                ax.bar(centers, values, width=width, yerr=_error_extents(rows, y, lo, hi), capsize=3,
                       color=colors[hue_value], label=None if hue is None else str(hue_value))
                _value_lines(ax, centers, values, width, colors[hue_value])
            ax.grid(axis="x", visible=False)
            _category_ticks(ax, categories, counts)
            ax.set_xlabel(xlabel or _label(x))
            ax.set_ylabel(ylabel or _y_label(df, y, facet, facet_value))
            _facet_title(ax, facet, facet_value)
        _legend(fig, axes, hue)
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
    ylabel: str | None = None,
    xlabel: str | None = None,
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
            name = f"mean {_label(y)}" if hue is None else str(hue_value)
            color = colors[hue_value]
            ax.plot(summary[x], summary["mean"], color=color, label=f"{name} (n={n_units} {_label(unit)}s)")
            _band(ax, summary, x, "min", "max", color)
        ax.set_xlabel(xlabel or _label(x))
        ax.set_ylabel(ylabel or _y_label(df, y, None, None))
        _legend(fig, [ax], hue)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save ``fig`` as PNG atomically and return the path; the figure stays open for display.

    ``bbox_inches="tight"`` grows the saved area to every artist, so the outside legend is kept.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return atomic_write_bytes(path, buffer.getvalue())
