"""A pure-PyTorch inference engine: paged KV cache, continuous batching, per-request LoRA adapters."""

from tunelab.engine.async_engine import AsyncLLM, EngineFailure, QueueFull
from tunelab.engine.errors import EngineError
from tunelab.engine.llm_engine import LLM
from tunelab.engine.sampling_params import SamplingParams
from tunelab.engine.sequence import RequestOutput

__all__ = ["LLM", "AsyncLLM", "EngineError", "EngineFailure", "QueueFull", "RequestOutput", "SamplingParams"]
