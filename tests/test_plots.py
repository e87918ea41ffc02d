import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

# Let `pytest` run from the repo root without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ie_helpers.errors import IEError  # noqa: E402
from ie_helpers.plots import convergence_curve, learning_curve, metric_bars, save_figure  # noqa: E402


def _curve_frame(sizes=(10, 100, 1000)) -> pd.DataFrame:
    rows = []
    for metric in ("f1", "precision"):
        for task in ("ner", "re"):
            for i, size in enumerate(sizes):
                mean = 0.5 + 0.1 * i
                rows.append({"metric": metric, "task": task, "train_size": size, "mean": mean,
                             "lo": mean - 0.05, "hi": mean + 0.05})
    return pd.DataFrame(rows)


def test_learning_curve_one_line_per_hue_and_log_x():
    df = _curve_frame()
    fig = learning_curve(df[df["metric"] == "f1"], title="F1")
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert len(ax.lines) == 2
    assert len(ax.collections) == 2  # CI bands
    assert ax.get_xscale() == "log"


def test_learning_curve_linear_x_for_narrow_range():
    fig = learning_curve(_curve_frame(sizes=(100, 200, 400)).query("metric == 'f1'"))
    assert fig.axes[0].get_xscale() == "linear"


def test_learning_curve_facets_and_plateaus():
    plateaus = {"ner": {"point": 300.0, "lo": 100.0, "hi": 800.0}, "re": {"point": float("nan"), "lo": 0, "hi": 0}}
    fig = learning_curve(_curve_frame(), facet="metric", plateaus=plateaus)
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert len(ax.lines) == 3  # two hue lines + one plateau line (NaN plateau skipped)


def test_learning_curve_missing_column_is_user_error():
    with pytest.raises(IEError, match="missing column"):
        learning_curve(_curve_frame(), hue="model")


def test_metric_bars_grouped_with_facets():
    df = pd.DataFrame({
        "system": ["lora", "full", "lora", "full"] * 2,
        "split": ["dev", "dev", "test", "test"] * 2,
        "metric": ["f1"] * 4 + ["rouge"] * 4,
        "mean": np.linspace(0.5, 0.9, 8),
    })
    df["lo"], df["hi"] = df["mean"] - 0.02, df["mean"] + 0.03
    fig = metric_bars(df, hue="split", facet="metric", title="Scores")
    assert len(fig.axes) == 2
    assert all(len(ax.patches) == 4 for ax in fig.axes)


def test_metric_bars_without_ci():
    fig = metric_bars(pd.DataFrame({"system": ["a", "b"], "mean": [0.1, 0.2]}), lo=None, hi=None)
    assert len(fig.axes[0].patches) == 2


def test_convergence_curve_mean_line_per_method():
    rng = np.random.default_rng(0)
    df = pd.DataFrame([
        {"method": m, "seed": s, "step": step, "f1": rng.random()}
        for m in ("lora", "lora+") for s in range(3) for step in (0, 50, 100)
    ])
    fig = convergence_curve(df)
    (ax,) = fig.axes
    assert len(ax.lines) == 2
    assert ax.lines[0].get_ydata().shape == (3,)


def test_save_figure_writes_png(tmp_path):
    fig = metric_bars(pd.DataFrame({"system": ["a"], "mean": [0.5], "lo": [0.4], "hi": [0.6]}))
    path = save_figure(fig, tmp_path / "figs" / "bars.png", dpi=50)
    assert path.read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in path.parent.iterdir()] == ["bars.png"]
