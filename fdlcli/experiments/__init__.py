"""Experiment families, one readable module each. Each module registers its experiments on import."""
