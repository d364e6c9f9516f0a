"""A feature: what a trained checkpoint is used for: evaluate it, classify image files, export it."""
