"""The OpenAI request bodies we accept, field by field, and the error body we answer with.

Strict on purpose: types are never coerced (`"max_tokens": true`, `"stream": "yes"`, `"temperature": "0.5"` are
400s), and a field we do not implement is refused by name instead of being ignored, so a client never gets a 200
that silently dropped what it asked for. Fields follow OpenAI's API reference plus vLLM's `top_k` and `ignore_eos`
extensions; docs/serving.md lists them all. Range checks live in `SamplingParams.validate` so the engine and the
server reject the same things with the same messages.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Fields OpenAI defines that tunelab does not implement, with what to do instead.
REFUSED = {
    "functions": "use `tools`",
    "function_call": "use `tool_choice`",
    "suffix": "insertion (fill-in-the-middle) is not implemented",
    "best_of": "generate `n` choices and rank them yourself",
    "audio": "this server serves text-only models",
    "modalities": "this server serves text-only models (text is the only output)",
    "prediction": "predicted outputs are not implemented",
    "web_search_options": "there is no web search",
    "reasoning_effort": "the served models have no reasoning modes",
    "service_tier": "there is one tier",
    "store": "nothing is stored",
    "metadata": "nothing is stored, so there is nothing to tag",
}
CONTENT_PART_TYPES_REFUSED = {"image_url", "input_audio", "file", "refusal"}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Common(_Strict):
    model: str
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # an opaque end-user id: accepted, used for nothing
    ignore_eos: bool = False  # vLLM's extension: keep going past EOS (benchmarks)

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = None  # k: the chosen token's logprob and the k most likely alternatives


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str
    arguments: str


class ToolCall(_Strict):
    id: str
    type: Literal["function"]
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _content_present(self):
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs `content`")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only assistant messages carry `tool_calls`")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError("only tool messages carry `tool_call_id`")
        return self


class JsonSchemaFormat(_Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None  # the schema is always enforced while decoding, strict or not


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self):
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("`json_schema` is required with type json_schema, and only then")
        return self


class FunctionDef(_Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None  # arguments always follow `parameters` while decoding, strict or not


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class ApiError(Exception):
    """serve's one error type: an HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)
