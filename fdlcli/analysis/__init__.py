"""Analyses of finished runs: plots, loss-surface interpolation, embeddings, attention maps."""
