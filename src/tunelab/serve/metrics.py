"""GET /metrics: Prometheus text exposition of the engine's counters and gauges."""

from __future__ import annotations

from collections import Counter

from tunelab.engine import AsyncLLM


def render(engine: AsyncLLM, http_status: Counter) -> str:
    llm = engine.llm
    rows = [
        ("tunelab_requests_total", "counter", "Requests accepted by the engine.", llm.stats["requests"]),
        ("tunelab_requests_finished_total", "counter", "Requests finished (stop or length).", llm.stats["finished"]),
        ("tunelab_requests_aborted_total", "counter", "Requests aborted (client gone).", llm.stats["aborted"]),
        ("tunelab_requests_failed_total", "counter", "Requests that failed alone inside the engine.",
         llm.stats["failed"]),
        ("tunelab_prompt_tokens_total", "counter", "Prompt tokens accepted.", llm.stats["prompt_tokens"]),
        ("tunelab_generation_tokens_total", "counter", "Tokens generated.", llm.stats["generation_tokens"]),
        ("tunelab_preemptions_total", "counter", "Sequences preempted for KV space.", llm.scheduler.num_preemptions),
        ("tunelab_running_sequences", "gauge", "Sequences in the running batch.", engine.num_running()),
        ("tunelab_waiting_sequences", "gauge", "Sequences waiting to be scheduled.", engine.num_waiting()),
        ("tunelab_kv_blocks_used", "gauge", "KV-cache blocks in use.", llm.block_manager.num_used),
        ("tunelab_kv_blocks_total", "gauge", "KV-cache blocks in all.", llm.block_manager.num_blocks),
    ]
    lines = []
    for name, kind, help_, value in rows:
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value}"]
    lines += ["# HELP tunelab_http_responses_total HTTP responses by status code.",
              "# TYPE tunelab_http_responses_total counter"]
    lines += [f'tunelab_http_responses_total{{status="{code}"}} {n}' for code, n in sorted(http_status.items())]
    return "\n".join(lines) + "\n"
