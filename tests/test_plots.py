"""Figure builders: the traces carry exactly the numbers they were given, in the right places."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from first_core.views import plots


@pytest.fixture
def bins() -> pd.DataFrame:
    edges = np.linspace(0, 1, 6)
    return pd.DataFrame({"lo": edges[:-1], "hi": edges[1:], "count": [0, 10, 20, 30, 40],
                         "confidence": [np.nan, 0.3, 0.5, 0.7, 0.9],
                         "accuracy": [np.nan, 0.4, 0.5, 0.6, 0.7]})


def _trace(fig, name):
    found = [t for t in fig.data if t.name == name]
    assert len(found) == 1, [t.name for t in fig.data]
    return found[0]


def test_reliability_gaps_are_split_by_sign_and_drawn_from_accuracy(bins):
    fig = plots.reliability_figure(bins)
    acc = _trace(fig, "Accuracy")
    np.testing.assert_allclose(acc.y, [0.4, 0.5, 0.6, 0.7])  # the empty bin is not drawn
    np.testing.assert_allclose(acc.x, [0.3, 0.5, 0.7, 0.9])
    over, under = _trace(fig, "Over-confidence gap"), _trace(fig, "Under-confidence gap")
    np.testing.assert_allclose(over.x, [0.7, 0.9])
    np.testing.assert_allclose(np.asarray(over.base, float), [0.6, 0.7])
    np.testing.assert_allclose(over.y, [0.1, 0.2])
    np.testing.assert_allclose(under.x, [0.3])
    np.testing.assert_allclose(np.asarray(under.base, float), [0.3])
    np.testing.assert_allclose(under.y, [0.1])
    assert over.marker.color != under.marker.color
    hist = _trace(fig, "Examples per bin")
    np.testing.assert_array_equal(hist.y, bins["count"])
    assert hist.xaxis == "x2" and acc.xaxis == "x"  # histogram sits in the lower panel


def test_reliability_uses_bin_widths_for_equal_mass_bins(bins):
    bins = bins.assign(lo=[0.0, 0.1, 0.45, 0.5, 0.8], hi=[0.1, 0.45, 0.5, 0.8, 1.0])
    acc = _trace(plots.reliability_figure(bins), "Accuracy")
    np.testing.assert_allclose(acc.width, [0.35, 0.05, 0.3, 0.2])


def test_reliability_names_missing_column(bins):
    with pytest.raises(ValueError, match="accuracy"):
        plots.reliability_figure(bins.drop(columns="accuracy"))


def test_coverage_band_mark_and_disk_axis():
    k = np.arange(1, 11)
    cov = pd.DataFrame({"k": k, "mean": 1 - 0.5 ** k, "p10": 1 - 0.6 ** k, "p90": 1 - 0.4 ** k})
    disk = pd.DataFrame({"k": k, "topk_bytes": k * 6.0, "full_bytes": np.full(10, 64000.0)})
    fig = plots.coverage_figure(cov, disk, mark_k=5)
    band = _trace(fig, "p10-p90")
    assert band.fill == "tonexty"
    np.testing.assert_allclose(band.y, cov["p10"])
    mark = _trace(fig, "K = 5")
    assert mark.x == (5,) and mark.y[0] == pytest.approx(1 - 0.5 ** 5)
    store = _trace(fig, "Top-K store (bytes)")
    assert store.yaxis == "y2" and fig.layout.yaxis2.type == "log"
    without = plots.coverage_figure(cov)
    assert all(t.yaxis in (None, "y") for t in without.data)


def test_search_curve_one_line_per_series_and_chosen_star():
    curves = pd.DataFrame({"value": [0.1, 0.2, 0.1, 0.2], "ece": [0.3, 0.1, 0.35, 0.15],
                           "series": ["val", "val", "test", "test"]})
    chosen = pd.DataFrame({"value": [0.2], "ece": [0.1], "series": ["val"]})
    fig = plots.search_curve_figure(curves, chosen)
    assert [t.name for t in fig.data] == ["val", "test", "chosen"]
    assert _trace(fig, "chosen").marker.symbol == "star"


def test_grouped_bars_group_per_colour_with_error_bars():
    table = pd.DataFrame({"method": ["a", "b", "a", "b"], "split": ["ID", "ID", "OOD", "OOD"],
                          "mean": [0.1, 0.2, 0.3, 0.4], "std": [0.01, 0.02, 0.03, 0.04]})
    fig = plots.grouped_bars(table, "method", "mean", "split", error="std")
    assert fig.layout.barmode == "group"
    ood = _trace(fig, "OOD")
    np.testing.assert_allclose(ood.y, [0.3, 0.4])
    np.testing.assert_allclose(ood.error_y.array, [0.03, 0.04])


def test_probability_bars_outline_gold_and_check_lengths():
    fig = plots.probability_bars(["A", "B"], {"before": [0.7, 0.3], "after": [0.9, 0.1]},
                                 highlight="B")
    assert list(fig.data[0].marker.line.width) == [0, 3]
    with pytest.raises(ValueError, match="after"):
        plots.probability_bars(["A", "B"], {"after": [1.0]})


def test_smoothed_curve_is_drawn_over_the_bars(bins):
    smooth = pd.DataFrame({"x": np.linspace(0, 1, 5), "y": [0.1, 0.3, 0.5, 0.6, 0.7]})
    line = _trace(plots.reliability_figure(bins, smooth=smooth), "Smoothed (SmoothECE)")
    np.testing.assert_allclose(line.y, smooth["y"])
    assert line.yaxis == "y"  # the diagram, not the histogram below it
    assert "Smoothed (SmoothECE)" not in [t.name for t in plots.reliability_figure(bins).data]
    with pytest.raises(ValueError, match="smooth"):
        plots.reliability_figure(bins, smooth=smooth.rename(columns={"y": "acc"}))


def test_threshold_is_a_vertical_line_through_the_reliability_diagram(bins):
    fig = plots.reliability_figure(bins, threshold=0.65)
    (line,) = fig.layout.shapes
    assert (line.x0, line.x1, line.yref, line.y0, line.y1) == (0.65, 0.65, "paper", 0, 1)
    assert [a.text for a in fig.layout.annotations] == ["t = 0.65"]
    assert not plots.reliability_figure(bins).layout.shapes


def test_risk_coverage_curves_mark_and_flat_line():
    curve = pd.DataFrame({"coverage": [0.0, 0.5, 1.0], "risk": [0.1, 0.1, 0.3],
                          "threshold": [0.9, 0.9, 0.2]})
    fig = plots.risk_coverage_figure({"run a": curve, "run b": curve.assign(risk=0.3)},
                                     mark=(0.5, 0.1, "t = 0.6"), base_risk=0.3)
    a = _trace(fig, "run a")
    np.testing.assert_allclose(a.x, curve["coverage"])
    np.testing.assert_allclose(a.y, curve["risk"])
    np.testing.assert_allclose(a.customdata, curve["threshold"])  # hover: the confidence
    assert list(_trace(fig, "t = 0.6").x) == [0.5] and list(_trace(fig, "t = 0.6").y) == [0.1]
    assert list(_trace(fig, "Confidence says nothing").y) == [0.3, 0.3]
    assert fig.layout.shapes[0].x0 == 0.5
    nothing = plots.risk_coverage_figure({"a": curve}, mark=(0.0, float("nan"), "t = 1"))
    assert [t.name for t in nothing.data] == ["a"]  # nothing answered: only the line at 0
    with pytest.raises(ValueError, match="threshold"):
        plots.risk_coverage_figure({"a": curve.drop(columns="threshold")})


@pytest.mark.parametrize("build", [
    lambda: plots.risk_coverage_figure(
        {"a": pd.DataFrame({"coverage": [1.0], "risk": [0.2], "threshold": [0.5]})},
        base_risk=0.2, title="Risk-coverage"),
    lambda: plots.search_curve_figure(
        pd.DataFrame({"value": [0.1, 0.2], "ece": [0.2, 0.1], "series": ["validation"] * 2}),
        None, "c", "Temperature scaling: chosen 0.2"),
    lambda: plots.grouped_bars(pd.DataFrame({"m": ["a"], "v": [0.5], "s": ["x"]}),
                               "m", "v", "s", title="ECE per method"),
    lambda: plots.probability_bars(["A", "B"], {"p": [0.6, 0.4]}, title="Top-k")])
def test_title_and_legend_get_separate_bands_above_the_plot(build):
    fig = build()
    layout = fig.layout
    # the legend sits on the plot area's top edge, the title at the top of the figure: the
    # top margin must hold a legend row plus the title line, so they cannot overlap
    assert (layout.legend.y, layout.legend.yanchor, layout.legend.orientation) == (1, "bottom", "h")
    assert (layout.title.yref, layout.title.y, layout.title.yanchor) == ("container", 1, "top")
    assert layout.margin.t >= plots.LEGEND_ROW_PX + plots.TITLE_PX
    untitled = plots.search_curve_figure(pd.DataFrame({"value": [1], "ece": [0.1],
                                                       "series": ["v"]}))
    assert untitled.layout.margin.t < layout.margin.t  # no empty title band


# ---------------------------------------------------------------- issue 23 item 6: no markup

LINK = '<a href="https://x.example/">A</a>'
STYLED = "<span style='font-size:80px'>big</span> <b>b</b> & co"


def _no_markup(fig) -> list[str]:
    from helpers.text_walk import strings

    found = list(strings(fig.to_plotly_json()))
    raw = [s for s in found if "<a" in s or "<span" in s or "<b>" in s or " & " in s]
    assert not raw, raw
    return found


@pytest.mark.parametrize("build", [
    lambda: plots.probability_bars([LINK, STYLED], {LINK: [0.6, 0.3]}, highlight=LINK,
                                   title=f"Teacher's top-k ({STYLED})"),
    lambda: plots.grouped_bars(pd.DataFrame({"group": [LINK, STYLED], "mean": [0.5, 0.6],
                                             "split": [STYLED, LINK]}), "group", "mean", "split",
                               title=LINK),
    lambda: plots.search_curve_figure(pd.DataFrame({"value": [0.1, 0.2], "ece": [0.1, 0.05],
                                                    "series": [LINK, LINK]}),
                                      x_title=STYLED, title=LINK),
    lambda: plots.reliability_figure(pd.DataFrame({"lo": [0.0], "hi": [1.0], "count": [3],
                                                   "confidence": [0.5], "accuracy": [0.5]}),
                                     title=LINK),
    lambda: plots.position_coverage_figure(pd.DataFrame({"position": [0], "mean_top1": [0.5],
                                                         "mean_topk": [0.9]}), title=STYLED),
], ids=["probability_bars", "grouped_bars", "search_curve", "reliability", "positions"])
def test_store_text_reaches_plotly_as_text_not_markup(build):
    """Plotly renders <a href>, <b> and <span style> in labels, legends, hover and titles:
    every string from a store must arrive with <, > and & as entities (shown as typed)."""
    found = _no_markup(build())
    assert any("&lt;" in s for s in found)


def test_probability_bars_still_outline_the_gold_label_after_escaping():
    fig = plots.probability_bars([LINK, "B"], {"p": [0.6, 0.3]}, highlight=LINK)
    assert list(fig.data[0].x) == ["&lt;a href=\"https://x.example/\"&gt;A&lt;/a&gt;", "B"]
    assert list(fig.data[0].marker.line.width) == [3, 0]
