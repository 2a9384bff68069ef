"""Controlled sentiment (the paper's IMDB task) on SmolLM2 with VADER as the gold judge."""

from ivg_jax.experiments.sentiment.pipeline import DEFAULT_METHODS, METHODS, PRESETS, STAGES, SentimentConfig, run

__all__ = ["DEFAULT_METHODS", "METHODS", "PRESETS", "STAGES", "SentimentConfig", "run"]
