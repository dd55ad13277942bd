"""From raw bytes to a validated request, before anything reaches the engine.

Each step answers in OpenAI's error shape and names the field at fault: the body is read up to a size limit (413),
must be identity-encoded UTF-8 JSON without NaN/Infinity, nested no deeper than a limit (JSON that deep is an
attack, not a request), with every string valid Unicode (a lone surrogate such as "\\ud800" is legal JSON but no
tokenizer can encode it). Then the strict pydantic models of protocol.py check types, and the limits below check
counts. Every limit is a `Limits` field, settable from `tunelab serve`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request

from tunelab.serve.protocol import CONTENT_PART_TYPES_REFUSED, REFUSED, ApiError


@dataclass
class Limits:
    max_body_bytes: int = 2 << 20
    max_json_depth: int = 64
    max_messages: int = 1024
    max_stop: int = 4  # OpenAI's limit
    max_n: int = 16
    max_tools: int = 128
    max_logit_bias: int = 300  # OpenAI's limit


async def read_json(request: Request, limits: Limits) -> dict[str, Any]:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ApiError(415, f"Content-Encoding {encoding!r} is not supported; send the JSON body uncompressed",
                       code="unsupported_content_encoding")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise _too_large(limits)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise _too_large(limits)
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the request body is not valid UTF-8 (byte {exc.start})", code="invalid_utf8") from None
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise ApiError(400, f"the request body nests deeper than {limits.max_json_depth} levels",
                       code="too_deep") from None
    except ValueError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}",
                       code="invalid_json")
    _check_values(data, limits.max_json_depth)
    return data


def parse(model, data: dict[str, Any]):
    """`model.model_validate(data)` with OpenAI-shaped errors: refused and unknown fields named, types strict."""
    for name, reason in REFUSED.items():
        if name in data:
            raise ApiError(400, f"`{name}` is not supported by tunelab serve: {reason}", param=name,
                           code="unsupported_parameter")
    messages = data.get("messages")
    if isinstance(messages, list):
        for i, m in enumerate(messages):
            parts = m.get("content") if isinstance(m, dict) else None
            for j, part in enumerate(parts if isinstance(parts, list) else []):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind in CONTENT_PART_TYPES_REFUSED:
                    raise ApiError(400, f"messages[{i}].content[{j}]: content parts of type {kind!r} are not "
                                   "supported (this server serves text-only models)",
                                   param=f"messages[{i}].content[{j}].type", code="unsupported_content")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = _param(first["loc"])
        if first["type"] == "extra_forbidden":
            message = f"unknown field `{param}`: tunelab serve does not implement it (see docs/serving.md)"
        else:
            message = f"{param or 'body'}: {first['msg']}"
        raise ApiError(400, message, param=param or None) from None


def check_limits(req, limits: Limits) -> None:
    stops = req.stops
    checks = [
        (len(stops) <= limits.max_stop, "stop", f"at most {limits.max_stop} stop strings"),
        (1 <= req.n <= limits.max_n, "n", f"an integer in [1, {limits.max_n}]"),
        (len(req.logit_bias or {}) <= limits.max_logit_bias, "logit_bias",
         f"at most {limits.max_logit_bias} entries"),
        (len(getattr(req, "messages", ())) <= limits.max_messages, "messages",
         f"at most {limits.max_messages} messages"),
        (len(getattr(req, "tools", None) or ()) <= limits.max_tools, "tools", f"at most {limits.max_tools} tools"),
        (req.stream or req.stream_options is None, "stream_options", "only with stream: true"),
    ]
    for ok, param, expected in checks:
        if not ok:
            raise ApiError(400, f"{param}: expected {expected}", param=param)


def logit_bias(req) -> dict[int, float]:
    out = {}
    for key, value in (req.logit_bias or {}).items():
        if not (key.isascii() and key.isdigit()):
            raise ApiError(400, f"logit_bias: keys are token ids as strings, got {key!r}", param="logit_bias")
        out[int(key)] = value
    return out


# ---------------------------------------------------------------------- helpers
def _too_large(limits: Limits) -> ApiError:
    return ApiError(413, f"the request body is larger than {limits.max_body_bytes} bytes (tunelab serve "
                    "--max-body-bytes)", code="body_too_large")


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _check_values(value: Any, max_depth: int, path: str = "", depth: int = 0) -> None:
    """Depth, valid Unicode in every key and string, finite numbers; names the first offender."""
    if depth > max_depth:
        raise ApiError(400, f"{path or 'body'}: nested deeper than {max_depth} levels", param=path or None,
                       code="too_deep")
    if isinstance(value, str):
        if not _valid_unicode(value):
            raise ApiError(400, f"{path}: contains a lone surrogate (invalid Unicode)", param=path,
                           code="invalid_unicode")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ApiError(400, f"{path}: number out of range", param=path)
    elif isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if not _valid_unicode(key):
                raise ApiError(400, f"{path or 'body'}: a key contains a lone surrogate (invalid Unicode)",
                               param=path or None, code="invalid_unicode")
            _check_values(item, max_depth, where, depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_values(item, max_depth, f"{path}[{i}]", depth + 1)


def _valid_unicode(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _param(loc) -> str:
    """pydantic's location as OpenAI names params: messages[0].role (union branch names dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part or part in ("str", "int", "float", "bool", "none", "list", "dict", "NamedToolChoice"):
            continue
        else:
            out += f".{part}" if out else part
    return out
