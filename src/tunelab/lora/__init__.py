"""LoRA (Hu et al. 2021) for any PyTorch model: h = W0 x + scaling * B A x, with W0 frozen.

Adapters live inside the linear/embedding layers they adapt (`layers.py`); `inject.py` decides where and which are
active, `merge.py` folds them into W0, `mixed.py` runs a different adapter per row in one batch, and
`peft_format.py` reads and writes PEFT's adapter files.
"""

from tunelab.lora.config import LoraConfig
from tunelab.lora.errors import LoraError
from tunelab.lora.inject import (
    TrainableParameters,
    add,
    delete,
    disabled,
    inject,
    set_active,
    trainable_parameters,
)
from tunelab.lora.layers import LoraEmbedding, LoraLinear, ModulesToSave
from tunelab.lora.merge import merge, merge_and_unload, unmerge
from tunelab.lora.mixed import per_row_adapters, per_token_adapters
from tunelab.lora.peft_format import load_adapter, save_adapter

__all__ = [
    "LoraConfig", "LoraError", "LoraEmbedding", "LoraLinear", "ModulesToSave", "TrainableParameters",
    "inject", "add", "set_active", "delete", "disabled", "trainable_parameters",
    "merge", "unmerge", "merge_and_unload", "per_row_adapters", "per_token_adapters",
    "save_adapter", "load_adapter",
]
