"""tools + tool_choice through the official client, on a tiny model whose (Qwen2.5-style) template renders tools:
arguments always validate against the function's schema (jsonschema as the oracle), streamed as OpenAI streams
them; a template without tool support is a 400."""

from __future__ import annotations

import json
import shutil

import jsonschema
import openai
import pytest

from http_server import Server
from tunelab.engine import LLM, AsyncLLM
from tunelab.serve import create_app

# Written after Qwen2.5's template: tools in the system turn, calls as <tool_call> JSON, results as <tool_response>.
HERMES = """{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}
{{- '# Tools\\n\\n<tools>' }}
{%- for tool in tools %}{{- '\\n' + tool | tojson }}{%- endfor %}
{{- '\\n</tools>\\n\\nCall a function as <tool_call>\\n{"name": <name>, "arguments": <args>}\\n</tool_call><|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'system' and tools %}
{%- elif message.role == 'assistant' and message.tool_calls %}
{{- '<|im_start|>assistant' }}
{%- for call in message.tool_calls %}
{{- '\\n<tool_call>\\n{"name": "' + call.function.name + '", "arguments": ' + call.function.arguments | tojson + '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif message.role == 'tool' %}
{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}
{%- else %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                            "unit": {"enum": ["C", "F"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
        "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": TIME}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
MSG = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def tool_server(tiny_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("hermes") / "model"
    shutil.copytree(tiny_checkpoint("qwen2"), path)
    (path / "chat_template.jinja").write_text(HERMES)
    config = json.loads((path / "config.json").read_text())
    config["max_position_embeddings"] = 2048  # tool JSON takes ~1 token per character with the tiny vocabulary
    (path / "config.json").write_text(json.dumps(config))
    engine = AsyncLLM(LLM(path, block_size=8))
    server = Server(create_app(engine, "tiny-tools"))
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)
    yield client, engine
    server.stop()
    engine.shutdown()


def assert_valid_calls(calls, names):
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_required_always_calls_a_tool_with_valid_arguments(tool_server):
    client, _ = tool_server
    r = client.chat.completions.create(model="tiny-tools", messages=MSG, tools=TOOLS, tool_choice="required",
                                       max_tokens=150, temperature=1.0, seed=2, n=3)
    for choice in r.choices:
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        assert_valid_calls(choice.message.tool_calls, SCHEMAS)


def test_a_named_function_is_the_one_called(tool_server):
    client, _ = tool_server
    r = client.chat.completions.create(model="tiny-tools", messages=MSG, tools=TOOLS, max_tokens=150, seed=1,
                                       tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert r.choices[0].finish_reason == "tool_calls"
    assert_valid_calls(r.choices[0].message.tool_calls, {"get_time"})
    assert len(r.choices[0].message.tool_calls) == 1


def test_auto_gives_text_or_valid_calls_and_none_gives_text(tool_server):
    client, engine = tool_server
    lt = engine.llm.tokenizer.encode("<", add_special_tokens=False)
    r = client.chat.completions.create(model="tiny-tools", messages=MSG, tools=TOOLS, max_tokens=150,
                                       temperature=1.0, seed=3, n=4)
    for choice in r.choices:
        if choice.finish_reason == "tool_calls":
            assert_valid_calls(choice.message.tool_calls, SCHEMAS)
        else:
            assert not choice.message.content.startswith("<tool_call>")
    # Pushing the model towards "<" makes auto choose a call, and the call is still valid.
    forced = client.chat.completions.create(model="tiny-tools", messages=MSG, tools=TOOLS, max_tokens=150,
                                            seed=3, logit_bias={str(lt[0]): 100})
    assert forced.choices[0].finish_reason == "tool_calls"
    assert_valid_calls(forced.choices[0].message.tool_calls, SCHEMAS)
    none = client.chat.completions.create(model="tiny-tools", messages=MSG, tools=TOOLS, tool_choice="none",
                                          max_tokens=10, seed=3, logit_bias={str(lt[0]): 100})
    assert none.choices[0].message.tool_calls is None and none.choices[0].finish_reason in ("stop", "length")


def test_streamed_tool_calls_assemble_to_the_same_calls(tool_server):
    client, _ = tool_server
    kwargs = dict(model="tiny-tools", messages=MSG, tools=TOOLS, tool_choice="required", max_tokens=150,
                  temperature=1.0, seed=5)
    whole = client.chat.completions.create(**kwargs).choices[0].message.tool_calls
    calls, finish = {}, None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = delta.id or call["id"]
                call["name"] += (delta.function.name or "") if delta.function else ""
                call["arguments"] += (delta.function.arguments or "") if delta.function else ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        (w.function.name, json.loads(w.function.arguments)) for w in whole]


def test_a_conversation_with_tool_results_renders(tool_server):
    client, _ = tool_server
    history = MSG + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "C"})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees"}]
    r = client.chat.completions.create(model="tiny-tools", messages=history, tools=TOOLS, tool_choice="none",
                                       max_tokens=5)
    assert r.choices[0].message.role == "assistant"


def test_a_template_without_tools_is_a_400(tiny_server):
    with pytest.raises(openai.BadRequestError, match="does not render tools"):
        tiny_server["client"].chat.completions.create(model="tiny", messages=MSG, tools=TOOLS, max_tokens=5)
