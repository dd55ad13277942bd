"""POST /v1/chat/completions: messages rendered by the model's chat template (models/chat.py), tools and JSON
output constrained by a grammar, each choice of `n` its own engine request."""

from __future__ import annotations

import asyncio
import time
import uuid

from fastapi import APIRouter, Depends, Request

from tunelab.engine.sampling_params import MAX_LOGPROBS
from tunelab.models.chat import encode_chat
from tunelab.serve.context import ServeContext, choice_params, prompts_usage, sampling_params, serve_context
from tunelab.serve.protocol import ApiError, ChatCompletionRequest
from tunelab.serve.request_body import check_limits, parse, read_json
from tunelab.serve.responses import ChoiceView, chat_choice, chat_deltas
from tunelab.serve.streams import finals, merged, sse
from tunelab.serve.tools import template_messages, template_renders_tools, tool_grammar

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat(request: Request, ctx: ServeContext = Depends(serve_context)):
    body = parse(ChatCompletionRequest, await read_json(request, ctx.limits))
    check_limits(body, ctx.limits)
    _check_fields(body)
    tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None
    await _check_template_renders(ctx, tools)
    grammar = tool_grammar(body)
    schema = _response_schema(body)
    if grammar is not None and schema is not None:
        raise ApiError(400, "response_format: a JSON response format and tool calls cannot constrain the same "
                       "output; use tool_choice: none or response_format text", param="response_format")
    try:
        prompt = await asyncio.to_thread(encode_chat, ctx.llm.tokenizer, template_messages(body), tools)
    except Exception as exc:  # noqa: BLE001 - a template's raise_exception, a missing template
        raise ApiError(400, f"messages: {exc}", param="messages") from None
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    top = (body.top_logprobs or 0) if body.logprobs else None
    params = sampling_params(body, max_tokens, logprobs=top, json_schema=schema, grammar=grammar)
    jobs = [(prompt, choice_params(params, j)) for j in range(body.n)]
    views = [ChoiceView(i, tools=grammar is not None) for i in range(body.n)]
    rid = f"chatcmpl-{uuid.uuid4().hex}"
    streams = await ctx.start(jobs, body.model, rid)
    created_at = int(time.time())
    if body.stream:
        head = {"id": rid, "object": "chat.completion.chunk", "created": created_at, "model": body.model}

        async def chunks():
            last = {}
            async for i, out in merged(streams):
                last[i] = out
                for choice in chat_deltas(out, views[i], ctx.tokens, top):
                    yield {**head, "choices": [choice]}
            if body.stream_options and body.stream_options.include_usage:
                yield {**head, "choices": [], "usage": prompts_usage([prompt], body.n, [last[i] for i in sorted(last)])}

        return sse(chunks())
    outs = await finals(streams, request)
    return {"id": rid, "object": "chat.completion", "created": created_at, "model": body.model,
            "choices": [chat_choice(o, v, ctx.tokens, top) for o, v in zip(outs, views)],
            "usage": prompts_usage([prompt], body.n, outs)}


def _check_fields(body: ChatCompletionRequest) -> None:
    if body.max_tokens is not None and body.max_completion_tokens not in (None, body.max_tokens):
        raise ApiError(400, "max_tokens and max_completion_tokens disagree; send one", param="max_tokens")
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    if body.top_logprobs is not None and not 0 <= body.top_logprobs <= MAX_LOGPROBS:
        raise ApiError(400, f"top_logprobs: expected an integer in [0, {MAX_LOGPROBS}]", param="top_logprobs")


async def _check_template_renders(ctx: ServeContext, tools: list[dict] | None) -> None:
    """Tools the chat template drops would never reach the model: refuse them rather than ignore them."""
    if tools and not ctx.renders_tools:
        ctx.renders_tools.append(await asyncio.to_thread(template_renders_tools, ctx.llm.tokenizer))
    if tools and not ctx.renders_tools[0]:
        raise ApiError(400, f"tools: the chat template of `{ctx.model_name}` does not render tools, so the model "
                       "would never see them; use a model whose template supports tool calling", param="tools")


def _response_schema(body: ChatCompletionRequest) -> dict | None:
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "object"}
    return fmt.json_schema.schema_
