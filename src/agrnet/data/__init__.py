"""Datasets, label specifications, transforms and the synthetic face generator."""
