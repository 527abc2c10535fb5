"""Plotly figure builders for the dashboard.

Each builder takes plain tables (pandas DataFrames built by `first_core.views`) and returns a
`go.Figure`; nothing here computes a metric, so the figures can never disagree with the
numbers on the metric cards. Plotly's toolbar gives PNG/SVG downloads for free.

Plotly reads a subset of HTML (`<a href>`, `<b>`, `<span style>`) in every label, so each
string a builder is given (titles, legend names, category labels) goes through
`safe_text.for_plotly`: a run id or an option label from a store shows as typed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .safe_text import for_plotly

OVER_COLOR = "rgba(214, 39, 40, 0.55)"    # red: confidence above accuracy
UNDER_COLOR = "rgba(31, 119, 180, 0.55)"  # blue: confidence below accuracy
ACC_COLOR = "rgba(90, 90, 90, 0.85)"
SMOOTH_COLOR = "rgb(255, 127, 14)"
BIN_COLUMNS = ("lo", "hi", "count", "confidence", "accuracy")


def _check_columns(frame: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {missing}; got {list(frame.columns)}")


LEGEND_ROW_PX = 26  # one horizontal legend row
TITLE_PX = 34       # the title's line


def _title_legend_layout(title: str, height: int, left: int = 50, right: int = 20,
                         bottom: int = 40, legend_rows: int = 1) -> dict:
    """Title and horizontal legend in separate bands above the plot, never on top of each
    other: the legend sits just above the plot area, the title above the legend, pinned to
    the top of the figure, with the top margin sized for both."""
    top = legend_rows * LEGEND_ROW_PX + (TITLE_PX if title else 0) + 8
    layout = dict(height=height, margin=dict(l=left, r=right, t=top, b=bottom),
                  legend=dict(orientation="h", x=0, y=1, yanchor="bottom", yref="paper"))
    if title:
        layout["title"] = dict(text=for_plotly(title), x=0, xref="paper", y=1, yref="container",
                               yanchor="top", pad=dict(t=8))
    return layout


def _title_and_legend(fig: go.Figure, title: str, height: int, **kwargs: int) -> None:
    fig.update_layout(**_title_legend_layout(title, height, **kwargs))


def reliability_figure(bins: pd.DataFrame, title: str = "",
                       smooth: pd.DataFrame | None = None,
                       threshold: float | None = None) -> go.Figure:
    """Reliability diagram (top) over a confidence histogram (bottom), as in the paper's fig. 5.

    `bins` has one row per bin with columns lo, hi, count, confidence, accuracy (NaN where
    the bin is empty). The gap between accuracy and mean confidence is drawn on top of the
    accuracy bar: red where the model is over-confident, blue where it is under-confident.
    `smooth` (columns x, y: `rescaling.smooth_calibration(...).curve`) is drawn as a line over
    the bars: relplot's kernel-smoothed reliability curve, the one SmoothECE integrates.
    `threshold` draws the deferral threshold t as a vertical line through both rows: the
    answers right of it are the ones acted on.
    """
    _check_columns(bins, BIN_COLUMNS, "bins")
    # Built as one dict and validated once: the slider redraws this on every move, and
    # make_subplots + add_* (each validating and re-laying out) cost ~30x more.
    full = bins[bins["count"] > 0]
    lo, hi, count = (full[c].to_numpy(dtype=float) for c in ("lo", "hi", "count"))
    acc, conf = full["accuracy"].to_numpy(dtype=float), full["confidence"].to_numpy(dtype=float)
    centre, width = (lo + hi) / 2, hi - lo
    hover = [f"bin ({a:.3f}, {b:.3f}]<br>n = {n:,.0f}<br>acc = {y:.3f}<br>conf = {x:.3f}"
             for a, b, n, y, x in zip(lo, hi, count, acc, conf)]
    top = dict(xaxis="x", yaxis="y")
    data = [dict(type="bar", x=centre, y=acc, width=width, name="Accuracy",
                 marker=dict(color=ACC_COLOR, line=dict(width=1, color="white")),
                 hovertext=hover, hoverinfo="text", **top)]
    gap = conf - acc
    for mask, color, name in ((gap > 0, OVER_COLOR, "Over-confidence gap"),
                              (gap < 0, UNDER_COLOR, "Under-confidence gap")):
        data.append(dict(type="bar", x=centre[mask], y=np.abs(gap[mask]), width=width[mask],
                         base=np.minimum(acc, conf)[mask], name=name,
                         marker=dict(color=color, line=dict(width=1, color=color)),
                         hoverinfo="skip", **top))
    data.append(dict(type="scatter", x=[0, 1], y=[0, 1], mode="lines",
                     name="Perfect calibration",
                     line=dict(dash="dash", color="black", width=1), **top))
    if smooth is not None:
        _check_columns(smooth, ("x", "y"), "smooth")
        data.append(dict(type="scatter", x=smooth["x"].to_numpy(), y=smooth["y"].to_numpy(),
                         mode="lines", name="Smoothed (SmoothECE)",
                         line=dict(color=SMOOTH_COLOR, width=2.5), hoverinfo="skip", **top))
    data.append(dict(type="bar", x=((bins["lo"] + bins["hi"]) / 2).to_numpy(),
                     y=bins["count"].to_numpy(), width=(bins["hi"] - bins["lo"]).to_numpy(),
                     name="Examples per bin", marker=dict(color="rgba(120, 120, 120, 0.6)"),
                     showlegend=False, xaxis="x2", yaxis="y2"))
    layout = dict(  # two rows sharing x: the diagram (72%) over the histogram (28%)
        barmode="overlay", bargap=0, clickmode="event+select",
        xaxis=dict(range=[0, 1], anchor="y", matches="x2", showticklabels=False),
        yaxis=dict(title=dict(text="Accuracy"), range=[0, 1], domain=[0.3, 1.0]),
        xaxis2=dict(title=dict(text="Confidence"), range=[0, 1], anchor="y2"),
        yaxis2=dict(title=dict(text="Count"), domain=[0.0, 0.26]),
        # five legend entries wrap to two rows in a half-width panel
        **_title_legend_layout(title, 540, legend_rows=2))
    if threshold is not None:
        layout.update(_threshold_line(threshold, "x", f"t = {threshold:g}"))
    return go.Figure(dict(data=data, layout=layout))


THRESHOLD_COLOR = "rgb(44, 160, 44)"


def _threshold_line(x: float, xref: str, label: str) -> dict:
    """Layout entries for a dashed vertical line at x over the whole plot, labelled on top."""
    return dict(shapes=[dict(type="line", x0=x, x1=x, xref=xref, y0=0, y1=1, yref="paper",
                             line=dict(color=THRESHOLD_COLOR, width=2, dash="dash"))],
                annotations=[dict(x=x, xref=xref, y=1, yref="paper", text=label,
                                  showarrow=False, xanchor="left", yanchor="top", xshift=4,
                                  font=dict(color=THRESHOLD_COLOR))])


def risk_coverage_figure(curves: Mapping[str, pd.DataFrame],
                         mark: tuple[float, float, str] | None = None,
                         base_risk: float | None = None, title: str = "") -> go.Figure:
    """Selective risk (error rate among the answered) against coverage, one line per curve.

    Each curve has columns coverage, risk, threshold (`selective.SelectiveView.curve`).
    `mark` = (coverage, risk, label) marks the deferral threshold: a point and a vertical
    line. `base_risk` draws the flat line of a confidence that says nothing (the error rate of
    answering everything): the further a curve lies below it, the more the confidence helps.
    """
    data = []
    for name, curve in curves.items():
        _check_columns(curve, ("coverage", "risk", "threshold"), f"curves[{name!r}]")
        data.append(dict(type="scatter", x=curve["coverage"].to_numpy(),
                         y=curve["risk"].to_numpy(), mode="lines", name=str(name),
                         customdata=curve["threshold"].to_numpy(), line=dict(width=2.5),
                         hovertemplate="coverage %{x:.1%}<br>risk %{y:.1%}<br>"
                                       "confidence >= %{customdata:.3f}<extra></extra>"))
    if base_risk is not None:
        data.append(dict(type="scatter", x=[0, 1], y=[base_risk, base_risk], mode="lines",
                         name="Confidence says nothing", hoverinfo="skip",
                         line=dict(color="black", width=1, dash="dot")))
    layout = dict(xaxis=dict(title=dict(text="Coverage (share of questions answered)"),
                             range=[0, 1.02], tickformat=".0%"),
                  yaxis=dict(title=dict(text="Risk (wrong among answered)"), rangemode="tozero",
                             tickformat=".0%"),
                  **_title_legend_layout(title, 380))
    if mark is not None:
        coverage, risk, label = mark
        if np.isfinite(risk):
            data.append(dict(type="scatter", x=[coverage], y=[risk], mode="markers",
                             name=label, marker=dict(size=11, color=THRESHOLD_COLOR)))
        layout.update(_threshold_line(coverage, "x", label))
    return go.Figure(dict(data=data, layout=layout))


def coverage_figure(coverage: pd.DataFrame, disk: pd.DataFrame | None = None,
                    mark_k: int = 5) -> go.Figure:
    """Cumulative top-K probability coverage (mean with a p10-p90 band), K = `mark_k` marked.

    `coverage` has columns k, mean, p10, p90. With `disk` (columns k, topk_bytes,
    full_bytes), disk usage is drawn on a second, logarithmic y axis.
    """
    _check_columns(coverage, ("k", "mean", "p10", "p90"), "coverage")
    fig = make_subplots(specs=[[{"secondary_y": disk is not None}]])
    fig.add_scatter(x=coverage["k"], y=coverage["p90"], mode="lines", line=dict(width=0),
                    showlegend=False, hoverinfo="skip")
    fig.add_scatter(x=coverage["k"], y=coverage["p10"], mode="lines", line=dict(width=0),
                    fill="tonexty", fillcolor="rgba(31, 119, 180, 0.2)", name="p10-p90")
    fig.add_scatter(x=coverage["k"], y=coverage["mean"], mode="lines", name="Mean coverage",
                    line=dict(color="rgb(31, 119, 180)", width=2))
    marked = coverage[coverage["k"] == mark_k]
    if len(marked):
        value = float(marked["mean"].iloc[0])
        fig.add_scatter(x=[mark_k], y=[value], mode="markers+text", name=f"K = {mark_k}",
                        text=[f"K={mark_k}: {value:.1%}"], textposition="bottom right",
                        marker=dict(size=10, color="rgb(214, 39, 40)"))
    if disk is not None:
        _check_columns(disk, ("k", "topk_bytes", "full_bytes"), "disk")
        fig.add_scatter(x=disk["k"], y=disk["topk_bytes"], mode="lines", name="Top-K store (bytes)",
                        line=dict(color="rgb(44, 160, 44)", dash="dot"), secondary_y=True)
        fig.add_scatter(x=disk["k"], y=disk["full_bytes"], mode="lines",
                        name="Full distribution (bytes)",
                        line=dict(color="rgb(148, 103, 189)", dash="dash"), secondary_y=True)
        fig.update_yaxes(title_text="Disk usage (bytes)", type="log", dtick=1,
                         exponentformat="SI", showgrid=False, secondary_y=True)
    fig.update_yaxes(title_text="Cumulative probability", range=[0, 1.02], secondary_y=False)
    fig.update_xaxes(title_text="K (top-K tokens kept)")
    _title_and_legend(fig, "", 460, right=50)
    return fig


def position_coverage_figure(by_position: pd.DataFrame, title: str = "") -> go.Figure:
    """The teacher's mean top-1 and top-k mass per response position (columns position,
    mean_top1, mean_topk: `token_views.token_coverage_by_position`)."""
    _check_columns(by_position, ("position", "mean_top1", "mean_topk"), "by_position")
    fig = go.Figure()
    fig.add_scatter(x=by_position["position"], y=by_position["mean_topk"], mode="lines+markers",
                    name="Mean top-k mass")
    fig.add_scatter(x=by_position["position"], y=by_position["mean_top1"], mode="lines+markers",
                    name="Mean top-1 probability")
    fig.update_xaxes(title_text="Response position (the last gathers every later one)")
    fig.update_yaxes(title_text="Teacher probability", range=[0, 1.02])
    _title_and_legend(fig, title, 360)
    return fig


def search_curve_figure(curves: pd.DataFrame, chosen: pd.DataFrame | None = None,
                        x_title: str = "c", title: str = "") -> go.Figure:
    """ECE versus the searched value (the paper's figure 6), one line per `series`.

    `curves` has columns value, ece, series (e.g. "TS val", "LS test"); `chosen` has
    value, ece, series for the points to mark.
    """
    _check_columns(curves, ("value", "ece", "series"), "curves")
    fig = go.Figure()
    for series, part in curves.groupby("series", sort=False):
        part = part.sort_values("value")
        fig.add_scatter(x=part["value"], y=part["ece"], mode="lines+markers",
                        name=for_plotly(series),
                        marker=dict(size=4))
    if chosen is not None and len(chosen):
        _check_columns(chosen, ("value", "ece", "series"), "chosen")
        fig.add_scatter(x=chosen["value"], y=chosen["ece"], mode="markers+text",
                        name="chosen", text=[f"{v:.3g}" for v in chosen["value"]],
                        textposition="top center",
                        marker=dict(size=12, symbol="star", color="rgb(214, 39, 40)"))
    _title_and_legend(fig, title, 380)
    fig.update_xaxes(title_text=for_plotly(x_title))
    fig.update_yaxes(title_text="ECE", tickformat=".0%")
    return fig


def grouped_bars(table: pd.DataFrame, x: str, y: str, group: str, title: str = "",
                 percent: bool = True, error: str | None = None) -> go.Figure:
    """Grouped bar chart of `y` per `x`, one bar colour per `group` (e.g. method x split);
    `error` names a column drawn as +- error bars (e.g. the std over seeds)."""
    _check_columns(table, (x, y, group) + ((error,) if error else ()), "table")
    fig = go.Figure()
    for name, part in table.groupby(group, sort=False):
        fig.add_bar(x=[for_plotly(v) if isinstance(v, str) else v for v in part[x]], y=part[y],
                    name=for_plotly(name),
                    text=[f"{v:.1%}" if percent else f"{v:.3g}" for v in part[y]],
                    textposition="outside",
                    error_y=dict(type="data", array=part[error]) if error else None)
    fig.update_layout(barmode="group")
    _title_and_legend(fig, title, 380)
    if percent:
        fig.update_yaxes(tickformat=".0%")
    return fig


def probability_bars(labels: Sequence[str], series: dict[str, Sequence[float]],
                     highlight: str | None = None, title: str = "") -> go.Figure:
    """Bars of one or more probability vectors over the same labels (e.g. top-5 before/after).

    `highlight` names the label to outline (the gold answer).
    """
    labels = [str(label) for label in labels]
    shown = [for_plotly(label) for label in labels]
    fig = go.Figure()
    for name, values in series.items():
        if len(values) != len(labels):
            raise ValueError(f"series {name!r}: {len(values)} values for {len(labels)} labels")
        fig.add_bar(x=shown, y=list(values), name=for_plotly(name),
                    text=[f"{v:.1%}" for v in values], textposition="outside",
                    marker=dict(line=dict(width=[3 if lab == highlight else 0 for lab in labels],
                                          color="rgb(44, 160, 44)")))
    fig.update_layout(barmode="group")
    _title_and_legend(fig, title, 320, left=40)
    fig.update_yaxes(tickformat=".0%", range=[0, 1.1])
    fig.update_xaxes(type="category")
    return fig
