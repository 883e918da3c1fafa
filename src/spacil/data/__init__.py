"""Datasets, class orders and class-incremental scenarios."""
