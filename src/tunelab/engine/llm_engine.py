"""The engine loop: requests in, one scheduled step at a time, outputs out.

`LLM` is the public entry point (`LLM(path).generate(prompts, params)`); `step()` is one iteration of continuous
batching (schedule -> run the model -> sample the sequences whose prompt is done -> detokenize -> finish), which
`generate` repeats until every request is done and `AsyncLLM` (async_engine.py) runs in a background thread for the server.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from tunelab.engine.block_manager import BlockManager
from tunelab.engine.build import check_build
from tunelab.engine.detokenizer import IncrementalDetokenizer
from tunelab.engine.errors import EngineError, UnknownAdapter
from tunelab.engine.model_runner import ModelRunner
from tunelab.engine.grammar import constraint_for
from tunelab.engine.sampler import next_tokens
from tunelab.engine.sampling_params import SamplingParams
from tunelab.engine.scheduler import Scheduler
from tunelab.engine.sequence import RequestOutput, Sequence
from tunelab.models import load_pretrained
from tunelab.models.generation import eos_token_ids

DEFAULT_KV_CACHE_MEMORY = 1 << 30  # bytes; the cache never takes more unless asked


class LLM:
    def __init__(
        self,
        model_path,
        dtype=None,
        device=None,
        max_num_seqs: int = 64,
        max_model_len: int | None = None,
        kv_cache_memory: int | None = None,
        adapters: dict[str, str] | None = None,
        block_size: int = 16,
        max_num_batched_tokens: int | None = None,
        compile: bool = False,
        enable_prefix_caching: bool = True,
        max_prefill_chunk: int | None = None,
        enforce_eager: bool = False,
    ):
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if compile and torch.device(device).type == "cpu":
            # Measured on torch 2.13: compiling the paged step took 79 s on 2 cores and then failed inside inductor's
            # shape propagation, so every request would fail; refuse it up front.
            raise EngineError("compile=True is for GPUs: on CPU, torch.compile of the engine's step fails with torch "
                              "2.13 (see docs/serving.md); leave compile off")
        build = check_build(model_path, device) if Path(str(model_path)).is_dir() else None
        if build is not None and adapters is None:
            adapters = build.adapters  # a build's unmerged adapters are served by default
        self.model, self.tokenizer = load_pretrained(model_path, dtype=dtype, device=device)
        self.model_path = str(model_path)
        self.adapters = dict(adapters or {})
        if self.adapters:
            from tunelab.lora import load_adapter

            for name, directory in self.adapters.items():
                load_adapter(self.model, directory, adapter_name=name, activate=False)
        cfg = self.model.config
        self.max_model_len = min(max_model_len or cfg.max_position_embeddings, cfg.max_position_embeddings)
        per_token = ModelRunner.bytes_per_token(self.model)
        if kv_cache_memory is None:
            kv_cache_memory = min(DEFAULT_KV_CACHE_MEMORY, max_num_seqs * (self.max_model_len + 1) * per_token)
        num_blocks = int(kv_cache_memory // (per_token * block_size))
        if num_blocks < 1:
            raise EngineError(f"kv_cache_memory={kv_cache_memory} bytes holds no block of {block_size} tokens "
                              f"({per_token * block_size} bytes each); give at least that much")
        self.block_manager = BlockManager(num_blocks, block_size, enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, max_num_seqs,
                                   max_num_batched_tokens or max(self.max_model_len, 4096), max_prefill_chunk)
        # Decode steps replay recorded graphs (CUDA graphs, or TorchScript traces on CPU) unless `enforce_eager`
        # (vLLM's switch).
        self.runner = ModelRunner(self.model, num_blocks, block_size, has_adapters=bool(self.adapters),
                                  compile=compile, max_decode_rows=max_num_seqs, graphs=not enforce_eager,
                                  max_model_len=self.max_model_len)
        self.scheduler.chunk_sizes = self.runner.chunk_sizes
        self.eos = eos_token_ids(self.model, self.tokenizer)
        self.stats = {"requests": 0, "prompt_tokens": 0, "generation_tokens": 0, "finished": 0, "aborted": 0,
                      "failed": 0}
        self._by_id: dict[str, Sequence] = {}

    # ------------------------------------------------------------------ public
    def generate(self, prompts: list[str] | list[list[int]] | str, params: SamplingParams | list | None = None,
                 adapter: str | None | list = None) -> list[RequestOutput]:
        """Run every prompt to completion, batched; outputs in the order of `prompts`."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        n = len(prompts)
        params_list = params if isinstance(params, list) else [params or SamplingParams()] * n
        adapter_list = adapter if isinstance(adapter, list) else [adapter] * n
        if len(params_list) != n or len(adapter_list) != n:
            raise EngineError(f"got {n} prompts but {len(params_list)} params and {len(adapter_list)} adapters; "
                              "give one each, or a single value for all")
        seqs = [self.make_sequence(p, sp, a) for p, sp, a in zip(prompts, params_list, adapter_list)]
        for seq in seqs:
            self.add_sequence(seq)
        done: dict[str, RequestOutput] = {}
        while len(done) < n:
            for out in self.step():
                if out.finished:
                    done[out.request_id] = out
        return [done[s.request_id] for s in seqs]

    def make_sequence(self, prompt: str | list[int], params: SamplingParams | None = None, adapter: str | None = None,
                      request_id: str | None = None) -> Sequence:
        """Validate and tokenize one request (raises EngineError naming the field at fault)."""
        params = params or SamplingParams()
        if adapter is not None and adapter not in self.adapters:
            raise UnknownAdapter(adapter, sorted(self.adapters))  # the one check; the server answers this error
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise EngineError("prompt: empty; at least one token is needed")
        vocab = self.model.config.vocab_size
        if min(ids) < 0 or max(ids) >= vocab:
            raise EngineError(f"prompt: token ids must be in [0, {vocab}), got {min(ids)}..{max(ids)}")
        if len(ids) >= self.max_model_len:
            raise EngineError(f"prompt: {len(ids)} tokens, but the model's context (max_model_len) is "
                              f"{self.max_model_len}; shorten the prompt")
        budget = min(params.max_tokens, self.max_model_len - len(ids))
        if budget != params.max_tokens:
            params = SamplingParams(**{**params.to_dict(), "max_tokens": budget})
        capacity = self.block_manager.num_blocks * self.block_manager.block_size
        if len(ids) + budget + 1 > capacity:
            raise EngineError(f"prompt + max_tokens = {len(ids) + budget} tokens, but the whole KV cache holds "
                              f"{capacity}; raise kv_cache_memory or lower max_tokens")
        if params.logit_bias and max(params.logit_bias) >= vocab:
            raise EngineError(f"logit_bias: token ids must be in [0, {vocab}), got {max(params.logit_bias)}")
        constraint = constraint_for(params, self.tokenizer, sorted(self.eos))
        return Sequence(ids, params, IncrementalDetokenizer(self.tokenizer, params.stop), adapter, request_id,
                        constraint)

    def add_sequence(self, seq: Sequence) -> None:
        self._by_id[seq.request_id] = seq
        self.stats["requests"] += 1
        self.stats["prompt_tokens"] += len(seq.prompt_ids)
        self.scheduler.add(seq)

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request now and free its KV blocks."""
        seq = self._by_id.pop(request_id, None)
        if seq is None or seq.finished:
            return None
        self.scheduler.finish(seq, "abort")
        self.stats["aborted"] += 1
        return self._output(seq)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def step(self) -> list[RequestOutput]:
        """One iteration: an output (with its new text in `delta`) for every sequence that sampled a token or failed."""
        if not self.scheduler.has_work():
            return []
        step = self.scheduler.schedule()
        if not step.seqs:
            return []

        def run(seqs: list[Sequence]):  # each sequence computes its `num_scheduled` tokens
            start = time.perf_counter()
            logits = self.runner.run(seqs)
            if logits.is_cuda:  # the step's time, not its launches' (sampling waits for it anyway)
                torch.cuda.synchronize(logits.device)
            if len(seqs) == len(step.seqs):  # a retried row alone says nothing about the step's cost
                self.scheduler.record(step, time.perf_counter() - start)
            return logits

        # Sequences whose computed tokens reach their end sample a token; a chunk short of its prompt's end does not.
        samples = [seq.num_cached + seq.num_scheduled == len(seq) for seq in step.seqs]
        results = next_tokens(run, step.seqs, samples)
        for seq in step.seqs:  # before any failed row is released, so a source it computed loses its key
            self.block_manager.copied(seq)
        seqs = [seq for seq, token in zip(step.seqs, results) if token is not None]
        tokens = [token for token in results if token is not None]
        outputs = []
        for seq, token in zip(seqs, tokens):
            reason = None
            if isinstance(token, Exception):  # this request alone failed; the rest of the batch goes on
                seq.error = f"{type(token).__name__}: {token}"
                reason = "error"
            elif token in self.eos and not seq.params.ignore_eos:
                reason = "stop"
            else:
                seq.output_ids.append(token)
                self.stats["generation_tokens"] += 1
                seq.detokenizer.add(token)
                if seq.detokenizer.stop_hit is not None:
                    reason = "stop"
                elif len(seq.output_ids) >= seq.params.max_tokens:
                    reason = "length"
            if reason is not None:
                self.scheduler.finish(seq, reason)
                self._by_id.pop(seq.request_id, None)
                self.stats["failed" if reason == "error" else "finished"] += 1
            outputs.append(self._output(seq))
        return outputs

    # ------------------------------------------------------------------ helpers
    def _output(self, seq: Sequence) -> RequestOutput:
        final = seq.finished
        text = seq.detokenizer.final_text() if final else seq.detokenizer.text
        return RequestOutput(
            request_id=seq.request_id, text=text, token_ids=list(seq.output_ids), finish_reason=seq.finish_reason,
            prompt_tokens=len(seq.prompt_ids), completion_tokens=len(seq.output_ids),
            delta=seq.detokenizer.delta(final), adapter=seq.adapter, prompt_token_ids=seq.prompt_ids,
            logprobs=None if seq.logprobs is None else seq.logprobs[: len(seq.output_ids)], error=seq.error,
        )
