"""Evaluation: detectors (zero-shot and supervised, in MLX), their calibration, and the
metrics that say whether a rewrite reads as human and kept its meaning."""
