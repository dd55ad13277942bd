"""Mixed-adapter batches: every row (or every token) of ONE forward pass uses its own adapter.

The model's own forward knows nothing of adapters, so for the duration of the block each adapter layer is handed
the `Routing` as its `routing` argument by a forward pre-hook; the layers do the mixing themselves (`routing.py`).
Nothing is written into the layers, and the hooks are gone when the block ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from tunelab.lora.errors import LoraError
from tunelab.lora.injection import adapter_modules, adapter_state
from tunelab.lora.layers import LoraLayer, ModulesToSave
from tunelab.lora.routing import Routing


@contextlib.contextmanager
def per_row_adapters(model: nn.Module, adapters: Sequence[str | None]) -> Iterator[nn.Module]:
    """Inside the block, row i of the batch runs adapter `adapters[i]` (None = the base model).

    `with per_row_adapters(model, ["a", "b", None, "a"]): logits = model(input_ids)`
    """
    with routed(model, _known(model, Routing.per_row(adapters))):
        yield model


@contextlib.contextmanager
def per_token_adapters(model: nn.Module, adapters: Sequence[str], index: torch.Tensor) -> Iterator[nn.Module]:
    """Inside the block, token t (in the order of `input_ids.reshape(-1)`) runs `adapters[index[t]]`; index -1 means
    the base model. For packed inputs such as `[1, total_tokens]` where each request's tokens share a row.

    `with per_token_adapters(model, ["a", "b"], torch.tensor([0, 0, 0, 1, 1, -1])): logits = model(ids)`
    """
    with routed(model, _known(model, Routing.per_token_index(adapters, index))):
        yield model


@contextlib.contextmanager
def routed(model: nn.Module, routing: Routing) -> Iterator[nn.Module]:
    """Every adapter layer of `model` gets `routing` as its forward argument inside the block. The adapter names are
    trusted: a caller checks them once at its edge (`per_row_adapters` does, the engine's `LLM.make_sequence` does for
    its requests); what is checked here is the model's state, which can change between blocks (a merge)."""
    modules = list(adapter_modules(model))
    _check(modules, routing)

    def give_routing(module, args, kwargs):
        return args, {**kwargs, "routing": routing}

    handles = [m.register_forward_pre_hook(give_routing, with_kwargs=True) for m in modules]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


def _known(model: nn.Module, routing: Routing) -> Routing:
    state = adapter_state(model)
    unknown = sorted({a for a in routing.names if a not in state.configs})
    if unknown:
        raise LoraError(f"unknown adapter(s) {unknown} in mixed batch; this model has {list(state.configs)}")
    return routing


def _check(modules: list[LoraLayer | ModulesToSave], routing: Routing) -> None:
    for m in modules:
        if isinstance(m, LoraLayer) and m.merged_adapters:
            raise LoraError(f"adapters {m.merged_adapters} are merged into the base weights; unmerge(model) before "
                            "running a mixed-adapter batch")
        if routing.mixed and isinstance(m, ModulesToSave) and any(a in m.modules_to_save for a in routing.names):
            raise LoraError("an adapter in this mixed batch has modules_to_save, which cannot differ per row; "
                            "run it in its own batch with set_active")
