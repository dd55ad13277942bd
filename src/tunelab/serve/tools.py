"""Tool calling: which grammar a request's `tools` + `tool_choice` put on the output, and reading the calls back.

Calls are written the way Hermes-style chat templates (Qwen2/2.5, Hermes, SmolLM3 …) teach models to write them:
`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, one block per call. The grammar lets `auto` choose
between plain text and calls, makes `required` produce at least one call and a named `tool_choice` exactly that
function, and holds every call's arguments to its function's JSON schema while decoding, so what we return always
parses and validates. A template that does not render `tools` would hide them from the model: that is a 400.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from tunelab.engine.grammar import json_block
from tunelab.serve.protocol import ApiError, ChatCompletionRequest

_CALL = re.compile(r"<tool_call>\n(.*?)\n</tool_call>", re.S)
_PROBE = {"type": "function", "function": {"name": "tunelab_probe_fn", "description": "probe",
                                           "parameters": {"type": "object", "properties": {}}}}


def tool_grammar(req: ChatCompletionRequest) -> str | None:
    """The Lark grammar for the request's output, or None when tools do not constrain it."""
    choice = req.tool_choice or ("auto" if req.tools else "none")
    if req.tool_choice not in (None, "none") and not req.tools:
        raise ApiError(400, "tool_choice: only meaningful with `tools`, and none were given", param="tool_choice")
    if not req.tools or choice == "none":
        return None
    functions = {t.function.name: t.function for t in req.tools}
    if isinstance(choice, str):
        chosen = list(functions.values())
    else:
        if choice.function.name not in functions:
            raise ApiError(400, f"tool_choice: function {choice.function.name!r} is not in `tools` "
                           f"({sorted(functions)})", param="tool_choice")
        chosen = [functions[choice.function.name]]
    schema = {"anyOf": [{"type": "object", "properties": {"name": {"const": f.name},
                                                         "arguments": f.parameters or {"type": "object"}},
                         "required": ["name", "arguments"], "additionalProperties": False} for f in chosen]}
    calls = 'call ("\\n" call)*' if req.parallel_tool_calls and isinstance(choice, str) else "call"
    start = "(calls | TEXT)?" if choice == "auto" else "calls"
    return "\n".join([
        f"start: {start}",
        f"calls: {calls}",
        f'call: "<tool_call>\\n" {json_block(schema)} "\\n</tool_call>"',
        r"TEXT: /[^<][\s\S]*/",  # plain text may not start like a call
    ])


def parse_tool_calls(text: str) -> list[dict[str, Any]]:
    """OpenAI `tool_calls` from the output text ([] when it holds none)."""
    calls = []
    for body in _CALL.findall(text):
        call = json.loads(body)
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": call["name"], "arguments": json.dumps(call["arguments"],
                                                                                 ensure_ascii=False)}})
    return calls


def template_renders_tools(tokenizer) -> bool:
    """Whether the chat template shows `tools` to the model at all (it ignores them if they change nothing)."""
    messages = [{"role": "user", "content": "hi"}]
    try:
        with_tools = tokenizer.apply_chat_template(messages, tools=[_PROBE])
        without = tokenizer.apply_chat_template(messages)
    except Exception:  # noqa: BLE001 - a template that cannot even render this cannot render tools
        return False
    return with_tools != without and "tunelab_probe_fn" in with_tools


def template_messages(req: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The request's messages as chat templates expect them: text parts joined, `developer` shown as `system`
    (templates predate it), and tool-call arguments as objects (templates apply tojson to them themselves)."""
    out = []
    for m in req.messages:
        content = m.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        item: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": content or ""}
        if m.name is not None:
            item["name"] = m.name
        if m.tool_call_id is not None:
            item["tool_call_id"] = m.tool_call_id
        if m.tool_calls:
            item["tool_calls"] = [{"id": c.id, "type": "function",
                                   "function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)}}
                                  for c in m.tool_calls]
        out.append(item)
    return out


def _arguments(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text
