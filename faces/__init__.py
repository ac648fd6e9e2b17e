"""The face pipeline: image reading, detector, crop, embedder (docs/pipeline.md)."""
