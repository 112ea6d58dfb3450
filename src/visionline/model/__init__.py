"""What a trained model is: its architectures, the in-process Predictor, and a run's
layout in the store (``runs/<run_id>/...``)."""
