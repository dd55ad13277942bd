"""How one request wants its tokens chosen, which tokens it may choose, what it wants reported and when it stops."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from tunelab.engine.errors import EngineError

# torch.Generator.manual_seed accepts exactly this range (negative seeds wrap around).
SEED_MIN, SEED_MAX = -(1 << 63), (1 << 64) - 1
# Below this a temperature is greedy: dividing logits by it would overflow float32 (vLLM uses the same epsilon).
GREEDY_TEMPERATURE = 1e-5
MAX_LOGPROBS = 20  # OpenAI's limit for top_logprobs


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0  # below GREEDY_TEMPERATURE = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k cut
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    ignore_eos: bool = False  # benchmarks: always produce max_tokens
    # Report each chosen token's log-probability (log-softmax of the model's logits, before temperature, penalties,
    # bias and grammar) and this many most likely alternatives; None = no logprobs.
    logprobs: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit, in [-100, 100]
    json_schema: dict[str, Any] | None = None  # output must be JSON valid under this schema ({} = any JSON value)
    grammar: str | None = None  # output must match this Lark grammar (llguidance's dialect, %json allowed)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in (self.stop or []) if s]
        self.logit_bias = dict(self.logit_bias or {})
        self.validate()

    def validate(self) -> None:
        checks = [
            (_int(self.max_tokens) and self.max_tokens >= 1, "max_tokens", "an integer >= 1"),
            (_num(self.temperature) and 0.0 <= self.temperature <= 2.0, "temperature", "between 0 and 2"),
            (_num(self.top_p) and 0.0 < self.top_p <= 1.0, "top_p", "in (0, 1]"),
            (_int(self.top_k) and self.top_k >= 0, "top_k", "an integer >= 0 (0 = off)"),
            (_num(self.presence_penalty) and -2.0 <= self.presence_penalty <= 2.0, "presence_penalty",
             "between -2 and 2"),
            (_num(self.frequency_penalty) and -2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty",
             "between -2 and 2"),
            (self.seed is None or (_int(self.seed) and SEED_MIN <= self.seed <= SEED_MAX), "seed",
             f"an integer in [{SEED_MIN}, {SEED_MAX}]"),
            (all(isinstance(s, str) for s in self.stop), "stop", "a list of strings"),
            (self.logprobs is None or (_int(self.logprobs) and 0 <= self.logprobs <= MAX_LOGPROBS), "logprobs",
             f"an integer in [0, {MAX_LOGPROBS}] or None"),
            (all(_int(k) and k >= 0 and _num(v) and -100 <= v <= 100 for k, v in self.logit_bias.items()),
             "logit_bias", "token ids (integers >= 0) mapped to numbers in [-100, 100]"),
            (self.json_schema is None or isinstance(self.json_schema, dict), "json_schema", "a dict or None"),
            (self.grammar is None or isinstance(self.grammar, str), "grammar", "a Lark grammar string or None"),
            (self.json_schema is None or self.grammar is None, "grammar", "not both json_schema and grammar"),
            (not (self.ignore_eos and self.constrained), "ignore_eos",
             "False when the output is constrained (a finished grammar can only end)"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise EngineError(f"{name}: expected {expected}, got {getattr(self, name)!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE

    @property
    def constrained(self) -> bool:
        return self.json_schema is not None or self.grammar is not None

    def to_dict(self) -> dict:
        return asdict(self)


def _int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
