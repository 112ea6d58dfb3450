"""Data stage: samples, ingestion, manifests, splits, datasets and transforms."""
