"""Training the value functions (spec §5): data, objectives, optimiser, steps, checkpoints and the loop."""

from ivg_jax.training.trainer import TrainConfig, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
