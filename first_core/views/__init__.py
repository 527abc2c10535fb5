"""What the dashboard pages compute, kept out of the pages so it can be tested.

Pages query the store (`first_core.store.reads`), call a function in one of these modules and
render the result with `first_core.views.plots`:

| module | job |
| --- | --- |
| `view_state` | the URL's view state (slider grid, modes, conventions, bins), parsed defensively |
| `run_arrays` | one run and split as dense validated arrays (`PredictionArrays`) |
| `rescaling` | the slider's path: re-scale at c, metric cards, bins, ECE-vs-c, SmoothECE |
| `example_rows` | a bin's examples as plain text; the Examples filters |
| `tables` | Table 1 and Compare over seeds of one pipeline; temperature-search curves |
| `selective` | acting on the confidence: AUROC, AURC, the deferral threshold, risk-coverage |
| `storage_math` | top-K storage arithmetic |
| `coverage_runs` | the Coverage page's opening run (the largest vocabulary), what a run is |
| `teaching` | the Learn page's simulated classifier |
| `token_views` | per-token stores of the instruction setting |
"""
