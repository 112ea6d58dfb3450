"""Monitoring: what the served model sees, compared with what it was validated on.

- ``features``: per-image statistics (size, per-channel mean and std, predicted label,
  confidence, margin, entropy) and a small embedding (the penultimate layer through a
  fixed random projection), computed by one code path for captures, folders of images
  and the reference.
- ``reference``: those statistics on the validation split, stored with the run the
  first time monitoring needs them (packaging, a check).
- ``archive``: what a model archive carries for capture (settings, projection).
- ``capture``: the TorchServe worker's sampled request records (the handler's entry),
  with ``capture_settings`` (what the archive tells it), ``capture_sink`` (buffered in
  memory, written to the store in the background as Parquet) and ``capture_windows``
  (reading them back by time window).
- ``drift``: PSI and Kolmogorov-Smirnov per feature, chi-squared on the predicted
  classes, MMD with a permutation test on embeddings, Benjamini-Hochberg across them.
- ``report``: the drift report (markdown and PNG plots) in the store.
- ``policy``: when to retrain, with reasons, and the decision log.
- ``labels``: late labels joined to captures, the labelling queue; ``label_import``:
  labelled images as a new dataset version (validated by the GX gate).

Nothing here imports Prefect; ``flows/monitoring.py`` composes these functions.
"""
