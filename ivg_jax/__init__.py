"""ivg-jax: inference-time alignment of language models with Integrated Value Guidance, in JAX/Flax."""

from ivg_jax.config import ModelConfig
from ivg_jax.errors import CheckpointError, InputError, IvgError, UnsupportedError
from ivg_jax.loading import export_hf, load_model
from ivg_jax.model.api import Model, forward, init_model

__all__ = [
    "CheckpointError", "InputError", "IvgError", "Model", "ModelConfig", "UnsupportedError", "export_hf",
    "forward", "init_model", "load_model",
]
__version__ = "0.1.0"
