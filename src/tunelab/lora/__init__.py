"""LoRA (Hu et al. 2021) for any PyTorch model: h = W0 x + scaling * B A x, with W0 frozen.

Adapters live inside the linear/embedding layers they adapt (`layers.py`); `injection.py` decides where and which are
active, `merging.py` folds them into W0, `mixed.py` runs a different adapter per row in one batch (the layers take a `Routing`, `routing.py`), and
`peft_format.py` reads and writes PEFT's adapter files.
"""

from tunelab._lazy import lazy_exports

_EXPORTS = {
    "LoraConfig": "config",
    "LoraError": "errors",
    "TrainableParameters": "injection",
    "add": "injection",
    "delete": "injection",
    "disabled": "injection",
    "inject": "injection",
    "set_active": "injection",
    "trainable_parameters": "injection",
    "adapter_modules": "injection",
    "lora_layers": "injection",
    "LoraEmbedding": "layers",
    "LoraLayer": "layers",
    "LoraLinear": "layers",
    "ModulesToSave": "layers",
    "merge": "merging",
    "merge_and_unload": "merging",
    "unmerge": "merging",
    "per_row_adapters": "mixed",
    "per_token_adapters": "mixed",
    "routed": "mixed",
    "Routing": "routing",
    "load_adapter": "peft_format",
    "save_adapter": "peft_format",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
