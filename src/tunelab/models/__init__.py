"""One decoder-only model definition for training and inference, loaded from and
saved to Hugging Face checkpoints; its tokenizer; simple generation."""

from tunelab.models.checkpoint import load_pretrained, save_pretrained
from tunelab.models.config import SUPPORTED_MODEL_TYPES, ModelConfig, ModelError
from tunelab.models.generate import Generation, generate
from tunelab.models.tokenizer import Tokenizer
from tunelab.models.transformer import KVCache, Transformer

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "Generation",
    "KVCache",
    "ModelConfig",
    "ModelError",
    "Tokenizer",
    "Transformer",
    "generate",
    "load_pretrained",
    "save_pretrained",
]
