"""How one request wants its tokens chosen and when it wants to stop."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tunelab.engine.errors import EngineError


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k cut
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    ignore_eos: bool = False  # benchmarks: always produce max_tokens

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in (self.stop or []) if s]
        self.validate()

    def validate(self) -> None:
        checks = [
            (isinstance(self.max_tokens, int) and self.max_tokens >= 1, "max_tokens", "an integer >= 1"),
            (0.0 <= self.temperature <= 2.0, "temperature", "between 0 and 2"),
            (0.0 < self.top_p <= 1.0, "top_p", "in (0, 1]"),
            (isinstance(self.top_k, int) and self.top_k >= 0, "top_k", "an integer >= 0 (0 = off)"),
            (-2.0 <= self.presence_penalty <= 2.0, "presence_penalty", "between -2 and 2"),
            (-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty", "between -2 and 2"),
            (self.seed is None or isinstance(self.seed, int), "seed", "an integer"),
            (all(isinstance(s, str) for s in self.stop), "stop", "a list of strings"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise EngineError(f"{name}: expected {expected}, got {getattr(self, name)!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_dict(self) -> dict:
        return asdict(self)
