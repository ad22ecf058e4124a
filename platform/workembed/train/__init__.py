"""Training of the bi-encoder: gradient caching for large contrastive batches."""
