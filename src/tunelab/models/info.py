"""What a checkpoint is, computed from its config alone (no weights are read)."""

from __future__ import annotations

from tunelab.models.config import ModelConfig


def parameter_count(cfg: ModelConfig) -> int:
    h, i, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    attn = h * (q + 2 * kv) + q * h
    if cfg.qkv_bias:
        attn += q + 2 * kv
    if cfg.o_bias:
        attn += h
    mlp = (3 if cfg.gated_mlp else 2) * h * i
    if cfg.mlp_bias:
        mlp += (2 if cfg.gated_mlp else 1) * i + h
    norm = h if cfg.norm == "rms" else 2 * h
    per_layer = attn + mlp + 2 * norm
    total = cfg.num_layers * per_layer + v * h + norm
    if not cfg.tie_word_embeddings:
        total += v * h
    if cfg.positions == "learned":
        total += cfg.max_position_embeddings * h
    return total


def describe(cfg: ModelConfig) -> dict[str, str]:
    n = parameter_count(cfg)
    kv_bytes_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim
    return {
        "family": cfg.model_type,
        "parameters": f"{n:,} ({_human(n)})",
        "layers / hidden / heads (kv)": f"{cfg.num_layers} / {cfg.hidden_size} / {cfg.num_heads} ({cfg.num_kv_heads})",
        "context length": f"{cfg.max_position_embeddings:,}",
        "vocab": f"{cfg.vocab_size:,}",
        "weights float32": _bytes(4 * n),
        "weights bfloat16 / float16": _bytes(2 * n),
        "weights int8": _bytes(n),
        "KV cache per token (bf16)": _bytes(2 * kv_bytes_per_token),
        "stored dtype": str(cfg.torch_dtype),
        "tied embeddings": str(cfg.tie_word_embeddings),
    }


def _human(n: float) -> str:
    for unit in ("", "K", "M", "B"):
        if abs(n) < 1000:
            return f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}T"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
