"""Learn calibration: a simulated classifier to play with, and the paper's formulas in words.

Needs no store.
"""

from __future__ import annotations

import streamlit as st

from first_core.views import plots
from first_core.views import selective, teaching, view_state

from pages import _selective
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

st.header("Calibrated is not enough")
st.markdown(
    "Both simulated models below are calibrated (s = 1) and right as often as the accuracy "
    "slider above says. Model B's confidence is high where it is right and low where it is "
    "wrong; model A's says less about that, down to stating its base rate for every question "
    "at discrimination 0. Its ECE is then near 0 and its AUROC 0.5: you cannot use its "
    "confidence to decide which answers to trust.")
discrimination = st.slider("Discrimination of model A (0 = always states its base rate, "
                           "1 = as model B)", 0.0, 1.0, 0.0, 0.05, key="learn_d")
models = {"Model A": teaching.simulate_classifier(accuracy, 1.0, discrimination=discrimination),
          "Model B": teaching.simulate_classifier(accuracy, 1.0)}
curves = {}
for column, (name, (probs, labels)) in zip(st.columns(2), models.items()):
    calibration = teaching.classifier_view(probs, labels, 1.0, "logit", n_bins)
    acting = teaching.classifier_selective(probs, labels)
    curves[name] = acting.curve
    with column:
        st.markdown(f"**{name}**")
        cards = st.columns(4)
        cards[0].metric("Accuracy", f"{calibration.cards['accuracy']:.1%}")
        cards[1].metric("ECE", f"{calibration.cards['ece']:.1%}")
        cards[2].metric("AUROC", selective.format_score(acting.auroc), help=_selective.AUROC_HELP)
        cards[3].metric("AURC", f"{acting.aurc:.3f}", help=_selective.AURC_HELP)
st.plotly_chart(plots.risk_coverage_figure(curves, title="Risk-coverage: answer the most "
                                                         "confident first"), key="learn-risk")
st.caption("Read the curve from the right: at coverage 100% every question is answered and the "
           "risk is the plain error rate. Moving left, the least confident answers are deferred "
           "to a person. A confidence that ranks right answers above wrong ones makes the risk "
           "fall as you defer (model B); a confidence that says nothing leaves it flat (model A "
           "at discrimination 0), however well calibrated. AURC is the area under the curve.")

st.header("Why not just rescale?")
st.markdown(
    "The fix most practitioners try first is post-hoc temperature scaling (Guo et al. 2017): "
    "keep the model, fit one temperature T on a validation set by likelihood, divide the "
    "logits by it. It needs no retraining and one number, and in domain it often calibrates "
    "as well as anything (this project's report has a `+ts` row for every trained model). "
    "Two things it cannot do: it only moves the confidence *level*, so the answers and "
    "almost all of their ranking stay (accuracy is unchanged, AUROC nearly), and a T fitted "
    "in domain is the right T only where the model errs the same way. Below, the model "
    "above is fitted on an in-domain sample and then tested on a shifted one, where it is "
    "less accurate and exaggerates more.")
cols = st.columns(2)
ood_accuracy = cols[0].slider("Out-of-domain accuracy", 0.3, 0.9, 0.45, 0.05,
                              key="learn_ood_acc")
ood_sharpness = cols[1].slider("Out-of-domain over-confidence s", 0.3, 6.0, 3.5, 0.1,
                               key="learn_ood_s")
t_fit, lesson = teaching.rescale_lesson(accuracy, sharpness, max(ood_accuracy, 0.3),
                                        ood_sharpness, n_bins)
st.dataframe(lesson, hide_index=True, column_config={
    name: st.column_config.NumberColumn(name, format="percent")
    for name in ("accuracy", "ECE")} | {
    name: st.column_config.NumberColumn(name, format="%.3f") for name in ("AUROC", "AURC")})
st.caption(f"T = {t_fit:.2f} was fitted on in-domain validation data only. In domain it undoes "
           f"the model's exaggeration (s = {sharpness:g}); out of domain, where s = "
           f"{ood_sharpness:g}, the same T leaves an error the validation set never showed. "
           "Accuracy does not move at all, AUROC and AURC barely: with four options the top "
           "probability after scaling depends on the other three too, so two answers can "
           "swap places. To change which answers are right, or how well confidence ranks "
           "them, the model itself has to change, which is what FIRST's distillation does.")

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
st.markdown("**AUROC**: the chance that a random right answer has a higher confidence than a "
            "random wrong one (ties count half). **AURC**: the error rate among the answered, "
            "averaged over the n ways to answer the i most confident questions, i = 1..n.")
st.latex(r"\mathrm{AURC} = \frac{1}{n} \sum_{i=1}^{n} \frac{\#\,\text{wrong among the } i "
         r"\text{ most confident}}{i}")
