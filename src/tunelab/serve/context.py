"""What every route of the server shares: the engine, the served model's name, the limits, the request fields
that become engine `SamplingParams`, and starting a request's choices on the adapter its `model` names.
`create_app` builds one `ServeContext`; routes receive it through `Depends(serve_context)`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request

from tunelab.engine import AsyncLLM, EngineError, RequestOutput, SamplingParams, UnknownAdapter
from tunelab.engine.sampling_params import SEED_MAX
from tunelab.serve.protocol import ApiError
from tunelab.serve.request_body import Limits, logit_bias
from tunelab.serve.responses import TokenText, usage
from tunelab.serve.streams import start_all

DEFAULT_MAX_TOKENS = 256


@dataclass
class ServeContext:
    engine: AsyncLLM
    model_name: str
    limits: Limits
    created: int
    http_status: Counter = field(default_factory=Counter)
    renders_tools: list[bool] = field(default_factory=list)  # computed once, on the first request with tools

    def __post_init__(self):
        self.llm = self.engine.llm
        self.tokens = TokenText(self.llm)

    async def start(self, jobs, model: str, rid: str) -> list[AsyncIterator[RequestOutput]]:
        """Start every choice (`streams.start_all`) on the adapter the request's `model` names, as in vLLM: the base
        model's name runs the base. The engine is what knows whether that adapter is loaded; its refusal becomes
        OpenAI's 404 for a model that does not exist."""
        adapter = None if model in (self.model_name, self.llm.model_path) else model
        try:
            return await start_all(self.engine, jobs, adapter, rid)
        except UnknownAdapter as exc:
            raise ApiError(404, f"The model `{model}` does not exist; this server has "
                           f"{[self.model_name, *exc.loaded]}", param="model", code="model_not_found") from None


def serve_context(request: Request) -> ServeContext:
    return request.app.state.serve


def sampling_params(body, max_tokens, **extra) -> SamplingParams:
    try:
        return SamplingParams(
            max_tokens=DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens, temperature=body.temperature,
            top_p=body.top_p, top_k=body.top_k, stop=body.stops, seed=body.seed,
            presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
            ignore_eos=body.ignore_eos, logit_bias=logit_bias(body), **extra)
    except EngineError as exc:
        raise ApiError(400, str(exc), param=str(exc).split(":")[0]) from None


def choice_params(params: SamplingParams, j: int) -> SamplingParams:
    """Choice j of n: its own seed (seed + j, wrapped into torch's range), so the choices differ but repeat."""
    if j == 0 or params.seed is None:
        return params
    seed = params.seed + j
    if seed > SEED_MAX:
        seed -= 1 << 64
    return SamplingParams(**{**params.to_dict(), "seed": seed})


def prompts_usage(prompts, n: int, outs: list[RequestOutput]) -> dict:
    """Each prompt counted once however many choices it has."""
    return usage(sum(outs[i * n].prompt_tokens for i in range(len(prompts)) if i * n < len(outs)), outs)
