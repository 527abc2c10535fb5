"""Rendering of "acting on the confidence" (not a page): the discrimination cards, the
deferral threshold's counts and the risk-coverage curve, for the Reliability and Learn pages.
Everything shown is computed by `first_core.views.selective`."""

from __future__ import annotations

import streamlit as st

from first_core.views import plots
from first_core.views import selective
from first_core.views.selective import SelectiveView, format_range, format_score

THRESHOLD_LABEL = "Answer only when confidence ≥ t"
THRESHOLD_HELP = ("The deferral threshold: answers with a lower confidence go to a person "
                  "instead. The cards below each diagram say how many questions that leaves "
                  "answered, how often those answers are right, how many wrong answers still "
                  "get through and how many questions are deferred.")
AUROC_HELP = ("Area under the ROC curve of the confidence as a detector of right answers: the "
              "chance that a random right answer is more confident than a random wrong one "
              "(ties count half). 0.5: the confidence says nothing about which answers are "
              "right; 1: it separates them perfectly. Calibration (ECE) cannot see this.")
AURC_HELP = ("Area under the risk-coverage curve: the error rate among the answered, averaged "
             "over every coverage, answering the most confident first (Geifman & El-Yaniv "
             "2018). Lower is better; a confidence that says nothing gives the plain error "
             "rate.")


INTERVAL_HELP = (" Below it the 95% bootstrap interval (omitted above "
                 f"{selective.BOOT_MAX_N:,} predictions to keep the slider live).")


def discrimination_cards(view: SelectiveView) -> None:
    """AUROC and AURC with their bootstrap intervals (when computed)."""
    grid = st.columns(2)
    for column, name, label, text in ((grid[0], "auroc", "AUROC", AUROC_HELP + INTERVAL_HELP),
                                      (grid[1], "aurc", "AURC", AURC_HELP + INTERVAL_HELP)):
        column.metric(label, format_score(getattr(view, name)),
                      delta=format_range(*view.intervals[name]), delta_color="off",
                      delta_arrow="off", help=text)


def threshold_cards(view: SelectiveView) -> None:
    """What "answer only when confidence >= t" does: coverage, accuracy, let through, deferred."""
    at = view.at
    grid = st.columns(4)
    grid[0].metric("Answered", f"{at.coverage:.1%}", help=f"{at.answered:,} of {at.n:,} "
                   f"questions have confidence ≥ {at.t:g}.")
    grid[1].metric("Their accuracy",
                   "n/a" if at.answered == 0 else f"{at.accuracy:.1%}",
                   help="Accuracy on the answered questions only (selective accuracy).")
    grid[2].metric("Wrong ones", f"{at.wrong:,}",
                   help="Wrong answers let through: they clear the threshold and are acted on.")
    grid[3].metric("Deferred", f"{at.deferred:,}",
                   help="Questions below the threshold, left to a person.")


def risk_coverage_chart(view: SelectiveView, name: str, key: str) -> None:
    """The panel's risk-coverage curve, its threshold marked."""
    at = view.at
    mark = (at.coverage, 1 - at.accuracy if at.answered else float("nan"), f"t = {at.t:g}")
    st.plotly_chart(plots.risk_coverage_figure({name: view.curve}, mark=mark,
                                               base_risk=view.base_risk), key=key)
