import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
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


# --------------------------------------------------------------------------- legibility (referee report)


def _draw(fig):
    """Run the layout engine; the figures come detached from pyplot, so ``fig.canvas.draw()`` is a no-op."""
    fig.draw_without_rendering()


def _legends(fig):
    return list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]


def _bars_frame() -> pd.DataFrame:
    df = pd.DataFrame({
        "task": ["t1", "t2", "t1", "t2"] * 2,
        "system": ["ft", "ft", "zs", "zs"] * 2,
        "metric": ["set_f1"] * 4 + ["micro_f1"] * 4,
        "mean": [0.5, 0.0, 0.3, 0.2, 0.6, 0.4, 0.0, 0.1],
    })
    df["lo"], df["hi"] = (df["mean"] - 0.05).clip(lower=0), df["mean"] + 0.05
    return df


def _convergence_frame() -> pd.DataFrame:
    return pd.DataFrame([{"method": m, "seed": s, "step": step, "f1": 0.1 * s + step / 200}
                         for m in ("lora", "lora+") for s in range(3) for step in (0, 50, 100)])


@pytest.mark.parametrize("make", [
    lambda: learning_curve(_curve_frame(), facet="metric", plateaus={"ner": {"point": 300.0, "lo": 100, "hi": 800}},
                           floor=0.4, title="curves"),
    lambda: learning_curve(_curve_frame().query("metric == 'f1'")),
    lambda: metric_bars(_bars_frame(), x="task", hue="system", facet="metric", title="bars"),
    lambda: metric_bars(_bars_frame().query("metric == 'set_f1'"), x="task", hue="system"),
    lambda: convergence_curve(_convergence_frame()),
], ids=["curve_facets", "curve", "bars_facets", "bars", "convergence"])
def test_legend_sits_outside_every_axes_and_inside_the_figure(make):
    fig = make()
    _draw(fig)
    legends = _legends(fig)
    assert legends, "the figure should have a legend"
    for legend in legends:
        box = legend.get_window_extent()
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent()), "the legend covers a plotting area"
        assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1


def test_saved_png_keeps_the_outside_legend(tmp_path):
    from matplotlib.image import imread

    fig = metric_bars(_bars_frame(), x="task", hue="system", facet="metric")
    _draw(fig)
    inches = fig.dpi_scale_trans.inverted()
    tight = fig.get_tightbbox()  # what bbox_inches="tight" crops to, in inches
    legend = fig.legends[0].get_window_extent().transformed(inches)
    assert tight.x0 <= legend.x0 and legend.x1 <= tight.x1 and tight.y0 <= legend.y0 and legend.y1 <= tight.y1
    path = save_figure(fig, tmp_path / "bars.png", dpi=50)
    assert imread(path).shape[1] >= (legend.x1 - tight.x0) * 50  # the crop did not cut the legend off


@pytest.mark.parametrize("with_ci", [True, False])
def test_zero_valued_bar_has_a_visible_line_at_zero(with_ci):
    df = pd.DataFrame({"system": ["null", "tuned"], "mean": [0.0, 0.5], "lo": [0.0, 0.4], "hi": [0.05, 0.6]})
    fig = metric_bars(df, lo="lo" if with_ci else None, hi="hi" if with_ci else None)
    (ax,) = fig.axes
    zero_bar = next(p for p in ax.patches if p.get_x() < 0 < p.get_x() + p.get_width())
    assert zero_bar.get_height() == 0
    bar_rgb = to_rgb(zero_bar.get_facecolor())

    def marks_zero_bar(line):
        xs, ys = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
        on_bar = (xs >= zero_bar.get_x() - 1e-9) & (xs <= zero_bar.get_x() + zero_bar.get_width() + 1e-9)
        return (line.get_visible() and line.get_linewidth() >= 1.5 and to_rgb(line.get_color()) == bar_rgb
                and on_bar.sum() >= 2 and np.all(ys[on_bar] == 0))

    marks = [line for line in ax.lines if marks_zero_bar(line)]
    assert marks, "a bar of height 0 has no visible mark at y=0"
    assert all(not line.get_clip_on() or ax.get_ylim()[0] < 0 for line in marks)  # not half cut off by the axis
    if with_ci:
        assert any(getattr(c, "errorbar", None) is not None for c in ax.containers)  # error bars are kept


@pytest.mark.parametrize("column, expected", [
    ("set_f1", "set F1"), ("f1", "F1"), ("micro_f1", "micro-F1"), ("content_rouge_l", "content ROUGE-L"),
    ("test_micro_F1", "test micro-F1"), ("train_size", "train size"), ("parse_strict", "parse strict"),
])
def test_label_is_readable(column, expected):
    from ie_helpers.plots import _label

    assert _label(column) == expected


def test_y_axis_is_named_after_the_metric_never_mean():
    bars = metric_bars(_bars_frame(), x="task", hue="system", facet="metric")
    assert [ax.get_ylabel() for ax in bars.axes] == ["set F1", "micro-F1"]
    single = metric_bars(_bars_frame().query("metric == 'micro_f1'"), x="task", hue="system")
    assert single.axes[0].get_ylabel() == "micro-F1"
    curves = learning_curve(_curve_frame(), facet="metric")
    assert [ax.get_ylabel() for ax in curves.axes] == ["F1", "precision"]
    nameless = metric_bars(pd.DataFrame({"system": ["a", "b"], "mean": [0.1, 0.2]}), lo=None, hi=None)
    conv = convergence_curve(_convergence_frame())
    for fig in (bars, single, curves, nameless, conv):
        for ax in fig.axes:
            assert ax.get_ylabel().strip() and ax.get_ylabel().strip().lower() != "mean"
            assert ax.get_xlabel().strip()


def test_axis_label_keywords_override_the_defaults():
    fig = metric_bars(_bars_frame(), x="task", hue="system", facet="metric", ylabel="score", xlabel="dataset")
    assert {(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes} == {("dataset", "score")}
    fig = learning_curve(_curve_frame().query("metric == 'f1'"), ylabel="test F1", xlabel="documents")
    assert (fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()) == ("documents", "test F1")
    fig = convergence_curve(_convergence_frame(), ylabel="dev F1", xlabel="optimizer step")
    assert (fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()) == ("optimizer step", "dev F1")


def _significant_figures(number: str) -> int:
    digits = number.replace("-", "").replace(".", "").lstrip("0")
    return len(digits)


def test_plateau_label_has_at_most_two_significant_figures():
    fig = learning_curve(_curve_frame().query("metric == 'f1'"), plateaus={"ner": {"point": 43.9137}})
    _draw(fig)
    texts = [t.get_text() for t in fig.legends[0].get_texts()] if fig.legends else []
    texts += [line.get_label() for line in fig.axes[0].lines]
    plateau = [t for t in texts if t.startswith("plateau")]
    assert plateau and plateau[0] == "plateau ner ≈ 44"
    for text in texts:
        for number in re.findall(r"\d[\d.]*", text):
            assert _significant_figures(number) <= 2, text


@pytest.mark.parametrize("value, expected", [(43.9137, "44"), (0.01234, "0.012"), (1234.0, "1200"), (9.96, "10"),
                                             (0.5, "0.50"), (0.0, "0")])
def test_two_significant_figures(value, expected):
    from ie_helpers.plots import _sig2

    assert _sig2(value) == expected


def test_counts_appear_in_tick_labels():
    df = pd.DataFrame({"type": ["PER", "MISC"], "f1": [0.8, 0.0]})
    fig = metric_bars(df, x="type", y="f1", lo=None, hi=None, counts={"PER": 40, "MISC": 4})
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["PER (n=40)", "MISC (n=4)"]
    plain = metric_bars(df, x="type", y="f1", lo=None, hi=None)
    assert [t.get_text() for t in plain.axes[0].get_xticklabels()] == ["PER", "MISC"]


def _dashed_hlines(ax, y):
    return [line for line in ax.lines if line.get_linestyle() == "--"
            and np.allclose(np.asarray(line.get_ydata(), float), y)
            and len(set(np.asarray(line.get_ydata(), float))) == 1]


def test_floor_is_a_dashed_labelled_horizontal_line():
    label = "null system (format only)"
    fig = learning_curve(_curve_frame().query("metric == 'f1'"), floor=0.2, floor_label=label)
    (floor,) = _dashed_hlines(fig.axes[0], 0.2)
    assert floor.get_label() == label
    assert label in [t.get_text() for t in fig.legends[0].get_texts()]
    assert fig.axes[0].get_ylim()[0] <= 0.2  # the floor is in view

    per_facet = learning_curve(_curve_frame(), facet="metric", floor={"f1": 0.2, "precision": 0.3})
    assert [len(_dashed_hlines(ax, y)) for ax, y in zip(per_facet.axes, (0.2, 0.3))] == [1, 1]

    per_hue = learning_curve(_curve_frame().query("metric == 'f1'"), floor={"ner": 0.1, "re": 0.15})
    assert len(_dashed_hlines(per_hue.axes[0], 0.1)) == len(_dashed_hlines(per_hue.axes[0], 0.15)) == 1


def test_no_floor_by_default():
    fig = learning_curve(_curve_frame().query("metric == 'f1'"))
    assert not [line for line in fig.axes[0].lines if line.get_linestyle() == "--"]
