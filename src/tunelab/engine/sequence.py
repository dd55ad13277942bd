"""One request's state as it moves waiting -> running -> finished (and back to waiting when preempted)."""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field

import torch

from tunelab.engine.detokenizer import IncrementalDetokenizer
from tunelab.engine.sampling_params import SamplingParams

_ids = itertools.count()


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    def __init__(self, prompt_ids: list[int], params: SamplingParams, detokenizer: IncrementalDetokenizer,
                 adapter: str | None = None, request_id: str | None = None, constraint=None):
        self.seq_id = next(_ids)
        self.request_id = request_id or f"req-{self.seq_id}"
        self.prompt_ids = list(prompt_ids)
        self.output_ids: list[int] = []
        self.params = params
        self.adapter = adapter
        self.detokenizer = detokenizer
        self.status = Status.WAITING
        self.block_table: list[int] = []
        self.num_cached = 0  # tokens whose K/V are in the cache
        self.num_scheduled = 0  # tokens the step being run computes (a prompt chunk, or 1 when decoding)
        self.prefix_copy = None  # block_manager.BlockCopy: cached K/V its first chunk copies (token-level hit)
        # A step with it has run since its blocks were allocated, so every K/V it holds is written (a cache hit's
        # block may be computed by another row of the very step it is admitted in).
        self.stepped = False
        self.finish_reason: str | None = None
        self.error: str | None = None  # why this request alone failed (finish_reason "error")
        self.constraint = constraint  # grammar.Constraint when the output must follow a schema or grammar
        self.logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None
        self.num_preemptions = 0
        # One generator per request, advanced only by this request's draws, so a seed gives the same text
        # whatever else shares the batch (and across preemption, which recomputes K/V but keeps the generator).
        self.generator: torch.Generator | None = None
        if params.seed is not None:
            self.generator = torch.Generator().manual_seed(params.seed)

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_new_tokens(self) -> int:
        """Tokens this step must feed through the model (the whole sequence after a preemption)."""
        return len(self) - self.num_cached

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED


@dataclass
class TokenLogprob:
    """One generated token's log-probability under the model, and the `top` most likely tokens at that step."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # (token id, logprob), most likely first


@dataclass
class RequestOutput:
    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: str | None  # "stop" | "length" | "abort" | "error" | None while running
    prompt_tokens: int
    completion_tokens: int
    delta: str = ""  # text new since the previous output of this request (streaming)
    adapter: str | None = None
    prompt_token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None  # one per token in `token_ids` when SamplingParams.logprobs is set
    error: str | None = None  # set with finish_reason "error": this request failed, the others went on

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
