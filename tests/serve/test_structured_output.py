"""response_format json_object / json_schema: the output always parses and validates (jsonschema as the oracle),
streamed or not, base model or adapter, and SamplingParams(json_schema=...) in Python."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from http_server import MODEL
from tunelab.engine import LLM, EngineError, SamplingParams

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "population": {"type": "integer", "minimum": 0, "maximum": 10**7},
        "capital": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["old", "big", "river"]}, "maxItems": 3},
    },
    "required": ["city", "population", "capital", "tags"],
    "additionalProperties": False,
}
MSG = [{"role": "user", "content": "Describe Paris as JSON."}]


@pytest.mark.parametrize("model", [MODEL, "alpha"])
@pytest.mark.parametrize("strict", [True, False])
def test_json_schema_output_validates(tiny_server, model, strict):
    c = tiny_server["client"]
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA, "strict": strict}}
    r = c.chat.completions.create(model=model, messages=MSG, max_tokens=120, temperature=1.0, seed=3, n=4,
                                  response_format=fmt)
    for choice in r.choices:
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)


def test_json_schema_streamed_validates(tiny_server):
    c = tiny_server["client"]
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}}
    for seed in range(3):
        text = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
            model=MODEL, messages=MSG, max_tokens=120, temperature=1.0, seed=seed, stream=True, response_format=fmt)
            if ch.choices)
        jsonschema.validate(json.loads(text), SCHEMA)


def test_json_object_is_an_object(tiny_server):
    c = tiny_server["client"]
    small = {"type": "object", "maxProperties": 2, "additionalProperties": {"type": "integer"}}
    ok = 0
    for seed in range(4):
        r = c.chat.completions.create(model=MODEL, messages=MSG, max_tokens=60, temperature=1.0, seed=seed,
                                      response_format={"type": "json_object"})
        if r.choices[0].finish_reason == "stop":  # an unconstrained object may outgrow max_tokens
            assert isinstance(json.loads(r.choices[0].message.content), dict)
            ok += 1
    r = c.chat.completions.create(model=MODEL, messages=MSG, max_tokens=60, temperature=1.0, seed=9,
                                  response_format={"type": "json_schema",
                                                   "json_schema": {"name": "s", "schema": small}})
    jsonschema.validate(json.loads(r.choices[0].message.content), small)
    assert ok >= 1


def test_an_invalid_schema_is_a_400_naming_it(tiny_server):
    c = tiny_server["client"]
    with pytest.raises(openai.BadRequestError, match="json_schema"):
        c.chat.completions.create(model=MODEL, messages=MSG, max_tokens=5, response_format={
            "type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "no-such-type"}}})


def test_sampling_params_json_schema_in_python(tiny_checkpoint):
    llm = LLM(tiny_checkpoint("qwen2"), block_size=8)
    outs = llm.generate(["Paris is", "The quick brown fox", "Hello"],
                        [SamplingParams(max_tokens=120, temperature=1.0, seed=s, json_schema=SCHEMA) for s in range(3)])
    for out in outs:
        assert out.finish_reason == "stop"
        jsonschema.validate(json.loads(out.text), SCHEMA)
    with pytest.raises(EngineError, match="json_schema"):
        llm.generate(["x"], SamplingParams(json_schema={"type": "bogus"}))
    (lark,) = llm.generate(["x"], SamplingParams(max_tokens=20, grammar='start: "yes" | "no"'))
    assert lark.text in ("yes", "no") and lark.finish_reason == "stop"


def test_eval_providers_take_a_json_schema_param(tiny_server):
    """`params: {json_schema: ...}` in an eval config constrains both provider types."""
    import asyncio

    from tunelab.evals.config import ProviderConfig, RetryConfig
    from tunelab.evals.providers import make_provider

    params = {"max_tokens": 120, "temperature": 1.0, "seed": 4, "json_schema": SCHEMA}
    configs = [ProviderConfig(id="http", type="openai", base_url=tiny_server["url"] + "/v1", model=MODEL,
                              params=params),
               ProviderConfig(id="local", type="tunelab", model=str(tiny_server["path"]), params=params)]

    async def ask(cfg):
        provider = make_provider(cfg, RetryConfig(max_retries=0))
        try:
            return await provider.complete(MSG, cfg.params)
        finally:
            await provider.aclose()

    for cfg in configs:
        out = asyncio.run(ask(cfg))
        assert out.finish_reason == "stop", (cfg.id, out)
        jsonschema.validate(json.loads(out.text), SCHEMA)
