"""Cache keys. Responses are keyed by everything that determines them
(provider type, endpoint, model, adapter, chat or completion style, params, rendered messages, repeat
index), so an unchanged rerun makes zero calls while `repeat: 3` still samples
three times. Metric and judge results are keyed by their own config and
implementation version (see metrics.Metric.input_key and judges.judge_key)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tunelab.evals.config import ProviderConfig


def response_key(provider: ProviderConfig, params: dict[str, Any], messages: list[dict[str, str]],
                 repeat: int) -> str:
    identity = {"type": provider.type, "base_url": provider.base_url, "model": provider.model,
                "adapter": provider.adapter, "chat": provider.chat, "params": params, "messages": messages, "repeat": repeat}
    if provider.dtype is not None:  # the precision changes outputs; engine options (prefix caching...) do not
        identity["dtype"] = provider.dtype
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
