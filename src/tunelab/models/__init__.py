"""One decoder-only model definition for training and inference, loaded from and
saved to Hugging Face checkpoints; its tokenizer; simple generation."""

from tunelab._lazy import lazy_exports

_EXPORTS = {
    "load_pretrained": "checkpoint",
    "save_pretrained": "checkpoint",
    "resolve_checkpoint": "checkpoint",
    "convert_gguf": "gguf_convert",
    "BUILTIN_MODELS": "builtin",
    "SUPPORTED_MODEL_TYPES": "config",
    "ModelConfig": "config",
    "ModelError": "config",
    "Generation": "generation",
    "generate": "generation",
    "Tokenizer": "tokenizer",
    "KVCache": "transformer",
    "Transformer": "transformer",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
