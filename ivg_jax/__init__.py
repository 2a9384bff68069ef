"""ivg-jax: inference-time alignment of language models with Integrated Value Guidance, in JAX/Flax."""

import os as _os

# ivg-jax takes only tokenizers and GGUF converters from transformers, never its PyTorch models, so the advice
# transformers prints on import where torch is absent (every fresh install) is noise here.
_os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import warnings as _warnings

from tqdm import TqdmWarning as _TqdmWarning

# transformers and huggingface_hub import tqdm.auto, which in a Jupyter kernel without ipywidgets warns
# "IProgress not found" once and then draws text bars anyway (ivg_jax.progress picks the text bar itself).
_warnings.filterwarnings("ignore", message="IProgress not found", category=_TqdmWarning)

from ivg_jax.config import ModelConfig
from ivg_jax.decoding.engine import Generation, generate
from ivg_jax.decoding.sampling import Sampling
from ivg_jax.errors import CheckpointError, InputError, IvgError, UnsupportedError
from ivg_jax.guidance import ExplicitGuide, Guidance, ImplicitGuide, Search, best_of_n
from ivg_jax.loading import export_hf, load_model
from ivg_jax.model.api import Model, forward, init_model

__all__ = [
    "CheckpointError", "ExplicitGuide", "Generation", "Guidance", "ImplicitGuide", "InputError", "IvgError", "Model",
    "ModelConfig", "Sampling", "Search", "UnsupportedError", "best_of_n", "export_hf", "forward", "generate",
    "init_model", "load_model",
]
__version__ = "0.1.0"
