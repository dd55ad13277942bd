"""POST /v1/completions: text (or token-id) prompts, each choice of `n` its own engine request."""

from __future__ import annotations

import asyncio
import time
import uuid

from fastapi import APIRouter, Depends, Request

from tunelab.serve.context import ServeContext, choice_params, prompts_usage, sampling_params, serve_context
from tunelab.serve.protocol import ApiError, CompletionRequest
from tunelab.serve.request_body import check_limits, parse, read_json
from tunelab.serve.responses import ChoiceView, completion_choice, completion_delta
from tunelab.serve.streams import finals, merged, sse

router = APIRouter()


@router.post("/v1/completions")
async def completions(request: Request, ctx: ServeContext = Depends(serve_context)):
    body = parse(CompletionRequest, await read_json(request, ctx.limits))
    check_limits(body, ctx.limits)
    prompts = _prompts(body)
    params = sampling_params(body, body.max_tokens, logprobs=body.logprobs)
    prefixes = [""] * len(prompts)
    if body.echo:
        decode = ctx.llm.tokenizer.decode
        prefixes = [p if isinstance(p, str) else await asyncio.to_thread(decode, p) for p in prompts]
    jobs = [(p, choice_params(params, j)) for p in prompts for j in range(body.n)]
    views = [ChoiceView(i, prefix=prefixes[i // body.n]) for i in range(len(jobs))]
    rid = f"cmpl-{uuid.uuid4().hex}"
    streams = await ctx.start(jobs, body.model, rid)
    head = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": body.model}
    if body.stream:
        async def chunks():
            last = {}
            async for i, out in merged(streams):
                last[i] = out
                choice = completion_delta(out, views[i], ctx.tokens, body.logprobs)
                if choice is not None:
                    yield {**head, "choices": [choice]}
            if body.stream_options and body.stream_options.include_usage:
                yield {**head, "choices": [], "usage": prompts_usage(prompts, body.n, [last[i] for i in sorted(last)])}

        return sse(chunks())
    outs = await finals(streams, request)
    return {**head, "choices": [completion_choice(o, v, ctx.tokens, body.logprobs) for o, v in zip(outs, views)],
            "usage": prompts_usage(prompts, body.n, outs)}


def _prompts(body: CompletionRequest) -> list:
    """The request's prompts as a list (one string or one token list is one prompt), none of them empty."""
    if body.echo and body.logprobs is not None:
        raise ApiError(400, "echo with logprobs needs the prompt's logprobs, which tunelab does not compute; "
                       "drop one of them", param="echo")
    prompts = body.prompt
    if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
        prompts = [prompts]
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ApiError(400, "prompt: empty", param="prompt")
    return prompts
