"""A pure-PyTorch inference engine: paged KV cache, continuous batching, per-request LoRA adapters."""

from tunelab._lazy import lazy_exports

_EXPORTS = {
    "AsyncLLM": "async_engine",
    "EngineFailure": "async_engine",
    "QueueFull": "async_engine",
    "EngineError": "errors",
    "UnknownAdapter": "errors",
    "LLM": "llm_engine",
    "SamplingParams": "sampling_params",
    "RequestOutput": "sequence",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
