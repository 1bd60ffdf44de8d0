"""Zarr matrix collections, ingest adapters, run checkpoints and compressed artifacts."""
