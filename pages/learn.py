"""Learn calibration: a simulated classifier to play with, and the paper's formulas in words.

Needs no store.
"""

from __future__ import annotations

import streamlit as st

from first_core import plots
from first_core.views import teaching, view_state

from pages._common import through_app

through_app()
st.title("Learn calibration")
st.markdown(
    "A model is **calibrated** when its confidence means what it says: of all answers given "
    "with 80% confidence, 80% are right. The classifier below is simulated: choose how often "
    "it is right and how much it exaggerates, then see what temperature scaling does.")

left, right = st.columns(2)
accuracy = left.slider("Accuracy of the simulated classifier", 0.35, 0.95, 0.70, 0.05,
                       key="learn_acc")
sharpness = left.slider("Over-confidence s (1 = calibrated, > 1 over-, < 1 under-confident)",
                        0.3, 4.0, 2.0, 0.1, key="learn_s")
mode = right.radio("Re-scaling", list(view_state.MODES), format_func=view_state.MODES.get,
                   key="learn_mode")
c = right.select_slider("Temperature c", options=list(view_state.TEMPERATURE_GRID), value=1.0,
                        key="learn_c", format_func=lambda v: f"{v:g}")
n_bins = right.slider("Bins", *view_state.BIN_RANGE, 10, key="learn_bins")

probs, labels = teaching.simulate_classifier(accuracy, sharpness)
before = teaching.classifier_view(probs, labels, 1.0, "logit", n_bins)
after = teaching.classifier_view(probs, labels, c, mode, n_bins)
panels = zip(st.columns(2), (before, after),
             ("As the model reports it", f"After re-scaling with c = {c:g}"))
for i, (column, view, title) in enumerate(panels):
    with column:
        st.markdown(f"**{title}**")
        cards = st.columns(3)
        cards[0].metric("Accuracy", f"{view.cards['accuracy']:.1%}")
        cards[1].metric("ECE", f"{view.cards['ece']:.1%}")
        cards[2].metric("Trust", f"{view.cards['trust']:.1%}")
        st.plotly_chart(plots.reliability_figure(view.bins), key=f"learn-fig-{i}")
st.caption(f"Here the classifier's probabilities are the true ones raised to the power s and "
           f"renormalised, so classic temperature scaling with c = s = {sharpness:g} undoes "
           "the distortion exactly. Accuracy never changes: re-scaling keeps the top answer.")

st.header("The formulas, in plain words")
st.markdown("**Reliability diagram.** Sort the answers into bins by confidence. In each bin "
            "compare the average confidence with the fraction that was right. Bars below the "
            "diagonal (red gap) are over-confidence, above it (blue gap) under-confidence.")
st.markdown("**Expected calibration error**: the gap in each bin, weighted by how many "
            "answers fall in it.")
st.latex(r"\mathrm{ECE} = \sum_{b=1}^{B} \frac{n_b}{n}\,\bigl|\mathrm{acc}_b - "
         r"\mathrm{conf}_b\bigr|")
st.markdown("**Classic temperature scaling** (Guo et al. 2017) divides the log-probabilities "
            "by c: c > 1 softens, c < 1 sharpens, c = 1 changes nothing.")
st.latex(r"P'(i) = \frac{\exp(\log P(i) / c)}{\sum_j \exp(\log P(j) / c)} = "
         r"\frac{P(i)^{1/c}}{\sum_j P(j)^{1/c}}")
st.markdown("**FIRST's trustworthy maximization** (Shum et al. 2024) applies the softmax to "
            "the teacher's kept top-k *probabilities* themselves. Because probabilities lie "
            "in [0, 1], c = 1 flattens them a lot, which is why the best c is usually well "
            "below 1 (around 0.3 in the paper). The re-scaled teacher is what the student "
            "learns to imitate.")
st.latex(r"P'(i) = \frac{\exp(P(i) / c)}{\sum_{j=1}^{k} \exp(P(j) / c)}")
st.markdown("**Trust score.** We report accuracy minus ECE, both as fractions; the paper's "
            "exact formula could not be verified, so this is *our* definition.")
st.latex(r"\mathrm{Trust} = \mathrm{Acc} - \mathrm{ECE}")
